"""The legacy TCP listener in-process: bad frames, silent and slow clients, the connection cap and the
rate limit. Every refusal closes the connection without writing a byte (the original's behaviour),
is logged with its code and peer, and the server goes on serving the next client."""

from __future__ import annotations

import errno
import json
import logging
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sealing_key_provider.provider import Provider
from sealing_key_provider.server import ServerThread, app
from sealing_key_provider.sim import SimPlatform
from tests.test_server_support import (
    Td,
    closed_without_bytes,
    in_process,
    legacy_address,
    legacy_exchange,
    legacy_raw,
    make_provider,
    refusals,
)

IO_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("platform"))


@pytest.fixture(scope="module")
def provider(sim: SimPlatform) -> Provider:
    return make_provider(sim)


@pytest.fixture(scope="module")
def server(provider: Provider) -> Iterator[ServerThread]:
    with in_process(
        provider,
        io_timeout=IO_TIMEOUT,
        max_connections=4,
        rate_limit_per_second=1000.0,
        rate_limit_burst=1000,
    ) as thread:
        yield thread


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def serves_next_client(server: ServerThread, sim: SimPlatform) -> bool:
    td = Td(sim)
    body = legacy_exchange(legacy_address(server), td.quote())
    return body is not None and len(td.open(bytes(json.loads(body)["encrypted_key"]))) == 32


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        ("huge length", struct.pack(">I", 1024 * 1024 + 1) + b"{", "REQUEST_TOO_LARGE"),
        ("4 GiB length", b"\xff\xff\xff\xff", "REQUEST_TOO_LARGE"),
        ("zero length", struct.pack(">I", 0), "BAD_REQUEST"),
        ("not JSON", frame(b"quote: 1, 2, 3"), "BAD_REQUEST"),
        ("not an object", frame(b"[1, 2, 3]"), "BAD_REQUEST"),
        ("no quote", frame(b'{"quotes": [1]}'), "BAD_REQUEST"),
        ("string quote", frame(b'{"quote": "BAAC"}'), "BAD_REQUEST"),
        ("byte > 255", frame(b'{"quote": [4, 0, 256]}'), "BAD_REQUEST"),
        ("negative byte", frame(b'{"quote": [4, -1]}'), "BAD_REQUEST"),
        ("bools", frame(b'{"quote": [true, false]}'), "BAD_REQUEST"),
        ("floats", frame(b'{"quote": [4.0, 0.5]}'), "BAD_REQUEST"),
        ("duplicate key", frame(b'{"quote": [1], "quote": [2]}'), "BAD_REQUEST"),
        ("trailing garbage", frame(b'{"quote": [1]} x'), "BAD_REQUEST"),
        ("garbage quote", frame(b'{"quote": [4, 0, 2, 0]}'), "QUOTE_MALFORMED"),
    ],
)
def test_bad_frames_close_without_a_byte(
    server: ServerThread,
    sim: SimPlatform,
    caplog: pytest.LogCaptureFixture,
    name: str,
    data: bytes,
    code: str,
) -> None:
    before = refusals(server, "legacy", code)
    with caplog.at_level(logging.INFO, logger="sealing_key_provider"):
        assert legacy_raw(legacy_address(server), data) is None, name
        assert serves_next_client(server, sim)
    # Counted one by one; framing refusals cost the sender nothing, so their log lines are summarised
    # (the first of each code per interval is written at once; see test_server_hostile).
    assert refusals(server, "legacy", code) == before + 1


