"""The v1 API over RA-TLS: the provider's certificate is verified during connection set-up, before a
single byte of any request is written.

TLS here is not checked against a CA (the certificate is self-signed, as Gramine makes it); it is
checked as an RA-TLS certificate: both extensions' quotes pass the full provider check
(:func:`.verify.verify_provider_quote`: DCAP, TCB policy, pinned MRENCLAVE/MRSIGNER, ISVPRODID/ISVSVN,
no DEBUG), both bind the certificate's public key (:func:`..ratls.read_ratls_certificate`), and, for
a key request, the provider's platform is the TD's (same PPID and FMSPC). The TLS handshake proves
the server holds that key, so everything that arrives on the connection comes from the attested
enclave. A certificate that fails any check closes the connection and raises its error code.

Verified certificates are remembered (by SHA-256 of their DER) until they expire, so the DCAP work is
done once per certificate, not per connection; the same-platform check is repeated every time.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..collateral.source import CollateralSource
from ..dcap import VerifiedQuote, Verifier
from ..errors import ProviderError, TransportError
from ..ratls import read_ratls_certificate
from .transport import DEFAULT_TIMEOUT, MAX_HTTP_RESPONSE, HttpTransport, decode_answer, read_bounded_answer
from .trust import ProviderTrust
from .verify import TdQuoteInfo, verify_provider_quote, verify_same_platform

#: Checks a peer certificate (DER); raises a ProviderError to refuse it.
PeerCheck = Callable[[bytes], None]


@dataclass(frozen=True, slots=True)
class VerifiedCertificate:
    """An RA-TLS certificate that passed every check but the per-request same-platform one."""

    legacy: VerifiedQuote
    tagged: VerifiedQuote
    not_after: int

    @property
    def usable_until(self) -> int:
        """The certificate's end, or the earliest expiry of the evidence its quotes were verified
        with if sooner: a verification is not kept past its collateral (a revocation in between)."""
        return min(self.not_after, self.legacy.collateral_expiry, self.tagged.collateral_expiry)


class RaTlsVerifier:
    """Verifies RA-TLS certificates against ``trust`` and remembers the ones that passed."""

    def __init__(
        self,
        trust: ProviderTrust,
        verifier: Verifier,
        collateral: CollateralSource,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._trust = trust
        self._verifier = verifier
        self._collateral = collateral
        self._clock = clock
        self._lock = threading.Lock()
        self._verified: dict[bytes, VerifiedCertificate] = {}
        #: Certificates verified in full (DCAP of both quotes), for tests and diagnostics.
        self.full_checks = 0

    def verify(self, der: bytes, td: TdQuoteInfo | None) -> VerifiedCertificate:
        now = int(self._clock())
        key = hashlib.sha256(der).digest()
        with self._lock:
            known = self._verified.get(key)
        if known is None or now >= known.usable_until:
            known = self._verify_fully(der, now)
            with self._lock:
                self._verified = {k: v for k, v in self._verified.items() if now < v.usable_until}
                self._verified[key] = known
        if td is not None:
            verify_same_platform(known.legacy, td)
            verify_same_platform(known.tagged, td)
        return known

    def _verify_fully(self, der: bytes, now: int) -> VerifiedCertificate:
        evidence = read_ratls_certificate(der, now)
        checked = []
        for what, raw in (
            ("legacy extension", evidence.legacy_quote),
            ("tagged evidence", evidence.tagged_quote),
        ):
            try:
                checked.append(
                    verify_provider_quote(
                        raw, trust=self._trust, verifier=self._verifier, collateral=self._collateral, now=now
                    )
                )
            except ProviderError as e:
                raise type(e)(f"RA-TLS certificate, {what}: {e.message}", code=e.code) from None
        legacy, tagged = checked
        if not legacy.pck.same_platform(tagged.pck) or legacy.quote.enclave_report.mrenclave != (
            tagged.quote.enclave_report.mrenclave
        ):
            raise TransportError(
                "RA-TLS certificate: its two quotes come from different enclaves or platforms"
            )
        self.full_checks += 1
        return VerifiedCertificate(legacy, tagged, evidence.not_after)


def client_context() -> ssl.SSLContext:
    """TLS 1.2+ without CA or host-name checks: the RA-TLS checks take their place (see the module)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _CheckedConnection(http.client.HTTPConnection):
    """An HTTP connection whose TLS peer certificate is checked before ``connect`` returns, i.e. before
    ``http.client`` writes the request."""

    def __init__(
        self, host: str, port: int, timeout: float, context: ssl.SSLContext, check: PeerCheck
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._context = context
        self._check = check

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        try:
            tls = self._context.wrap_socket(raw, server_hostname=None)
        except BaseException:
            raw.close()
            raise
        try:
            der = tls.getpeercert(binary_form=True)
            if not der:
                raise TransportError("the provider presented no TLS certificate")
            self._check(der)
        except BaseException:
            tls.close()
            raise
        self.sock = tls


class RaTlsTransport(HttpTransport):
    """``https://`` to the provider's RA-TLS listener; ``peer_check`` is consulted on every connection.

    Every call opens its own connection (TDs make a handful of calls per boot), so every call's peer is
    checked before its request is written. Without a ``peer_check`` no connection is made at all.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_response_bytes: int = MAX_HTTP_RESPONSE,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"an RA-TLS provider URL is https://HOST:PORT, got {url!r}")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.url = url.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or 443
        self._timeout = timeout
        self._max = max_response_bytes
        self._owned = False
        self._context = client_context()
        self._per_thread = threading.local()

    @property
    def peer_check(self) -> PeerCheck | None:
        """The check for this thread's next connections. Per thread, because a request's check closes
        over that request's own TD quote and result list: a client shared between threads must never
        run one request's connection through another's check."""
        check: PeerCheck | None = getattr(self._per_thread, "check", None)
        return check

    @peer_check.setter
    def peer_check(self, check: PeerCheck | None) -> None:
        self._per_thread.check = check

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own connection."""

    def _call(self, method: str, path: str, body: dict[str, object] | None = None) -> object:
        check = self.peer_check
        if check is None:
            raise TransportError("no RA-TLS certificate check is set; refusing to connect")
        deadline = time.monotonic() + self._timeout
        data = None if body is None else _json_bytes(body)
        headers = {"Host": f"{self._host}:{self._port}", "Connection": "close"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        connection = _CheckedConnection(self._host, self._port, self._timeout, self._context, check)
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = read_bounded_answer(
                iter(lambda: response.read(65536), b""),
                response.getheader("content-length"),
                limit=self._max,
                deadline=deadline,
                timed_out=f"provider at {self.url} timed out after {self._timeout:g} s",
            )
            status = response.status
        except TimeoutError:
            raise TransportError(f"provider at {self.url} timed out after {self._timeout:g} s") from None
        except ssl.SSLError as e:
            raise TransportError(f"TLS with the provider at {self.url} failed: {e.reason or e}") from None
        except (OSError, http.client.HTTPException) as e:
            raise TransportError(
                f"cannot talk to the provider at {self.url}: {type(e).__name__}: {e}"
            ) from None
        finally:
            connection.close()
        return decode_answer(status, raw, path)


def _json_bytes(body: dict[str, object]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
