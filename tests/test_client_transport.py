"""Transports against hostile or broken peers: bounded sizes, deadlines, error bodies, malformed
answers. Fake peers are real loopback sockets (legacy) or httpx mock transports (HTTP)."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from sealing_key_provider.client.errors import ProviderRefused, ResponseMalformed
from sealing_key_provider.client.transport import MAX_LEGACY_RESPONSE, HttpTransport, LegacyTransport
from sealing_key_provider.errors import TransportError
from sealing_key_provider.wire import LENGTH_PREFIX, encode_legacy_response

Behaviour = Callable[[socket.socket], None]


@contextlib.contextmanager
def fake_peer(behaviour: Behaviour) -> Iterator[str]:
    """A one-connection TCP peer on loopback that reads the request frame and then does ``behaviour``."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                head = conn.recv(4, socket.MSG_WAITALL)
                (n,) = LENGTH_PREFIX.unpack(head)
                while n > 0:
                    n -= len(conn.recv(min(n, 65536)))
                behaviour(conn)
            done.wait(5)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(5)


def legacy_request(address: str, timeout: float = 5.0) -> None:
    LegacyTransport(address, timeout=timeout).request(
        b"\x04\x00" * 10, key_name="default", key_version=1, scheme=None, nonce=None
    )


def test_legacy_close_without_bytes_is_explained() -> None:
    with (
        fake_peer(lambda conn: conn.shutdown(socket.SHUT_RDWR)) as address,
        pytest.raises(TransportError) as e,
    ):
        legacy_request(address)
    assert e.value.message == (
        "provider closed the connection without answering (legacy protocol reports errors only in its log)"
    )


@pytest.mark.parametrize("length", [0, MAX_LEGACY_RESPONSE + 1, 0xFFFFFFFF])
def test_legacy_announced_length_is_bounded_before_reading(length: int) -> None:
    with (
        fake_peer(lambda conn: conn.sendall(LENGTH_PREFIX.pack(length))) as address,
        pytest.raises(ResponseMalformed) as e,
    ):
        legacy_request(address)
    assert e.value.code == "RESPONSE_MALFORMED" and str(length) in e.value.message


def test_legacy_client_on_an_http_port_is_told_so() -> None:
    """b"HTTP" read as a length would be 1213486160 bytes; say what the peer really is instead."""
    answer = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    with fake_peer(lambda conn: conn.sendall(answer)) as address, pytest.raises(ResponseMalformed) as e:
        legacy_request(address)
    assert e.value.message == (
        f"the provider at {address} answered with HTTP, not the legacy protocol: "
        f"this is its HTTP API port; to use it give --provider http://{address}"
    )


def test_legacy_truncated_answer() -> None:
    def half(conn: socket.socket) -> None:
        conn.sendall(LENGTH_PREFIX.pack(100) + b"{" * 10)
        conn.shutdown(socket.SHUT_RDWR)

    with fake_peer(half) as address, pytest.raises(TransportError) as e:
        legacy_request(address)
    assert "after 10 of 100 bytes" in e.value.message


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"encrypted_key": "AAAA", "provider_quote": []}', b'{"encrypted_key": [300]}', b"[]"],
)
def test_legacy_malformed_answer(body: bytes) -> None:
    with (
        fake_peer(lambda conn: conn.sendall(LENGTH_PREFIX.pack(len(body)) + body)) as address,
        pytest.raises(ResponseMalformed),
    ):
        legacy_request(address)


def test_legacy_well_formed_answer_is_returned_unchecked() -> None:
    frame = encode_legacy_response(b"\x01" * 80, b"\x02" * 10)
    with fake_peer(lambda conn: conn.sendall(frame)) as address:
        answer = LegacyTransport(address).request(
            b"q", key_name="default", key_version=1, scheme=None, nonce=None
        )
    assert (
        answer.encrypted_key == b"\x01" * 80 and answer.provider_quote == b"\x02" * 10 and answer.v1 is None
    )


def test_legacy_silent_peer_times_out() -> None:
    started = time.monotonic()
    with fake_peer(lambda conn: None) as address, pytest.raises(TransportError) as e:
        legacy_request(address, timeout=0.3)
    assert "timed out" in e.value.message and time.monotonic() - started < 3


def test_legacy_trickling_peer_hits_the_overall_deadline() -> None:
    """One byte every 50 ms never trips a per-recv timeout; the request deadline still ends it."""

    def trickle(conn: socket.socket) -> None:
        conn.sendall(LENGTH_PREFIX.pack(1000))
        for _ in range(200):
            conn.sendall(b" ")
            time.sleep(0.05)  # the peer's pace, not synchronisation

    started = time.monotonic()
    with fake_peer(trickle) as address, pytest.raises(TransportError) as e:
        legacy_request(address, timeout=0.5)
    assert "timed out" in e.value.message and time.monotonic() - started < 3


def test_legacy_address_and_arguments() -> None:
    for bad in ("localhost", "host:", ":80", "h:99999", "::1:80"):
        with pytest.raises(ValueError):
            LegacyTransport(bad)
    assert (LegacyTransport("[::1]:3443").host, LegacyTransport("[::1]:3443").port) == ("::1", 3443)
    with pytest.raises(ValueError):
        LegacyTransport("127.0.0.1:1", timeout=0)
    with pytest.raises(ValueError, match="nonce"):
        LegacyTransport("127.0.0.1:1").nonce()


