"""A small PCCS: the PCS v4 collateral endpoints, served from recorded or simulated collateral.

It exists so that every collateral — Intel's real documents from the test corpus and the simulator's —
travels the same HTTP path as in production: issuer chains percent-encoded in the same headers as
Intel's, signed JSON bodies rebuilt around the exact signed bytes, CRLs as DER, PEM or (root CA CRL)
hex text. A client that works against this server works against a real PCCS, and the other way round.

Why the standard library's ``ThreadingHTTPServer`` and not uvicorn: it adds nothing to the dependency
set, gives byte-exact control over bodies and headers, runs in a plain thread in tests (port 0, clean
``shutdown()``), and the load is a handful of requests per TD boot. Sockets get a timeout so a stuck
client cannot pin a thread forever.
"""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Protocol, cast
from urllib.parse import parse_qsl, quote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..collateral.cache import collateral_next_update
from ..collateral.source import FileSource
from ..dcap.collateral import Collateral, parse_enclave_identity, parse_tcb_info
from ..errors import CollateralMalformed, ConfigError

log = logging.getLogger(__name__)

API = "/certification/v4"
#: Requests are tiny; anything that takes longer than this to arrive is dropped.
SOCKET_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ServedEntry:
    """One collateral as the server indexes it: which (tee, FMSPC, CA) it answers for."""

    tee: str
    fmspc: bytes
    ca: str
    collateral: Collateral


def _crl(data: bytes) -> x509.CertificateRevocationList:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def crl_ca_type(pck_crl: bytes) -> str:
    """ "platform" or "processor", from the issuer of a PCK CRL (the Intel CA that signed it)."""
    try:
        issuer = _crl(pck_crl).issuer
    except ValueError as e:
        raise CollateralMalformed(f"PCK CRL cannot be parsed: {e}") from e
    names = issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else ""
    if "Platform CA" in cn:
        return "platform"
    if "Processor CA" in cn:
        return "processor"
    raise CollateralMalformed(f"PCK CRL issuer {cn!r} is neither a Platform nor a Processor CA")


def describe(collateral: Collateral) -> ServedEntry:
    """Derive what a recorded collateral is for: tee from the tcbInfo id, FMSPC from its content,
    CA type from the PCK CRL issuer."""
    info = parse_tcb_info(collateral.tcb_info)
    return ServedEntry(info.id.lower(), info.fmspc, crl_ca_type(collateral.pck_crl), collateral)


class Catalog(Protocol):
    """What the server serves right now (re-read on every request, so it may change over time)."""

    def entries(self) -> Sequence[ServedEntry]: ...


class StaticCatalog:
    """Fixed collateral, e.g. a corpus case or a bundle written by ``collateral fetch``."""

    def __init__(self, collaterals: Iterable[Collateral]) -> None:
        entries = [describe(c) for c in collaterals]
        seen: set[tuple[str, bytes]] = set()
        for e in entries:
            if (e.tee, e.fmspc) in seen:
                raise ConfigError(f"two collaterals for {e.tee} FMSPC {e.fmspc.hex().upper()}")
            seen.add((e.tee, e.fmspc))
        if not entries:
            raise ConfigError("no collateral to serve")
        self._entries = tuple(entries)

    @classmethod
    def from_file(cls, path: str | Path) -> StaticCatalog:
        source = FileSource(path)
        if source.single is not None:
            return cls([source.single])
        return cls(source.entries.values())

    def entries(self) -> Sequence[ServedEntry]:
        return self._entries


class CollateralFactory(Protocol):
    """The simulated platform's side: fresh collateral for a TEE type, valid at ``now``."""

    def collateral(self, tee: str, now: int) -> Collateral: ...


class RegeneratingCatalog:
    """Collateral produced on demand and replaced before it expires.

    A long-running demo must keep verifying: each collateral is regenerated once 90 % of its validity
    window (from generation to its earliest ``nextUpdate``) has passed.
    """

    def __init__(
        self, factory: CollateralFactory, clock: Callable[[], float], tees: Sequence[str] = ("sgx", "tdx")
    ) -> None:
        self._factory = factory
        self._clock = clock
        self._tees = tuple(tees)
        self._lock = threading.Lock()
        self._current: dict[str, tuple[ServedEntry, float]] = {}

    def entries(self) -> Sequence[ServedEntry]:
        now = self._clock()
        out = []
        with self._lock:
            for tee in self._tees:
                cached = self._current.get(tee)
                if cached is None or now >= cached[1]:
                    collateral = self._factory.collateral(tee, int(now))
                    expires = collateral_next_update(collateral)
                    refresh_at = now + 0.9 * max(0.0, expires - now)
                    cached = (describe(collateral), refresh_at)
                    self._current[tee] = cached
                    log.info("generated %s collateral, valid until %d", tee, expires)
                out.append(cached[0])
        return out