def test_truncated_body_and_silent_client_time_out(
    server: ServerThread, sim: SimPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    address = legacy_address(server)
    before = refusals(server, "legacy", "REQUEST_TIMEOUT")
    with caplog.at_level(logging.INFO, logger="sealing_key_provider"):
        silent = socket.create_connection(address)
        truncated = socket.create_connection(address)
        truncated.sendall(struct.pack(">I", 100) + b'{"quote": [')
        half_header = socket.create_connection(address)
        half_header.sendall(b"\x00\x00")
        started = time.monotonic()
        deadline = started + IO_TIMEOUT + 5.0
        try:
            # The server serves others meanwhile: these connections hold no slot.
            assert serves_next_client(server, sim)
            for sock in (silent, truncated, half_header):
                assert closed_without_bytes(sock, deadline)
            assert time.monotonic() - started >= IO_TIMEOUT * 0.9
        finally:
            for sock in (silent, truncated, half_header):
                sock.close()
    # Counted one by one; logged summarised (refusals that cost the sender nothing).
    assert refusals(server, "legacy", "REQUEST_TIMEOUT") == before + 3


def test_client_that_closes_early(
    server: ServerThread, sim: SimPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    before = refusals(server, "legacy", "BAD_REQUEST")
    with socket.create_connection(legacy_address(server)) as sock:
        sock.sendall(struct.pack(">I", 50) + b'{"quote"')
        sock.shutdown(socket.SHUT_WR)
        assert closed_without_bytes(sock, time.monotonic() + 5.0)
    assert serves_next_client(server, sim)
    assert refusals(server, "legacy", "BAD_REQUEST") == before + 1


def test_connection_cap_is_shared_by_both_listeners(
    server: ServerThread, sim: SimPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    address = legacy_address(server)
    http = server.server.http_address
    assert http is not None
    budget = server.server.service.connections
    before = refusals(server, "legacy", "EVICTED")
    with caplog.at_level(logging.INFO, logger="sealing_key_provider"):
        held = [socket.create_connection(address) for _ in range(3)]
        held.append(socket.create_connection(http))  # an idle HTTP connection counts too
        try:
            # Wait (bounded) until the server has accepted all four.
            deadline = time.monotonic() + 5.0
            while budget.open < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert budget.open == 4
            # A fifth, on the other listener: the budget (4) is shared, so room is made by closing
            # the oldest idle connection, a legacy one, without a byte.
            with socket.create_connection(http):
                assert closed_without_bytes(held[0], time.monotonic() + 5.0)
                assert budget.open == 4
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 5.0
        while budget.open and time.monotonic() < deadline:
            time.sleep(0.01)
        assert budget.open == 0
        assert serves_next_client(server, sim)
    assert refusals(server, "legacy", "EVICTED") == before + 1
    assert "refused protocol=legacy code=EVICTED" in caplog.text


def test_rate_limited_legacy_client_is_closed(sim: SimPlatform, caplog: pytest.LogCaptureFixture) -> None:
    with (
        in_process(make_provider(sim), rate_limit_per_second=0.001, rate_limit_burst=2) as thread,
        caplog.at_level(logging.INFO, logger="sealing_key_provider"),
    ):
        assert serves_next_client(thread, sim)
        assert serves_next_client(thread, sim)
        assert legacy_exchange(legacy_address(thread), Td(sim).quote()) is None
    assert "refused protocol=legacy code=RATE_LIMITED peer=127.0.0.1:" in caplog.text


class FlakyListener(socket.socket):
    """A listening socket whose next accept() fails like a process out of file descriptors."""

    failures = 0

    def accept(self) -> tuple[socket.socket, Any]:
        if FlakyListener.failures:
            FlakyListener.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_accept_errors_do_not_stop_the_server(sim: SimPlatform, monkeypatch: pytest.MonkeyPatch) -> None:
    real_bind = app.bind

    def flaky_bind(listen: str | tuple[str, int], what: str) -> socket.socket:
        sock = real_bind(listen, what)
        if "legacy" not in what:
            return sock
        flaky = FlakyListener(sock.family, sock.type, sock.proto, fileno=sock.detach())
        flaky.setblocking(False)
        return flaky

    monkeypatch.setattr(app, "bind", flaky_bind)
    with in_process(make_provider(sim)) as thread:
        FlakyListener.failures = 1
        # The original exited (status 0) on the first accept error; here the server goes on serving.
        assert serves_next_client(thread, sim)
        assert FlakyListener.failures == 0
        assert serves_next_client(thread, sim)