# --- HTTP --------------------------------------------------------------------------------------------------


def http_with(
    handler: Callable[[httpx.Request], httpx.Response], max_response_bytes: int = 256 * 1024
) -> HttpTransport:
    return HttpTransport(
        "http://provider.test",
        client=httpx.Client(transport=httpx.MockTransport(handler)),
        max_response_bytes=max_response_bytes,
    )


def key_request(t: HttpTransport) -> None:
    t.request(b"q", key_name="default", key_version=1, scheme=None, nonce=None)


def test_http_error_body_keeps_the_provider_code() -> None:
    t = http_with(lambda r: httpx.Response(403, json={"error": {"code": "TD_DEBUG", "message": "debug TD"}}))
    with pytest.raises(ProviderRefused) as e:
        key_request(t)
    assert (
        e.value.code == "TD_DEBUG"
        and e.value.message == "provider refused: debug TD"
        and e.value.status == 403
    )


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"error": {"code": "lower; rm -rf", "message": "x"}}, "PROVIDER_REFUSED", "provider refused: x"),
        ({"error": {"code": "X" * 100, "message": "x"}}, "PROVIDER_REFUSED", "provider refused: x"),
        ({"error": {"code": "BAD", "message": "a\nb\x1b[31m"}}, "BAD", "provider refused: a?b?[31m"),
        ({"error": {"code": "BIG", "message": "m" * 1000}}, "BIG", "provider refused: " + "m" * 300 + "..."),
        ({"detail": "not ours"}, "PROVIDER_REFUSED", "provider refused: HTTP 500 without an error body"),
    ],
)
def test_http_error_bodies_are_sanitised(body: dict[str, object], code: str, message: str) -> None:
    t = http_with(lambda r: httpx.Response(500, json=body))
    with pytest.raises(ProviderRefused) as e:
        key_request(t)
    assert e.value.code == code and e.value.message.startswith(message)


def test_http_redirects_are_not_followed() -> None:
    t = http_with(lambda r: httpx.Response(302, headers={"location": "http://elsewhere.test/v1/keys"}))
    with pytest.raises(ProviderRefused) as e:
        key_request(t)
    assert e.value.status == 302


def test_http_body_size_is_capped() -> None:
    big = json.dumps({"pad": "x" * 5000}).encode()
    t = http_with(lambda r: httpx.Response(200, content=big), max_response_bytes=1000)
    with pytest.raises(ResponseMalformed, match="exceeds 1000 bytes"):
        key_request(t)

    def streamed(r: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=iter([b"x" * 600, b"x" * 600]))  # no content-length

    with pytest.raises(ResponseMalformed, match="exceeds 1000 bytes"):
        key_request(http_with(streamed, max_response_bytes=1000))


@pytest.mark.parametrize(
    "content",
    [b"not json", b"[]", json.dumps({"encrypted_key": "AA=="}).encode()],
)
def test_http_malformed_key_answer(content: bytes) -> None:
    with pytest.raises(ResponseMalformed):
        key_request(http_with(lambda r: httpx.Response(200, content=content)))


@pytest.mark.parametrize("body", [{"nonce": 5}, {"nonce": "***"}, {"nonce": ""}, [], {"nonce": "A" * 1000}])
def test_http_malformed_nonce(body: object) -> None:
    with pytest.raises(ResponseMalformed):
        http_with(lambda r: httpx.Response(200, json=body)).nonce()


def test_http_nonce_and_request_shape() -> None:
    seen: list[httpx.Request] = []

    def handler(r: httpx.Request) -> httpx.Response:
        seen.append(r)
        return httpx.Response(200, json={"nonce": "AAEC", "expires_at": 1})

    t = http_with(handler)
    assert t.nonce() == b"\x00\x01\x02"
    assert seen[0].method == "GET" and seen[0].url.path == "/v1/nonce"


def test_http_silent_server_times_out() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        t = HttpTransport(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.3)
        started = time.monotonic()
        with pytest.raises(TransportError, match="timed out"):
            key_request(t)
        assert time.monotonic() - started < 3
        t.close()
    finally:
        listener.close()


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_http_client_on_a_legacy_port_is_told_so(reset: bool) -> None:
    """A legacy provider reads "POST" as a frame length and hangs up without answering: with a FIN,
    or with a reset when the rest of the request is still unread (what the real legacy server does)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                if reset:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    conn.recv(4)
                    return
                conn.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with pytest.raises(TransportError) as e:
            key_request(HttpTransport(url, timeout=5))
    finally:
        listener.close()
        thread.join(5)
    assert e.value.message.startswith(f"no HTTP answer from the provider at {url} (")
    assert e.value.message.endswith("is this the legacy port? then give HOST:PORT without http://")


def test_http_url_must_be_http() -> None:
    for bad in ("ftp://x", "127.0.0.1:8080", ""):
        with pytest.raises(ValueError):
            HttpTransport(bad)


def test_http_trickling_server_hits_the_overall_deadline() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
                )
                while not stop.is_set():
                    conn.sendall(b" ")
                    stop.wait(0.05)  # the peer's pace, not synchronisation

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        t = HttpTransport(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(TransportError, match="timed out"):
            key_request(t)
        assert time.monotonic() - started < 3
        t.close()
    finally:
        stop.set()
        listener.close()
        thread.join(5)