def _chain_header(pem: bytes) -> str:
    """Percent-encode a PEM chain the way Intel PCS does (everything but unreserved characters)."""
    return quote(pem.decode("ascii"), safe="")


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    content_type: str
    headers: Mapping[str, str]


def _error(status: int, message: str) -> _Reply:
    return _Reply(status, message.encode() + b"\n", "text/plain; charset=utf-8", {})


def _params(query: str, allowed: set[str]) -> dict[str, str] | _Reply:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=8)
    except ValueError:
        return _error(400, "malformed query string")
    out: dict[str, str] = {}
    for k, v in pairs:
        if k not in allowed:
            return _error(400, f"unknown parameter {k!r}")
        if k in out:
            return _error(400, f"repeated parameter {k!r}")
        out[k] = v
    return out


def _update_params(params: Mapping[str, str], evaluation_number: int) -> _Reply | None:
    """PCS ``update=early|standard`` or ``tcbEvaluationDataNumber=N`` (not both)."""
    if "update" in params and "tcbEvaluationDataNumber" in params:
        return _error(400, "update and tcbEvaluationDataNumber are mutually exclusive")
    if "update" in params and params["update"] not in ("early", "standard"):
        return _error(400, "update must be early or standard")
    if "tcbEvaluationDataNumber" in params:
        n = params["tcbEvaluationDataNumber"]
        if not (n.isascii() and n.isdigit()) or len(n) > 10:
            return _error(400, "tcbEvaluationDataNumber must be a number")
        if int(n) != evaluation_number:
            return _error(404, "no collateral for that tcbEvaluationDataNumber")
    return None


def route(path: str, query: str, entries: Sequence[ServedEntry]) -> _Reply:
    """Answer one GET: pure function of the request and the current entries (easy to test)."""
    request_id = {"Request-ID": uuid.uuid4().hex}
    for tee in ("sgx", "tdx"):
        prefix = f"/{tee}{API}"
        if not path.startswith(prefix + "/"):
            continue
        endpoint = path[len(prefix) :]
        mine = [e for e in entries if e.tee == tee]
        if endpoint == "/tcb":
            params = _params(query, {"fmspc", "update", "tcbEvaluationDataNumber"})
            if isinstance(params, _Reply):
                return params
            fmspc_hex = params.get("fmspc", "")
            if len(fmspc_hex) != 12 or not all(c in "0123456789abcdefABCDEF" for c in fmspc_hex):
                return _error(400, "fmspc must be 12 hex digits")
            fmspc = bytes.fromhex(fmspc_hex)
            match = next((e for e in mine if e.fmspc == fmspc), None)
            if match is None:
                return _error(404, "no TCB info for that FMSPC")
            c = match.collateral
            bad = _update_params(params, parse_tcb_info(c.tcb_info).tcb_evaluation_data_number)
            if bad is not None:
                return bad
            body = (
                b'{"tcbInfo":' + c.tcb_info + b',"signature":"' + c.tcb_info_signature.hex().encode() + b'"}'
            )
            headers = {"TCB-Info-Issuer-Chain": _chain_header(c.tcb_info_issuer_chain), **request_id}
            return _Reply(200, body, "application/json", headers)
        if endpoint == "/qe/identity":
            params = _params(query, {"update", "tcbEvaluationDataNumber"})
            if isinstance(params, _Reply):
                return params
            if not mine:
                return _error(404, f"no {tee} QE identity")
            c = mine[0].collateral
            if "tcbEvaluationDataNumber" in params or "update" in params:
                bad = _update_params(params, _identity_evaluation_number(c))
                if bad is not None:
                    return bad
            body = (
                b'{"enclaveIdentity":'
                + c.qe_identity
                + b',"signature":"'
                + c.qe_identity_signature.hex().encode()
                + b'"}'
            )
            headers = {
                "SGX-Enclave-Identity-Issuer-Chain": _chain_header(c.qe_identity_issuer_chain),
                **request_id,
            }
            return _Reply(200, body, "application/json", headers)
        if tee == "sgx" and endpoint == "/pckcrl":
            params = _params(query, {"ca", "encoding"})
            if isinstance(params, _Reply):
                return params
            ca = params.get("ca", "")
            encoding = params.get("encoding", "pem")
            if ca not in ("platform", "processor"):
                return _error(400, "ca must be platform or processor")
            if encoding not in ("pem", "der"):
                return _error(400, "encoding must be pem or der")
            match = next((e for e in entries if e.ca == ca), None)
            if match is None:
                return _error(404, f"no PCK CRL for the {ca} CA")
            crl = _crl(match.collateral.pck_crl)
            headers = {
                "SGX-PCK-CRL-Issuer-Chain": _chain_header(match.collateral.pck_crl_issuer_chain),
                **request_id,
            }
            if encoding == "der":
                return _Reply(200, crl.public_bytes(Encoding.DER), "application/pkix-crl", headers)
            return _Reply(200, crl.public_bytes(Encoding.PEM), "application/x-pem-file", headers)
        if tee == "sgx" and endpoint == "/rootcacrl":
            params = _params(query, set())
            if isinstance(params, _Reply):
                return params
            if not entries:
                return _error(404, "no root CA CRL")
            der = _crl(entries[0].collateral.root_ca_crl).public_bytes(Encoding.DER)
            return _Reply(200, der.hex().encode(), "text/plain; charset=utf-8", request_id)
    return _error(404, "unknown path")


