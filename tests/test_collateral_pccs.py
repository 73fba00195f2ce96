"""PCCS client against the PCCS server: real Intel collateral over the real API, and every way it fails."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sealing_key_provider.collateral import (
    CachingSource,
    FileSource,
    PccsClient,
    build_source,
    for_quote,
    pccs_client,
)
from sealing_key_provider.collateral.pccs_client import crl_to_der, decode_issuer_chain, normalise_base_url
from sealing_key_provider.dcap.abi import parse_quote
from sealing_key_provider.dcap.collateral import Collateral
from sealing_key_provider.dcap.verify import Verifier
from sealing_key_provider.errors import (
    CollateralMalformed,
    CollateralUnavailable,
    ConfigError,
    ProviderError,
)
from sealing_key_provider.sim.pccs_server import PccsServer, StaticCatalog, describe, parse_listen
from tests.tls_helpers import self_signed_localhost

CORPUS = Path(__file__).resolve().parent / "data" / "dcap"


def _index() -> dict[str, Any]:
    index = CORPUS / "INDEX.json"
    if not index.is_file():
        pytest.fail(f"DCAP corpus not found at {CORPUS} (expected tests/data/dcap in the repository)")
    result: dict[str, Any] = json.loads(index.read_text())
    return result


INDEX = _index()
CASES = {c["name"]: c for c in INDEX["cases"]}
NEGATIVE = {c["name"]: c for c in INDEX["negative"]}


def _collateral(case: dict[str, Any]) -> Collateral:
    return Collateral.from_json((CORPUS / str(case["files"]["collateral"])).read_text())


def _quote(case: dict[str, Any]) -> bytes:
    return (CORPUS / str(case["files"]["quote"])).read_bytes()


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    """Start PCCS servers on 127.0.0.1:0; yields a function returning the URL; stops them after."""
    servers: list[PccsServer] = []

    def start(*collaterals: Collateral, **kwargs: Any) -> str:
        server = PccsServer(StaticCatalog(collaterals), "127.0.0.1", 0, **kwargs)
        server.start()
        servers.append(server)
        return server.url

    yield start
    for s in servers:
        s.stop()


# --- every corpus case travels the HTTP path unchanged ------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_case_round_trips_and_verifies(name: str, serve: Callable[..., str], tmp_path: Path) -> None:
    case = CASES[name]
    served = _collateral(case)
    url = serve(served)
    quote = parse_quote(_quote(case))
    tee, fmspc, ca = for_quote(quote)
    assert (tee, fmspc.hex().upper(), ca) == (case["kind"], case["fmspc"], case["pck_ca"])
    with PccsClient(url, timeout=5) as client:
        fetched = client.get(tee, fmspc, ca)
    assert fetched == served  # byte-identical, field by field

    verifier = Verifier(trust_anchor=None)
    expected = case["expected"]
    if name == "tdx-v5-automata-alibaba":
        # dcap-qvl's MRSERVICETD policy is not Intel's algorithm: only the path is under test here,
        # and the fetched collateral must behave exactly like the file.
        def outcome(c: Collateral) -> object:
            try:
                return verifier.verify(quote, c, now=case["verify_unix_time"]).to_dict()
            except ProviderError as e:
                return e.code

        assert outcome(fetched) == outcome(served)
    elif name.endswith("-notcb"):
        with pytest.raises(ProviderError) as err:
            verifier.verify(quote, fetched, now=case["verify_unix_time"])
        assert err.value.code == "TCB_LEVEL_NOT_FOUND"
    else:
        assert expected["ok"]
        result = verifier.verify(quote, fetched, now=case["verify_unix_time"])
        assert str(result.status) == expected["status"]
        assert sorted(result.advisory_ids) == sorted(expected.get("advisory_ids", []))


@pytest.mark.parametrize("name", ["tdx-tcbinfo-altered", "tdx-qeidentity-altered", "tdx-tcbinfo-sig-altered"])
def test_tampered_documents_travel_intact_and_fail_signature_check(
    name: str, serve: Callable[..., str]
) -> None:
    case = NEGATIVE[name]
    served = _collateral(case)
    quote = parse_quote(_quote(case))
    with PccsClient(serve(served), timeout=5) as client:
        fetched = client.get(*for_quote(quote))
    assert fetched == served
    with pytest.raises(ProviderError) as err:
        Verifier().verify(quote, fetched, now=case["verify_unix_time"])
    assert err.value.code == "COLLATERAL_SIGNATURE_INVALID"


def test_tampering_between_server_and_verifier_is_caught(serve: Callable[..., str]) -> None:
    case = CASES["sgx-v3-phala-1"]
    good = _collateral(case)
    # One space added inside the signed JSON: still valid JSON, still parses, signature must fail.
    tampered = dataclasses.replace(good, qe_identity=good.qe_identity.replace(b'"version"', b' "version"', 1))
    quote = parse_quote(_quote(case))
    with PccsClient(serve(tampered), timeout=5) as client:
        fetched = client.get(*for_quote(quote))
    assert fetched.qe_identity == tampered.qe_identity
    with pytest.raises(ProviderError) as err:
        Verifier().verify(quote, fetched, now=case["verify_unix_time"])
    assert err.value.code == "COLLATERAL_SIGNATURE_INVALID"


# --- the server speaks the PCS v4 API ------------------------------------------------------------------


def test_server_endpoints_headers_and_encodings(serve: Callable[..., str]) -> None:
    case = CASES["tdx-v4-phala-1"]
    c = _collateral(case)
    url = serve(c)
    base = url + "/sgx/certification/v4"
    tdx = url + "/tdx/certification/v4"
    with httpx.Client() as h:
        r = h.get(tdx + "/tcb", params={"fmspc": "b0c06f000000"})
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert (
            r.content
            == b'{"tcbInfo":' + c.tcb_info + b',"signature":"' + c.tcb_info_signature.hex().encode() + b'"}'
        )
        raw_header = r.headers["TCB-Info-Issuer-Chain"]
        assert "\n" not in raw_header and "%0A" in raw_header and "+" not in raw_header
        assert unquote(raw_header).encode() == c.tcb_info_issuer_chain

        r = h.get(tdx + "/qe/identity")
        assert r.status_code == 200
        assert unquote(r.headers["SGX-Enclave-Identity-Issuer-Chain"]).encode() == c.qe_identity_issuer_chain
        assert json.loads(r.content)["enclaveIdentity"] == json.loads(c.qe_identity)

        r = h.get(base + "/pckcrl", params={"ca": "platform", "encoding": "der"})
        assert (r.status_code, r.headers["content-type"], r.content) == (
            200,
            "application/pkix-crl",
            c.pck_crl,
        )
        assert unquote(r.headers["SGX-PCK-CRL-Issuer-Chain"]).encode() == c.pck_crl_issuer_chain
        r = h.get(base + "/pckcrl", params={"ca": "platform"})  # PEM is the PCS default
        assert r.headers["content-type"] == "application/x-pem-file"
        assert crl_to_der(r.content, "pem") == c.pck_crl

        r = h.get(base + "/rootcacrl")
        assert r.status_code == 200 and r.text == c.root_ca_crl.hex()

        # Errors: unknown FMSPC 404, bad parameters 400, unknown path 404, wrong TEE 404, not GET 405.
        assert h.get(tdx + "/tcb", params={"fmspc": "00606A000000"}).status_code == 404
        assert h.get(base + "/tcb", params={"fmspc": "B0C06F000000"}).status_code == 404
        assert h.get(base + "/qe/identity").status_code == 404
        assert h.get(tdx + "/tcb", params={"fmspc": "zz"}).status_code == 400
        assert h.get(tdx + "/tcb").status_code == 400
        assert h.get(tdx + "/tcb?fmspc=B0C06F000000&fmspc=B0C06F000000").status_code == 400
        assert h.get(tdx + "/tcb", params={"fmspc": "B0C06F000000", "update": "sometime"}).status_code == 400
        assert h.get(tdx + "/tcb", params={"fmspc": "B0C06F000000", "update": "early"}).status_code == 200
        n = json.loads(c.tcb_info)["tcbEvaluationDataNumber"]
        assert (
            h.get(tdx + "/tcb", params={"fmspc": "B0C06F000000", "tcbEvaluationDataNumber": n}).status_code
            == 200
        )
        assert (
            h.get(tdx + "/tcb", params={"fmspc": "B0C06F000000", "tcbEvaluationDataNumber": 1}).status_code
            == 404
        )
        assert h.get(base + "/pckcrl", params={"ca": "processor"}).status_code == 404
        assert h.get(base + "/pckcrl", params={"ca": "nobody"}).status_code == 400
        assert h.get(base + "/pckcrl", params={"ca": "platform", "encoding": "b64"}).status_code == 400
        assert h.get(base + "/rootcacrl", params={"x": "1"}).status_code == 400
        assert h.get(url + "/sgx/certification/v3/tcb").status_code == 404
        assert h.post(tdx + "/tcb").status_code == 405
        head = h.head(base + "/rootcacrl")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(2 * len(c.root_ca_crl))


def test_describe_reads_tee_fmspc_and_ca_from_the_documents() -> None:
    for case in CASES.values():
        e = describe(_collateral(case))
        assert (e.tee, e.fmspc.hex().upper(), e.ca) == (case["kind"], case["fmspc"], case["pck_ca"])


def test_static_catalog_refuses_two_collaterals_for_one_fmspc() -> None:
    c = _collateral(CASES["tdx-v4-dcaprs-1"])
    with pytest.raises(ConfigError):
        StaticCatalog([c, c])


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8081") == ("127.0.0.1", 8081)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("localhost", "host:port", "1.2.3.4:70000"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


# --- client details -------------------------------------------------------------------------------------


def test_base_url_normalisation() -> None:
    assert normalise_base_url("https://pccs:8081/sgx/certification/v4/") == "https://pccs:8081"
    assert (
        normalise_base_url("https://api.trustedservices.intel.com") == "https://api.trustedservices.intel.com"
    )
    assert normalise_base_url("http://h/prefix/tdx/certification/v4") == "http://h/prefix"
    for bad in ("ftp://h", "pccs:8081", "https://h/?x=1"):
        with pytest.raises(ConfigError):
            normalise_base_url(bad)
    with pytest.raises(ConfigError, match="CA bundle"):
        PccsClient("https://h", ca_bundle="/nonexistent/ca.pem")


def test_issuer_chain_decoding_keeps_plus_signs() -> None:
    chain = _collateral(CASES["tdx-v4-phala-1"]).tcb_info_issuer_chain
    assert b"+" in chain  # base64 of real certificates: unquote_plus would corrupt it
    assert decode_issuer_chain(quote(chain.decode(), safe=""), "t") == chain
    # Intel-style encoding that leaves '+' unescaped must decode the same way.
    assert decode_issuer_chain(quote(chain.decode(), safe="+/="), "t") == chain
    for bad in ("not%20a%20chain", "%ff%fe", "caf\u00e9"):
        with pytest.raises(CollateralMalformed):
            decode_issuer_chain(bad, "t")
    one_cert = chain[: chain.index(b"-----END CERTIFICATE-----") + 25].decode()
    with pytest.raises(CollateralMalformed, match="signing certificate and the root"):
        decode_issuer_chain(quote(one_cert, safe=""), "t")


def test_crl_encodings() -> None:
    der = _collateral(CASES["sgx-v3-phala-1"]).root_ca_crl
    pem = x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM)
    assert crl_to_der(der, "d") == der
    assert crl_to_der(der.hex().encode() + b"\n", "h") == der
    assert crl_to_der(pem, "p") == der
    for bad in (
        b"nonsense",
        b"0\x03\x01\x02\x03",
        b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    ):
        with pytest.raises(CollateralMalformed):
            crl_to_der(bad, "x")


def test_unknown_fmspc_is_unavailable_with_path_and_status(serve: Callable[..., str]) -> None:
    url = serve(_collateral(CASES["tdx-v4-phala-1"]))
    with PccsClient(url, timeout=5) as client, pytest.raises(CollateralUnavailable) as err:
        client.get("tdx", bytes.fromhex("00606A000000"), "platform")
    assert "/tdx/certification/v4/tcb" in err.value.message and "404" in err.value.message


def test_bad_lookup_keys_are_refused_before_any_io() -> None:
    with PccsClient("http://127.0.0.1:9", timeout=1) as client:
        for args in (("sev", b"\0" * 6, "platform"), ("tdx", b"\0" * 5, "platform"), ("tdx", b"\0" * 6, "x")):
            with pytest.raises(CollateralUnavailable):
                client.get(*args)


# --- a PCCS that misbehaves -------------------------------------------------------------------------------


class _Scripted:
    """A raw HTTP server whose handler is a test function (to serve what no real PCCS would)."""

    def __init__(self, handle: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer.requests += 1
                handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.thread.join()
        self.httpd.server_close()


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[BaseHTTPRequestHandler], None]], _Scripted]]:
    servers: list[_Scripted] = []

    def start(handle: Callable[[BaseHTTPRequestHandler], None]) -> _Scripted:
        s = _Scripted(handle)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def _reply(
    h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    h.send_response(status)
    h.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def test_pccs_down_is_unavailable_quickly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=pccs_client.__name__)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    timeout = 2.0
    start = time.monotonic()
    with (
        PccsClient(f"http://127.0.0.1:{port}", timeout=timeout, retries=2) as client,
        pytest.raises(CollateralUnavailable) as err,
    ):
        client.get("tdx", bytes(6), "platform")
    assert time.monotonic() - start < timeout + 0.5
    assert "/tdx/certification/v4/tcb" in err.value.message and "3 attempt" in err.value.message
    assert caplog.text.count("retrying") == 2  # each retry is logged at DEBUG (the TLS test relies on it)


def test_slow_pccs_times_out_within_the_budget(scripted: Callable[..., _Scripted]) -> None:
    release = threading.Event()

    def slow(h: BaseHTTPRequestHandler) -> None:
        release.wait(10)  # the client has given up by now: nothing to answer

    server = scripted(slow)
    timeout = 0.5
    start = time.monotonic()
    try:
        with (
            PccsClient(server.url, timeout=timeout, retries=3) as client,
            pytest.raises(CollateralUnavailable, match="timed out") as err,
        ):
            client.get("tdx", bytes(6), "platform")
    finally:
        release.set()
    assert time.monotonic() - start < timeout + 0.5
    assert "/tdx/certification/v4/tcb" in err.value.message


def test_trickling_pccs_is_cut_off_by_the_deadline(scripted: Callable[..., _Scripted]) -> None:
    stop = threading.Event()

    def trickle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        try:
            while not stop.wait(0.05):
                h.wfile.write(b" ")
        except OSError:
            pass

    server = scripted(trickle)
    timeout = 0.5
    start = time.monotonic()
    try:
        with (
            PccsClient(server.url, timeout=timeout) as client,
            pytest.raises(CollateralUnavailable, match="timed out"),
        ):
            client.get("tdx", bytes(6), "platform")
    finally:
        stop.set()
    # Checked between reads: one read may outlast the deadline by at most the per-read timeout.
    assert time.monotonic() - start < timeout + 0.5


@pytest.mark.parametrize("declared", [True, False])
def test_oversized_body_is_cut_off(scripted: Callable[..., _Scripted], declared: bool) -> None:
    chunk = b"x" * 65536

    def huge(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        if declared:
            h.send_header("Content-Length", str(64 * len(chunk)))
            h.end_headers()
        else:
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
        try:
            for _ in range(64):
                if declared:
                    h.wfile.write(chunk)
                else:
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # the client hung up, as it should

    server = scripted(huge)
    start = time.monotonic()
    with (
        PccsClient(server.url, timeout=5, max_response_bytes=100_000) as client,
        pytest.raises(CollateralUnavailable, match="100000-byte limit"),
    ):
        client.get("tdx", bytes(6), "platform")
    assert time.monotonic() - start < 5


def test_server_errors_are_retried_and_client_errors_are_not(scripted: Callable[..., _Scripted]) -> None:
    failing = scripted(lambda h: _reply(h, 503, b"busy"))
    with (
        PccsClient(failing.url, timeout=5, retries=2) as client,
        pytest.raises(CollateralUnavailable, match="503"),
    ):
        client.get("sgx", bytes(6), "processor")
    assert failing.requests == 3

    refusing = scripted(lambda h: _reply(h, 400, b"bad"))
    with (
        PccsClient(refusing.url, timeout=5, retries=2) as client,
        pytest.raises(CollateralUnavailable, match="400"),
    ):
        client.get("sgx", bytes(6), "processor")
    assert refusing.requests == 1


def test_transient_failure_then_success(scripted: Callable[..., _Scripted]) -> None:
    c = _collateral(CASES["sgx-v3-phala-1"])
    real = PccsServer(StaticCatalog([c]))
    real.start()
    try:

        def flaky(h: BaseHTTPRequestHandler) -> None:
            if proxy.requests == 1:
                _reply(h, 502, b"")
                return
            r = httpx.get(real.url + h.path)
            _reply(
                h,
                r.status_code,
                r.content,
                {k: v for k, v in r.headers.items() if "issuer-chain" in k.lower()},
            )

        proxy = scripted(flaky)
        with PccsClient(proxy.url, timeout=5, retries=1) as client:
            assert client.get("sgx", bytes.fromhex("00A067110000"), "processor") == c
        assert proxy.requests == 5
    finally:
        real.stop()


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b"not json", {"TCB-Info-Issuer-Chain": "x"}, "issuer chain"),
        (b"not json", None, "lacks the TCB-Info-Issuer-Chain header"),
        (b'{"tcbInfo":{}}', "chain", "lacks top-level key 'signature'"),
        (b"<html>", "chain", "not valid UTF-8 JSON"),
    ],
)
def test_malformed_answers(
    scripted: Callable[..., _Scripted], body: bytes, headers: dict[str, str] | str | None, message: str
) -> None:
    if headers == "chain":
        chain = _collateral(CASES["sgx-v3-phala-1"]).tcb_info_issuer_chain.decode()
        headers = {"SGX-TCB-Info-Issuer-Chain": quote(chain, safe="")}  # the v3 header name is accepted too
    assert not isinstance(headers, str)
    server = scripted(lambda h: _reply(h, 200, body, headers))
    with (
        PccsClient(server.url, timeout=5) as client,
        pytest.raises(CollateralMalformed, match=message) as err,
    ):
        client.get("sgx", bytes(6), "processor")
    assert "GET /sgx/certification/v4/tcb" in err.value.message


def test_compressed_bodies_are_refused(scripted: Callable[..., _Scripted]) -> None:
    server = scripted(lambda h: _reply(h, 200, b"\x1f\x8b", {"Content-Encoding": "gzip"}))
    with PccsClient(server.url, timeout=5) as client, pytest.raises(CollateralMalformed, match="gzip"):
        client.get("sgx", bytes(6), "processor")


# --- TLS ---------------------------------------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed_localhost(tmp_path, "127.0.0.1")


def test_tls_verified_by_default_insecure_or_ca_bundle_for_self_signed(
    serve: Callable[..., str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = _self_signed(tmp_path)
    c = _collateral(CASES["sgx-v3-phala-1"])
    url = serve(c, tls_cert=cert, tls_key=key)
    assert url.startswith("https://127.0.0.1:")
    args = ("sgx", bytes.fromhex("00A067110000"), "processor")
    caplog.set_level(logging.DEBUG, logger=pccs_client.__name__)
    with (
        PccsClient(url, timeout=5) as client,
        pytest.raises(CollateralUnavailable, match="not trusted") as err,
    ):
        client.get(*args)
    assert "/sgx/certification/v4/tcb" in err.value.message
    assert "retrying" not in caplog.text  # not retried: retrying cannot fix trust
    with PccsClient(url, timeout=5, insecure=True) as client:
        assert client.get(*args) == c
    with PccsClient(url, timeout=5, ca_bundle=cert) as client:
        assert client.get(*args) == c


def test_build_source(serve: Callable[..., str]) -> None:
    case = CASES["sgx-v3-phala-1"]
    c = _collateral(case)
    args = ("sgx", bytes.fromhex("00A067110000"), "processor")
    now = float(case["verify_unix_time"])
    source = build_source(clock=lambda: now, pccs_url=serve(c), timeout=5)
    assert isinstance(source, CachingSource)
    assert source.get(*args) == c
    assert source.get(*args) == c
    assert (source.stats().hits, source.stats().misses) == (1, 1)
    from_file = build_source(clock=lambda: now, file=CORPUS / str(case["files"]["collateral"]))
    assert isinstance(from_file, FileSource) and from_file.get(*args) == c
    with pytest.raises(ConfigError):
        build_source(clock=lambda: now)
    with pytest.raises(ConfigError):
        build_source(clock=lambda: now, pccs_url="http://x", file="f")
