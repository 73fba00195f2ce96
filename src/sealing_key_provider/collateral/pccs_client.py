"""Fetch collateral from a PCCS or Intel PCS over the v4 HTTP API.

Why it looks the way it does:

- One deadline per :meth:`PccsClient.get`: the provider answers a TD within bounded time, so the four
  documents, every retry and every backoff share ``timeout`` seconds. Each HTTP attempt only gets the
  budget that is left, and the deadline is checked between body reads; one blocking read waits at most
  the budget left when its attempt began, so even a server trickling bytes is cut off in bounded time.
- Retries only where they can help: connection errors, transport errors and 5xx, a few times with a
  small backoff. A 4xx (unknown FMSPC, bad parameter) is an answer, not an outage.
- Bodies are read as a stream and abandoned as soon as they pass ``max_response_bytes``; compressed
  bodies are refused (we ask for ``identity``), so the cap is on what we hold, not on what was sent.
- Signed JSON values are cut out of the served bytes (:mod:`.rawjson`), never re-serialised.
- Every failure is :class:`CollateralUnavailable` (could not get an answer) or
  :class:`CollateralMalformed` (got an answer we refuse), naming the URL path and the reason. Messages
  carry no query strings beyond the FMSPC and no response bodies.
"""

from __future__ import annotations

import binascii
import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..dcap.collateral import Collateral
from ..errors import CollateralMalformed, CollateralUnavailable, ConfigError
from .rawjson import split_signed_document
from .source import check_key

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 2
#: TDX TCB info is ~10 KB and PCK CRLs a few KB today; a generous cap that still bounds memory.
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024
_BACKOFF_BASE = 0.1
_BACKOFF_MAX = 1.0

TCB_INFO_CHAIN_HEADERS = ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain")
QE_IDENTITY_CHAIN_HEADERS = ("SGX-Enclave-Identity-Issuer-Chain", "Enclave-Identity-Issuer-Chain")
PCK_CRL_CHAIN_HEADERS = ("SGX-PCK-CRL-Issuer-Chain",)

#: Suffixes users copy from QCNL configs (``pccs_url``); the client adds the API path itself.
_API_SUFFIXES = ("/sgx/certification/v4", "/tdx/certification/v4", "/sgx/certification/v3")


def tls_setting(url: str, verify: ssl.SSLContext | bool | str) -> ssl.SSLContext | bool | str:
    """httpx's ``verify`` for a client of ``url``: unchanged for ``https://``; for ``http://``, where
    TLS is never used (redirects are not followed), a context that trusts no CA instead of loading the
    CA bundle. It spares each plain-HTTP client the 20-40 ms of reading the bundle (``get-key`` starts
    two), and should TLS ever be asked of it, it fails closed.
    """
    if verify is True and urlsplit(url).scheme == "http":
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return verify