def _identity_evaluation_number(c: Collateral) -> int:
    return parse_enclave_identity(c.qe_identity).tcb_evaluation_data_number


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    catalog: Catalog

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up or fails the TLS handshake is routine: one log line, no traceback."""
        error = sys.exc_info()[1]
        log.info("connection from %s ended: %s", client_address, type(error).__name__ if error else "error")


class _Handler(BaseHTTPRequestHandler):
    server_version = "sealing-key-provider-pccs"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes; without NODELAY, delayed ACKs add ~40 ms each.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        try:
            entries = cast(_HttpServer, self.server).catalog.entries()
            reply = route(parts.path, parts.query, entries)
        except Exception:
            log.exception("PCCS simulator failed to answer %s", parts.path)
            reply = _error(500, "internal error")
        self._send(reply)

    def do_HEAD(self) -> None:
        self.do_GET()  # _send() leaves the body out for HEAD

    def _not_allowed(self) -> None:
        self._send(_error(405, "only GET is supported"))

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

    def log_message(self, format: str, *args: object) -> None:
        # The request line holds only public parameters (FMSPC, CA type); bodies are never logged.
        log.info("%s %s", self.address_string(), format % args)


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8081`` for IPv6) into a (host, port) pair."""
    host, sep, port = listen.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or len(port) > 5 or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen must be HOST:PORT, got {listen!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


class PccsServer:
    """The HTTP(S) server around a :class:`Catalog`; start/stop it or use it as a context manager."""

    def __init__(
        self,
        catalog: Catalog,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_Server", (_HttpServer,), {"address_family": family})
        self._httpd: _HttpServer = server_class((host, port), _Handler)
        self._httpd.catalog = catalog
        self.scheme = "http"
        if tls_cert is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls_cert), None if tls_key is None else str(tls_key))
            # Handshake in the per-connection thread, not in the accept loop.
            self._httpd.socket = ctx.wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
            self.scheme = "https"
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        addr = self._httpd.server_address
        return str(addr[0]), int(addr[1])

    @property
    def url(self) -> str:
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{shown}:{port}"

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="pccs-sim", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, wait for the loop to end, close the socket. Idempotent."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> PccsServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def serve_until_signalled(self, on_ready: Callable[[], None] | None = None) -> None:
        """Run until SIGTERM or SIGINT, then shut down cleanly (main thread only).

        ``on_ready`` runs once the handlers are installed and the server is serving, so whoever waits
        for it (a script reading the URL) can signal us without racing the handler installation.
        """
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d received, shutting down", signum)
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            log.info("PCCS simulator listening on %s", self.url)
            if on_ready is not None:
                on_ready()
            while not stop.wait(1.0):
                pass
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
