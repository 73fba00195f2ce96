"""The HTTP API v1 in-process: body bounds and strict parsing, the one error shape (also for 404/405),
rate limit and concurrency gate, readiness caching, nonces, OpenAPI, and the collateral/policy/dev-mode
refusals the provider makes, as a client sees them over a real loopback socket."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sealing_key_provider.dcap import Collateral
from sealing_key_provider.policy import Policy
from sealing_key_provider.server import ServerThread
from sealing_key_provider.sim import Scenario, SimPlatform, SimSgxPlatform
from tests.test_server_support import (
    SimSource,
    Td,
    b64,
    closed_without_bytes,
    error_code,
    http_client,
    in_process,
    key_of,
    make_provider,
    post_key,
    read_until_closed,
    refusals,
    start_thread,
)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("platform"))


@pytest.fixture(scope="module")
def server(sim: SimPlatform) -> Iterator[ServerThread]:
    with in_process(
        make_provider(sim), max_request_bytes=64 * 1024, rate_limit_per_second=1000.0, rate_limit_burst=1000
    ) as thread:
        yield thread


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with http_client(server) as c:
        yield c


def test_key_request_works(client: httpx.Client, sim: SimPlatform) -> None:
    td = Td(sim)
    r = post_key(client, td.quote(), key_name="app/db", key_version=3)
    assert len(key_of(td, r)) == 32
    body = r.json()
    assert (
        body["key_name"] == "app/db" and body["key_version"] == 3 and r.headers["cache-control"] == "no-store"
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "BAD_REQUEST"),
        (b"[]", "BAD_REQUEST"),
        (b"{}", "BAD_REQUEST"),
        (b'{"quote": "***"}', "BAD_REQUEST"),
        (b'{"quote": "AAA"}', "BAD_REQUEST"),
        (b'{"quote": [4, 0]}', "BAD_REQUEST"),
        (b'{"quote": "AAAA", "key_version": "1"}', "BAD_REQUEST"),
        (b'{"quote": "AAAA", "key_version": true}', "BAD_REQUEST"),
        (b'{"quote": "AAAA", "key_name": 5}', "BAD_REQUEST"),
        (b'{"quote": "AAAA", "extra": 1}', "BAD_REQUEST"),
        (b'{"quote": "AAAA", "quote": "AAAA"}', "BAD_REQUEST"),
        (b'{"quote": "AAAA"}', "QUOTE_MALFORMED"),
    ],
)
def test_bad_bodies(client: httpx.Client, body: bytes, code: str) -> None:
    r = client.post("/v1/keys", content=body, headers={"content-type": "application/json"})
    assert (r.status_code, error_code(r)) == (400, code)


def test_request_errors_with_codes(client: httpx.Client, sim: SimPlatform) -> None:
    quote = Td(sim).quote()
    r = post_key(client, quote, scheme="md5")
    assert (r.status_code, error_code(r)) == (400, "UNKNOWN_SCHEME")
    r = post_key(client, quote, key_name="../etc")
    assert (r.status_code, error_code(r)) == (400, "BAD_REQUEST")
    r = client.post(
        "/v1/keys", content=b"quote=AAAA", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert (r.status_code, error_code(r)) == (415, "UNSUPPORTED_MEDIA_TYPE")
    r = post_key(client, b"\x04\x00")
    assert (r.status_code, error_code(r)) == (400, "QUOTE_MALFORMED")


def test_too_large_by_length_and_by_stream(client: httpx.Client) -> None:
    big = json.dumps({"quote": "A" * (64 * 1024)}).encode()
    r = client.post("/v1/keys", content=big, headers={"content-type": "application/json"})
    assert (r.status_code, error_code(r)) == (413, "REQUEST_TOO_LARGE")

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked, capped while streaming
        for _ in range(100):
            yield b" " * 1024

    r = client.post("/v1/keys", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert (r.status_code, error_code(r)) == (413, "REQUEST_TOO_LARGE")


def test_lying_content_length_is_capped(server: ServerThread) -> None:
    address = server.server.http_address
    assert address is not None
    with socket.create_connection(address, timeout=10) as sock:
        head = b"POST /v1/keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n"
        sock.sendall(head + b"{}")  # fewer bytes than announced, then silence: the body deadline ends it
        started = time.monotonic()
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 408"), data[:100]
    assert b'"REQUEST_TIMEOUT"' in data and time.monotonic() - started < 5


def test_unknown_routes_and_methods_have_the_error_shape(client: httpx.Client) -> None:
    r = client.get("/v2/keys")
    assert (r.status_code, error_code(r)) == (404, "NOT_FOUND")
    r = client.get("/v1/keys")
    assert (r.status_code, error_code(r)) == (405, "METHOD_NOT_ALLOWED")
    assert r.headers["allow"] == "POST"
    r = client.delete("/healthz")
    assert (r.status_code, error_code(r)) == (405, "METHOD_NOT_ALLOWED")


def test_openapi_documents_paths_and_errors(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "Gramine sealing key provider"
    keys = spec["paths"]["/v1/keys"]["post"]
    assert {"200", "400", "403", "413", "429", "503"} <= set(keys["responses"])
    assert "422" not in keys["responses"]
    schema = keys["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["quote"] and schema["additionalProperties"] is False
    assert {"/v1/info", "/v1/nonce", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])


def test_info_health_and_metrics(client: httpx.Client, server: ServerThread) -> None:
    info = client.get("/v1/info").json()
    assert info["policy_digest"] == server.server.provider.policy_digest.hex()
    assert info["dev_mode"] is False
    assert client.get("/healthz").json() == {"status": "ok"}
    text = client.get("/metrics").text
    assert 'skp_requests_total{code="QUOTE_MALFORMED",protocol="http"}' in text
    assert 'skp_requests_total{code="REQUEST_TOO_LARGE",protocol="http"}' in text


def test_rate_limit(sim: SimPlatform) -> None:
    with (
        in_process(make_provider(sim), rate_limit_per_second=0.001, rate_limit_burst=3) as thread,
        http_client(thread) as c,
    ):
        codes = [c.get("/v1/nonce").status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        r = post_key(c, Td(sim).quote())
        assert (r.status_code, error_code(r)) == (429, "RATE_LIMITED")
        assert r.headers["retry-after"] == "1"
        # Probes and metadata are not limited.
        assert c.get("/healthz").status_code == 200 and c.get("/v1/info").status_code == 200
        assert 'code="RATE_LIMITED",protocol="http"} 1.0' in c.get("/metrics").text


class SlowPlatform:
    """The simulated SGX platform whose quote generation blocks until released (after the two start-up
    quotes: identity and attested key)."""

    def __init__(self, sim: SimPlatform) -> None:
        self.inner = SimSgxPlatform.load(sim.state_dir)
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls = 0

    def report(self, report_data: bytes) -> bytes:
        return self.inner.report(report_data)

    def quote(self, report_data: bytes) -> bytes:
        self.calls += 1
        if self.calls > 2:
            self.entered.set()
            assert self.release.wait(30)
        return self.inner.quote(report_data)

    def sealing_key(self) -> bytes:
        return self.inner.sealing_key()


def test_deadline_and_overloaded_when_no_slot_comes_in_time(sim: SimPlatform) -> None:
    platform = SlowPlatform(sim)
    provider = make_provider(sim, platform=platform)
    with in_process(provider, max_concurrency=1, request_deadline=1.0) as thread, http_client(thread) as c:
        td = Td(sim)
        result: dict[str, Any] = {}
        first = threading.Thread(target=lambda: result.update(r=post_key(c, td.quote(), evidence="quote")))
        first.start()
        assert platform.entered.wait(10)
        # The worker is stuck: the first request is answered at its deadline, and its slot stays
        # taken until the worker returns, so the next request cannot get one before its own deadline.
        first.join(10)
        assert (result["r"].status_code, error_code(result["r"])) == (503, "DEADLINE_EXCEEDED")
        r = post_key(c, Td(sim).quote())
        assert (r.status_code, error_code(r)) == (503, "OVERLOADED")
        assert r.headers["retry-after"] == "1"
        platform.release.set()
        td = Td(sim)
        assert len(key_of(td, post_key(c, td.quote()))) == 32  # the slot came back with the worker


def test_readiness_is_cached_and_reports_failures(sim: SimPlatform) -> None:
    calls: list[str] = []

    class Flaky(SimSource):
        down = False

        def get(self, tee: str, fmspc: bytes, ca: str) -> Collateral:
            calls.append(tee)
            if self.down:
                from sealing_key_provider.errors import CollateralUnavailable

                raise CollateralUnavailable("PCCS unreachable (test)")
            return super().get(tee, fmspc, ca)

    source = Flaky(sim)
    with in_process(make_provider(sim, source=source)) as thread, http_client(thread) as c:
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json() == {
            "status": "ready",
            "checks": {"attestation": "ok", "collateral": "ok"},
        }
        n = len(calls)
        for _ in range(5):
            assert c.get("/readyz").status_code == 200
        assert len(calls) == n  # cached: probes do not hit the platform or the collateral source
    down = Flaky(sim)
    down.down = True  # the provider starts without collateral; readiness says what is missing
    with in_process(make_provider(sim, source=down)) as thread, http_client(thread) as c:
        r = c.get("/readyz")
        assert (r.status_code, error_code(r)) == (503, "COLLATERAL_UNAVAILABLE")
        # A TD asking meanwhile learns that the provider's collateral source failed, not its own call.
        r = c.post("/v1/keys", json={"quote": b64(Td(sim).quote())})
        assert (r.status_code, error_code(r)) == (503, "COLLATERAL_UNAVAILABLE")
        message = r.json()["error"]["message"]
        assert message.startswith(
            f"the provider could not get TDX collateral for FMSPC {sim.fmspc.hex().upper()}"
        )
        assert message.endswith("PCCS unreachable (test)")


def test_stale_nonce_is_refused(sim: SimPlatform) -> None:
    now = [time.time()]
    provider = make_provider(sim, policy=Policy(freshness_required=True), clock=lambda: now[0])
    with in_process(provider) as thread, http_client(thread) as c:
        td = Td(sim)
        r = post_key(c, td.quote())
        assert (r.status_code, error_code(r)) == (403, "FRESHNESS_INVALID")
        n = c.get("/v1/nonce").json()
        nonce = base64.b64decode(n["nonce"])
        bound = td.quote(rd_tail=hashlib.sha256(nonce).digest())
        assert len(key_of(td, post_key(c, bound, nonce=n["nonce"]))) == 32
        now[0] += provider.policy.freshness_window_seconds + 60
        r = post_key(c, bound, nonce=n["nonce"])
        assert (r.status_code, error_code(r)) == (403, "FRESHNESS_INVALID")
        assert c.get("/v1/info").json()["freshness_required"] is True


@pytest.mark.parametrize(
    ("scenario", "status", "code"),
    [
        (Scenario.EXPIRED, 400, "COLLATERAL_EXPIRED"),
        (Scenario.REVOKED_PCK, 400, "PCK_REVOKED"),
        (Scenario.OUT_OF_DATE, 403, "TCB_STATUS_REJECTED"),
    ],
)
def test_collateral_scenarios(sim: SimPlatform, scenario: Scenario, status: int, code: str) -> None:
    with in_process(make_provider(sim, source=SimSource(sim, scenario))) as thread, http_client(thread) as c:
        r = post_key(c, Td(sim).quote())
        assert (r.status_code, error_code(r)) == (status, code)


@pytest.mark.parametrize(
    ("policy", "fields", "code"),
    [
        ({"allowed_mrtd": ["22" * 48]}, {}, "POLICY_DENIED"),
        ({"key_names": {"*": ["app/**"]}}, {"key_name": "other"}, "POLICY_DENIED"),
        ({"accepted_tcb_statuses": ["OutOfDate"]}, {}, "TCB_STATUS_REJECTED"),
    ],
)
def test_policy_refusals(sim: SimPlatform, policy: dict[str, Any], fields: dict[str, Any], code: str) -> None:
    provider = make_provider(sim, policy=Policy.from_mapping(policy))
    with in_process(provider) as thread, http_client(thread) as c:
        r = post_key(c, Td(sim).quote(), **fields)
        assert (r.status_code, error_code(r)) == (403, code)
        assert c.get("/v1/info").json()["policy_digest"] == provider.policy_digest.hex()


def test_dev_mode_accepts_an_unverified_quote_and_says_so(sim: SimPlatform) -> None:
    class Down:
        def get(self, tee: str, fmspc: bytes, ca: str) -> Collateral:
            raise AssertionError("dev mode must not fetch collateral")

    provider = make_provider(sim, dev_mode=True, source=Down())
    with in_process(provider) as thread, http_client(thread) as c:
        td = Td(sim)
        forged = bytearray(td.quote())
        forged[200] ^= 1  # the signature no longer matches: dev mode does not look
        r = c.post("/v1/keys", json={"quote": b64(bytes(forged))})
        assert len(key_of(td, r)) == 32
        assert r.json()["dev_mode"] is True and r.json()["tcb_status"] == "Unverified"
        assert c.get("/v1/info").json()["dev_mode"] is True
        assert c.get("/readyz").json()["checks"]["collateral"].startswith("skipped")


def test_shutdown_finishes_in_flight_requests(sim: SimPlatform) -> None:
    platform = SlowPlatform(sim)
    thread = start_thread(make_provider(sim, platform=platform))
    legacy = thread.server.legacy_address
    assert legacy is not None
    with http_client(thread) as c:
        td = Td(sim)
        result: dict[str, Any] = {}
        first = threading.Thread(target=lambda: result.update(r=post_key(c, td.quote(), evidence="quote")))
        first.start()
        assert platform.entered.wait(10)
        thread.server.request_stop_threadsafe(0)
        # New connections are refused once the listeners close (bounded wait for the loop to get there).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(legacy, timeout=1).close()
            except ConnectionRefusedError:
                break
            except ConnectionResetError:
                pass  # raced the close: the handshake sat in the closing listener's queue; ask again
            time.sleep(0.01)
        else:
            raise AssertionError("legacy listener still accepts after the stop request")
        platform.release.set()
        first.join(10)
        assert len(key_of(td, result["r"])) == 32  # the in-flight request was answered
    assert thread.wait(15) == 0


def test_collateral_cache_metrics(sim: SimPlatform) -> None:
    from sealing_key_provider.collateral import CachingSource
    from sealing_key_provider.server import ProviderServer
    from tests.test_server_support import server_config

    source = CachingSource(SimSource(sim), time.time)
    provider = make_provider(sim, source=source)
    thread = ServerThread(
        ProviderServer(provider, server_config(), collateral=source), ("127.0.0.1", 0), ("127.0.0.1", 0)
    ).start()
    try:
        with http_client(thread) as c:
            for _ in range(3):
                td = Td(sim)
                assert len(key_of(td, post_key(c, td.quote()))) == 32
            text = c.get("/metrics").text
    finally:
        thread.stop()
    assert "skp_collateral_cache_misses_total 1.0" in text
    assert "skp_collateral_cache_hits_total 2.0" in text
    assert "skp_collateral_cache_entries 1.0" in text


def test_request_head_deadline(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    address = server.server.http_address
    assert address is not None
    before = refusals(server, "http", "REQUEST_TIMEOUT")
    with caplog.at_level(logging.DEBUG, logger="sealing_key_provider"):
        silent = socket.create_connection(address)
        trickle = socket.create_connection(address)
        trickle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        kept = socket.create_connection(address)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 10
        try:
            assert closed_without_bytes(silent, deadline)  # sent nothing: owed nothing
            answer = read_until_closed(trickle, deadline)
            assert answer.startswith(b"HTTP/1.1 408 ") and b'"code": "REQUEST_TIMEOUT"' in answer
            kept.settimeout(10)
            answer = b""
            while not answer.endswith(b'{"status":"ok"}'):
                chunk = kept.recv(4096)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
            assert kept.recv(1) == b""  # idle after its response: closed by the deadline, not served again
        finally:
            for sock in (silent, trickle, kept):
                sock.close()
    assert refusals(server, "http", "REQUEST_TIMEOUT") == before + 2
    assert "closing idle kept-alive connection" in caplog.text
    end = time.monotonic() + 5
    while server.server.service.connections.open and time.monotonic() < end:
        time.sleep(0.01)
    assert server.server.service.connections.open <= 1  # only the module's httpx client may remain


def test_a_readiness_check_that_crashes_is_not_ready() -> None:
    """An unexpected exception in a check (a library error, a bug) is a failed check, never 'ready'."""
    import asyncio
    from typing import cast

    from sealing_key_provider.errors import NotReady
    from sealing_key_provider.server.http_api import Readiness
    from sealing_key_provider.server.service import KeyService

    class Crashing:
        async def readiness(self) -> dict[str, str]:
            raise RuntimeError("boom (test)")

    readiness = Readiness(cast(KeyService, Crashing()), ttl=60.0)
    checks, error = asyncio.run(readiness.result())
    assert checks is None and isinstance(error, NotReady)


def test_a_request_out_of_time_before_its_worker_slot_spends_no_worker() -> None:
    """A request whose deadline passed while it waited (for a rate-limit token) is refused with
    DEADLINE_EXCEEDED before any worker runs the provider for it."""
    import asyncio
    from typing import cast

    from sealing_key_provider.config import ServerConfig
    from sealing_key_provider.errors import DeadlineExceeded, RestartRequired
    from sealing_key_provider.provider import KeyRequest, Provider
    from sealing_key_provider.server.metrics import Metrics
    from sealing_key_provider.server.service import KeyService

    handled: list[KeyRequest] = []

    class Recording:
        def handle(self, request: KeyRequest) -> None:
            handled.append(request)

    def fatal(e: RestartRequired) -> None:
        raise AssertionError("no fatal error expected")

    async def ask() -> None:
        service = KeyService(cast(Provider, Recording()), ServerConfig(), Metrics(), on_fatal=fatal)
        past = asyncio.get_running_loop().time() - 1.0
        with pytest.raises(DeadlineExceeded):
            await service.request_key(KeyRequest(quote=b"q", peer="127.0.0.1:1"), "http", past)

    asyncio.run(ask())
    assert handled == []
