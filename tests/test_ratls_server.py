"""The HTTPS (RA-TLS) listener and the SDK over it, on loopback, and the quote count per request.

Must show (issue 13): after warm-up, 1,000 v1 key requests over plain HTTP and 1,000 over RA-TLS raise
``skp_quote_generation_seconds_count`` by 0; 100 legacy requests raise it by 100.
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sealing_key_provider.attestation import AttestationDocument
from sealing_key_provider.client import KeyClient, ProviderTrust
from sealing_key_provider.dcap import Verifier
from sealing_key_provider.errors import PlatformMismatch, ProviderError, ProviderIdentityMismatch
from sealing_key_provider.keys import build_registry
from sealing_key_provider.policy import Policy
from sealing_key_provider.provider import Provider
from sealing_key_provider.ratls import make_ratls_identity, read_ratls_certificate
from sealing_key_provider.server import ProviderServer, ServerThread
from sealing_key_provider.sim import SimPlatform, SimSgxPlatform
from tests.client_helpers import SimSource as ClientSimSource
from tests.client_helpers import SimTd
from tests.test_server_support import SimSource, Td, legacy_exchange, server_config
from tests.tls_helpers import self_signed_localhost


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("ratls-server"))


@pytest.fixture(scope="module")
def provider(sim: SimPlatform) -> Provider:
    return Provider(
        SimSgxPlatform.load(sim.state_dir),
        SimSource(sim),
        Verifier(trust_anchor=sim.root_certificate),
        Policy(),
        build_registry(),
        tls_factory=make_ratls_identity,
    )


@pytest.fixture(scope="module")
def thread(provider: Provider) -> Iterator[ServerThread]:
    config = server_config(rate_limit_per_second=1e6, rate_limit_burst=1_000_000, io_timeout=5.0)
    server = ProviderServer(provider, config)
    t = ServerThread(server, ("127.0.0.1", 0), ("127.0.0.1", 0), ("127.0.0.1", 0)).start()
    try:
        yield t
    finally:
        t.stop()


def _url(address: tuple[str, int] | None, scheme: str) -> str:
    assert address is not None
    return f"{scheme}://{address[0]}:{address[1]}"


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match is not None, name
    return float(match.group(1))


def _quotes(http: httpx.Client) -> float:
    return _metric(http.get("/metrics").text, "skp_quote_generation_seconds_count")


def _http_requests(http: httpx.Client) -> float:
    """Key requests answered over HTTP or HTTPS (the RA-TLS listener has its own label)."""
    text = http.get("/metrics").text
    return _metric(text, 'skp_requests_total{code="OK",protocol="http"}') + _metric(
        text, 'skp_requests_total{code="OK",protocol="https"}'
    )


def _trust(provider: Provider, **kw: object) -> ProviderTrust:
    return ProviderTrust(mrenclave=provider.identity.mrenclave, **kw)  # type: ignore[arg-type]


def _client(
    provider: Provider, sim: SimPlatform, url: str, *, td: SimTd | None = None, **trust: object
) -> KeyClient:
    args = (
        _trust(provider, **trust),
        Verifier(trust_anchor=sim.root_certificate),
        ClientSimSource(sim, int(time.time())),
        td or SimTd(sim),
    )
    return KeyClient.ratls(url, *args) if url.startswith("https") else KeyClient.http(url, *args)


def _peer_certificate(address: tuple[str, int] | None) -> bytes:
    assert address is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(address, timeout=5) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_zero_quotes_per_v1_request_and_one_per_legacy_request(
    thread: ServerThread, provider: Provider, sim: SimPlatform
) -> None:
    tds = [Td(sim) for _ in range(8)]
    quotes = [td.quote() for td in tds]
    bodies = [{"quote": base64.b64encode(q).decode()} for q in quotes]
    https_url = _url(thread.server.https_address, "https")
    with (
        httpx.Client(base_url=_url(thread.server.http_address, "http"), timeout=10) as http,
        httpx.Client(base_url=https_url, timeout=10, verify=False) as https,
    ):
        for client in (http, https):  # warm-up: collateral cache, connections
            assert client.post("/v1/keys", json=bodies[0]).status_code == 200
        before = _quotes(http)
        for i in range(1000):
            r = http.post("/v1/keys", json=bodies[i % len(bodies)])
            assert r.status_code == 200 and r.json()["evidence"] == "signature"
        for i in range(1000):
            r = https.post("/v1/keys", json=bodies[i % len(bodies)])
            assert r.status_code == 200 and r.json()["evidence"] == "ratls"
            assert "signature" not in r.json() and "provider_quote" not in r.json()
        assert _quotes(http) == before
        legacy = thread.server.legacy_address
        assert legacy is not None
        assert legacy_exchange(legacy, quotes[0]) is not None  # legacy warm-up
        before = _quotes(http)
        for i in range(100):
            assert legacy_exchange(legacy, quotes[i % len(quotes)]) is not None
        assert _quotes(http) == before + 100
        # The plain-HTTP answer's signature verifies against the published attestation, and the
        # HTTPS answer's key opens like the HTTP one.
        doc = AttestationDocument.from_json(http.get("/v1/attestation").json())
        assert doc.attestation_id == http.post("/v1/keys", json=bodies[1]).json()["attestation_id"]
        a = tds[2].open(base64.b64decode(http.post("/v1/keys", json=bodies[2]).json()["encrypted_key"]))
        b = tds[2].open(base64.b64decode(https.post("/v1/keys", json=bodies[2]).json()["encrypted_key"]))
        assert a == b


def test_sdk_over_ratls_and_over_http_get_the_same_key(
    thread: ServerThread, provider: Provider, sim: SimPlatform
) -> None:
    td = SimTd(sim)
    with _client(provider, sim, _url(thread.server.https_address, "https"), td=td) as c:
        k1 = c.fetch()
        assert c.get_key(freshness=True) == k1.key
        assert c.ratls_verifier is not None and c.ratls_verifier.full_checks == 1  # verified once, cached
        assert k1.provider_mrenclave == provider.identity.mrenclave
    with _client(provider, sim, _url(thread.server.http_address, "http"), td=td) as c:
        assert c.get_key() == k1.key
    before = provider.quote_stats.count
    args = (
        _trust(provider),
        Verifier(trust_anchor=sim.root_certificate),
        ClientSimSource(sim, int(time.time())),
        td,
    )
    with KeyClient.http(_url(thread.server.http_address, "http"), *args, evidence="quote") as c:
        assert c.get_key() == k1.key
    assert provider.quote_stats.count == before + 1  # the one per-request quote asked for


def test_a_failing_certificate_ends_the_connection_before_any_request_byte(
    thread: ServerThread, provider: Provider, sim: SimPlatform, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = _url(thread.server.https_address, "https")
    with httpx.Client(base_url=_url(thread.server.http_address, "http"), timeout=10) as http:
        before = _http_requests(http)
        with _client(provider, sim, url, mrsigner=b"\x42" * 32) as c, pytest.raises(ProviderIdentityMismatch):
            c.get_key()
        with _client(provider, sim, url, min_isvsvn=99) as c, pytest.raises(ProviderIdentityMismatch):
            c.get_key()
        with _client(provider, sim, url, accepted_tcb_statuses={"SWHardeningNeeded"}) as c:
            with pytest.raises(ProviderError) as e:
                c.get_key()
            assert e.value.code == "TCB_STATUS_REJECTED"
        # A TD on another platform: the provider's certificate names a platform that is not the TD's.
        other = SimPlatform.init(tmp_path_factory.mktemp("ratls-other"), share_ca_with=sim)
        with _client(provider, sim, url, td=SimTd(other)) as c, pytest.raises(PlatformMismatch):
            c.get_key()
        assert _http_requests(http) == before  # not one key request reached the server


def test_the_certificate_is_remade_on_reattestation(
    thread: ServerThread, provider: Provider, sim: SimPlatform
) -> None:
    old = _peer_certificate(thread.server.https_address)
    new_attestation = provider.attested.attest(time.time())
    new = _peer_certificate(thread.server.https_address)
    assert new != old
    evidence = read_ratls_certificate(new, time.time())
    assert evidence.spki_sha256 == new_attestation.statement.tls_spki_sha256
    with _client(provider, sim, _url(thread.server.https_address, "https")) as c:
        assert len(c.get_key()) == 32


def test_tls_handshake_failures_never_reach_the_handler(thread: ServerThread) -> None:
    address = thread.server.https_address
    assert address is not None
    with httpx.Client(base_url=_url(thread.server.http_address, "http"), timeout=10) as http:
        before = _http_requests(http)
        with socket.create_connection(address, timeout=5) as s:
            s.sendall(b"POST /v1/keys HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
            s.settimeout(5)
            try:
                data = s.recv(1024)
            except (ConnectionResetError, TimeoutError):
                data = b""
            # No HTTP answer of any kind (a TLS alert or nothing): had the plaintext request reached
            # the handler, it would have been answered in HTTP, if only with an error.
            assert not data.startswith(b"HTTP/"), data[:100]
        # Plain HTTP on the TLS port, then a working request: the server is unharmed.
        with httpx.Client(base_url=_url(address, "https"), timeout=10, verify=False) as https:
            assert https.get("/healthz").status_code == 200
        assert _http_requests(http) == before


def test_stalled_handshakes_are_cut_off_and_never_reach_the_handler(provider: Provider) -> None:
    """Clients that open the TLS port and never finish a handshake are closed after server.io_timeout
    (they are admitted, and counted, at accept like any connection); nothing of theirs reaches the
    request handler, and the listener goes on serving."""
    config = server_config(io_timeout=1.0, rate_limit_per_second=1e6, rate_limit_burst=10**6)
    with ServerThread(ProviderServer(provider, config), "", ("127.0.0.1", 0), ("127.0.0.1", 0)) as t:
        address = t.server.https_address
        assert address is not None
        with httpx.Client(base_url=_url(t.server.http_address, "http"), timeout=10) as http:
            before = _http_requests(http)
        stalled = [socket.create_connection(address, timeout=10) for _ in range(3)]
        try:
            for s in stalled:
                s.settimeout(10)
                with contextlib.suppress(ConnectionResetError):  # a reset closes it all the same
                    assert s.recv(1) == b""  # the server gave up on the handshake
        finally:
            for s in stalled:
                s.close()
        with httpx.Client(base_url=_url(address, "https"), timeout=10, verify=False) as https:
            assert https.get("/healthz").status_code == 200
        with httpx.Client(base_url=_url(t.server.http_address, "http"), timeout=10) as http:
            after = _http_requests(http)
        assert after == before


class _RecordingTlsServer(threading.Thread):
    """A TLS server with an ordinary (not RA-TLS) certificate that records what a client sends after
    the handshake, then answers like the provider would if it were asked."""

    def __init__(self, cert: Path, key: Path) -> None:
        super().__init__(daemon=True)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()[:2]
        self.received = bytearray()
        self.handshakes = 0

    def run(self) -> None:
        raw, _ = self.listener.accept()
        raw.settimeout(10)
        try:
            with self.context.wrap_socket(raw, server_side=True) as tls:
                self.handshakes += 1
                while chunk := tls.recv(65536):
                    self.received += chunk
        except (OSError, ssl.SSLError):
            pass
        finally:
            self.listener.close()


def test_an_ordinary_tls_server_never_receives_the_request(
    provider: Provider, sim: SimPlatform, tmp_path: Path
) -> None:
    """get-key against a TLS server whose certificate is not an RA-TLS certificate: the handshake
    completes, the certificate is refused, and not one byte of the key request is written."""
    cert, key = self_signed_localhost(tmp_path)
    server = _RecordingTlsServer(cert, key)
    server.start()
    url = f"https://{server.address[0]}:{server.address[1]}"
    with _client(provider, sim, url) as c, pytest.raises(ProviderError) as e:
        c.get_key()
    server.join(15)
    assert e.value.code == "QUOTE_MALFORMED" and "RA-TLS certificate" in e.value.message
    assert server.handshakes == 1 and bytes(server.received) == b""