def normalise_base_url(url: str) -> str:
    """``https://host:8081`` from that or from a QCNL-style ``https://host:8081/sgx/certification/v4/``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"PCCS URL must be http(s)://host[:port], got {url!r}")
    if parts.query or parts.fragment:
        raise ConfigError("PCCS URL must not carry a query or fragment")
    path = parts.path.rstrip("/")
    for suffix in _API_SUFFIXES:
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return f"{parts.scheme}://{parts.netloc}{path}"


def decode_issuer_chain(value: str, what: str) -> bytes:
    """Percent-decode an issuer-chain header into PEM and check it holds certificates.

    ``unquote`` and not ``unquote_plus``: base64 uses '+', which must survive.
    """
    try:
        pem = unquote(value, errors="strict").encode("ascii", "strict")
    except UnicodeError as e:
        raise CollateralMalformed(f"{what}: issuer chain header is not percent-encoded ASCII PEM") from e
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise CollateralMalformed(f"{what}: issuer chain header holds no PEM certificate")
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise CollateralMalformed(f"{what}: issuer chain header is not a PEM certificate chain: {e}") from e
    if len(certs) < 2:
        raise CollateralMalformed(f"{what}: issuer chain must hold the signing certificate and the root")
    return pem


def crl_to_der(body: bytes, what: str) -> bytes:
    """A CRL as DER, whether served as DER, PEM, or hex text of DER (PCCS ``rootcacrl``, API 3.0)."""
    data = body.strip()
    if data.startswith(b"-----BEGIN"):
        try:
            crl = x509.load_pem_x509_crl(data)
        except ValueError as e:
            raise CollateralMalformed(f"{what}: PEM body is not a CRL: {e}") from e
        return crl.public_bytes(Encoding.DER)
    if data[:1] != b"\x30":
        try:
            data = binascii.unhexlify(data)
        except (binascii.Error, ValueError) as e:
            raise CollateralMalformed(f"{what}: body is neither DER, PEM nor hex of a CRL") from e
    else:
        data = body  # DER: keep every byte as served
    try:
        x509.load_der_x509_crl(data)
    except ValueError as e:
        raise CollateralMalformed(f"{what}: body is not a DER CRL: {e}") from e
    return data


@dataclass(frozen=True, slots=True)
class _Response:
    path: str
    status: int
    headers: httpx.Headers
    body: bytes


class _Deadline:
    """Wall-clock budget shared by all requests of one ``get``."""

    __slots__ = ("end", "total")

    def __init__(self, total: float) -> None:
        self.total = total
        self.end = time.monotonic() + total

    def remaining(self) -> float:
        return self.end - time.monotonic()


class PccsClient:
    """A :class:`~.source.CollateralSource` over the PCS v4 API of a PCCS or of Intel PCS.

    Thread-safe: one pooled :class:`httpx.Client` serves concurrent ``get`` calls. Close it (or use it as
    a context manager) to release connections. Only explicit settings count: proxy variables and netrc
    in the environment are ignored, so the process environment cannot redirect collateral fetches.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        ca_bundle: str | Path | None = None,
        insecure: bool = False,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if timeout <= 0:
            raise ConfigError("PCCS client: timeout must be positive")
        if retries < 0:
            raise ConfigError("PCCS client: retries must not be negative")
        if max_response_bytes <= 0:
            raise ConfigError("PCCS client: max_response_bytes must be positive")
        self.base_url = normalise_base_url(base_url)
        self.timeout = timeout
        self.retries = retries
        self.max_response_bytes = max_response_bytes
        verify: ssl.SSLContext | bool
        if insecure:
            # A PCCS with a self-signed certificate: collateral is signed by Intel, so TLS here only
            # protects availability and privacy of the FMSPC, not the integrity of what we verify.
            log.warning("TLS certificate verification is disabled for %s", self.base_url)
            verify = False
        elif ca_bundle is not None:
            try:
                verify = ssl.create_default_context(cafile=str(ca_bundle))
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"cannot load the PCCS CA bundle {ca_bundle}: {e}") from e
        else:
            verify = True
        self._client = httpx.Client(
            verify=tls_setting(self.base_url, verify),
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            headers={"Accept-Encoding": "identity", "User-Agent": "sealing-key-provider"},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PccsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- transport ---------------------------------------------------------------------------

    def _attempt(self, path: str, params: dict[str, str], deadline: _Deadline) -> _Response:
        """One HTTP GET with the remaining budget; the body is capped while it streams in."""
        budget = deadline.remaining()
        if budget <= 0:
            raise httpx.TimeoutException("deadline passed")
        url = self.base_url + path
        with self._client.stream("GET", url, params=params, timeout=httpx.Timeout(budget)) as resp:
            encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise CollateralMalformed(f"GET {path}: refused Content-Encoding {encoding!r}")
            declared = resp.headers.get("Content-Length")
            # ASCII digits of bounded length: str.isdigit() accepts "²" and int() refuses 4300+ digits.
            digits = (
                declared is not None and declared.isascii() and declared.isdigit() and len(declared) <= 18
            )
            if declared is not None and digits and int(declared) > self.max_response_bytes:
                raise CollateralUnavailable(
                    f"GET {path}: response of {declared} bytes exceeds the "
                    f"{self.max_response_bytes}-byte limit"
                )
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.iter_raw():
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise CollateralUnavailable(
                        f"GET {path}: response exceeds the {self.max_response_bytes}-byte limit"
                    )
                if deadline.remaining() <= 0:
                    raise httpx.ReadTimeout("deadline passed while reading the body")
                chunks.append(chunk)
            return _Response(path, resp.status_code, resp.headers, b"".join(chunks))

    def _fetch(self, path: str, params: dict[str, str], deadline: _Deadline) -> _Response:
        """GET with bounded retries on connection problems and 5xx; any other status is final."""
        attempt = 0
        while True:
            reason: str
            try:
                resp = self._attempt(path, params, deadline)
            except httpx.TimeoutException as e:
                raise CollateralUnavailable(f"GET {path}: timed out (budget {deadline.total:g} s)") from e
            except httpx.TransportError as e:
                reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                if "CERTIFICATE_VERIFY_FAILED" in reason:
                    # Retrying cannot help; say what can.
                    raise CollateralUnavailable(
                        f"GET {path}: TLS certificate of the PCCS not trusted "
                        "(give its CA bundle, or use insecure mode for a self-signed PCCS)"
                    ) from e
            else:
                if resp.status == 200:
                    return resp
                if resp.status < 500:
                    what = "not found" if resp.status == 404 else "refused"
                    raise CollateralUnavailable(f"GET {path}: HTTP {resp.status} ({what})")
                reason = f"HTTP {resp.status}"
            attempt += 1
            delay = min(_BACKOFF_MAX, _BACKOFF_BASE * (2 ** (attempt - 1)))
            if attempt > self.retries or deadline.remaining() <= delay:
                raise CollateralUnavailable(f"GET {path}: {reason} (after {attempt} attempt(s))")
            log.info("GET %s failed (%s); retrying in %.1f s", path, reason, delay)
            time.sleep(delay)

    @staticmethod
    def _header(resp: _Response, names: tuple[str, ...]) -> str:
        for name in names:
            value: str | None = resp.headers.get(name)
            if value:
                return value
        raise CollateralMalformed(f"GET {resp.path}: response lacks the {names[0]} header")

    # --- documents ---------------------------------------------------------------------------

    def fetch_tcb_info(self, tee: str, fmspc: bytes, deadline: _Deadline) -> tuple[bytes, bytes, bytes]:
        """(signed tcbInfo bytes, signature, issuer chain PEM) for one FMSPC."""
        path = f"/{tee}/certification/v4/tcb"
        resp = self._fetch(path, {"fmspc": fmspc.hex().upper()}, deadline)
        chain = decode_issuer_chain(self._header(resp, TCB_INFO_CHAIN_HEADERS), f"GET {path}")
        try:
            raw, sig = split_signed_document(resp.body, "tcbInfo")
        except CollateralMalformed as e:
            raise CollateralMalformed(f"GET {path}: {e.message}") from e
        return raw, sig, chain

    def fetch_qe_identity(self, tee: str, deadline: _Deadline) -> tuple[bytes, bytes, bytes]:
        """(signed enclaveIdentity bytes, signature, issuer chain PEM) of the (TD) QE."""
        path = f"/{tee}/certification/v4/qe/identity"
        resp = self._fetch(path, {}, deadline)
        chain = decode_issuer_chain(self._header(resp, QE_IDENTITY_CHAIN_HEADERS), f"GET {path}")
        try:
            raw, sig = split_signed_document(resp.body, "enclaveIdentity")
        except CollateralMalformed as e:
            raise CollateralMalformed(f"GET {path}: {e.message}") from e
        return raw, sig, chain

    def fetch_pck_crl(self, ca: str, deadline: _Deadline) -> tuple[bytes, bytes]:
        """(PCK CRL DER, issuer chain PEM) of the Platform or Processor CA."""
        path = "/sgx/certification/v4/pckcrl"
        resp = self._fetch(path, {"ca": ca, "encoding": "der"}, deadline)
        chain = decode_issuer_chain(self._header(resp, PCK_CRL_CHAIN_HEADERS), f"GET {path}")
        return crl_to_der(resp.body, f"GET {path}"), chain

    def fetch_root_ca_crl(self, deadline: _Deadline) -> bytes:
        """Root CA CRL DER (PCCS serves hex text of the DER; raw DER and PEM are accepted too)."""
        path = "/sgx/certification/v4/rootcacrl"
        resp = self._fetch(path, {}, deadline)
        return crl_to_der(resp.body, f"GET {path}")

    def get(self, tee: str, fmspc: bytes, ca: str) -> Collateral:
        check_key(tee, fmspc, ca)
        deadline = _Deadline(self.timeout)
        tcb_info, tcb_sig, tcb_chain = self.fetch_tcb_info(tee, fmspc, deadline)
        qe_identity, qe_sig, qe_chain = self.fetch_qe_identity(tee, deadline)
        pck_crl, pck_chain = self.fetch_pck_crl(ca, deadline)
        root_crl = self.fetch_root_ca_crl(deadline)
        return Collateral(
            pck_crl_issuer_chain=pck_chain,
            root_ca_crl=root_crl,
            pck_crl=pck_crl,
            tcb_info_issuer_chain=tcb_chain,
            tcb_info=tcb_info,
            tcb_info_signature=tcb_sig,
            qe_identity_issuer_chain=qe_chain,
            qe_identity=qe_identity,
            qe_identity_signature=qe_sig,
        )
