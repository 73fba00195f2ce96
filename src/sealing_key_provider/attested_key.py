"""The provider's attested keys: made in the enclave, quoted once, renewed on a schedule.

:class:`AttestedKeys` holds the current :class:`Attestation` (an Ed25519 signing key, optionally an
RA-TLS identity, the statement binding both, and the quote over it) and replaces it:

- on schedule: once half of ``lifetime`` has passed, so the next one exists long before the current
  one expires (clients that verified the current one keep it until it expires; it stays valid);
- when the current quote would no longer verify under fresh collateral (``check`` raises: its PCK
  certificate was revoked, its TCB level is no longer listed, ...); a renewal whose new quote fails the
  same check is a failed renewal (backoff), not a new current attestation, so a check that a new quote
  cannot pass does not re-attest on every tick;
- never on the request path: :meth:`maintain` is called by the server's maintenance task.

A failed renewal keeps the current attestation, retries with exponential backoff (1 s doubling to
``MAX_BACKOFF``), and makes :meth:`health` fail once less than a quarter of the lifetime is left, so
orchestration stops sending traffic before anything expires. An expired attestation never signs:
:meth:`sign` raises :class:`PlatformError` (503) instead.

Time is a parameter (``now``) everywhere; the private keys never leave this object (no accessor
returns them, repr shows none).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .attestation import AttestationDocument, AttestationStatement, signed_message
from .errors import PlatformError, ProviderError, RestartRequired

log = logging.getLogger("sealing_key_provider.attestation")

DEFAULT_LIFETIME: Final = 24 * 3600.0
#: Longest wait between two failed renewal attempts (seconds).
MAX_BACKOFF: Final = 300.0
#: Seconds of clock skew a verifier may have: the statement starts this much before its creation.
NOT_BEFORE_SKEW: Final = 300

QuoteFn = Callable[[bytes], bytes]


class TlsIdentity(Protocol):
    """An RA-TLS certificate and its key, as :mod:`.ratls` makes them (kept opaque here)."""

    @property
    def spki_sha256(self) -> bytes: ...


TlsFactory = Callable[[QuoteFn, int, int], TlsIdentity]
Check = Callable[[bytes, float], None]


@dataclass(frozen=True, slots=True, repr=False)
class Attestation:
    """One attestation: the published document, its signing key and (with HTTPS) its RA-TLS identity."""

    document: AttestationDocument
    issued_at: float
    _signing_key: Ed25519PrivateKey = field(repr=False)
    tls: TlsIdentity | None = None

    @property
    def attestation_id(self) -> str:
        return self.document.attestation_id

    @property
    def statement(self) -> AttestationStatement:
        return self.document.statement

    def __repr__(self) -> str:
        s = self.statement
        return f"Attestation(id={s.attestation_id}, not_before={s.not_before}, not_after={s.not_after})"


class AttestedKeys:
    """The current attestation and its renewal (thread-safe)."""

    def __init__(
        self,
        quote: QuoteFn,
        policy_digest: bytes,
        *,
        lifetime: float = DEFAULT_LIFETIME,
        tls_factory: TlsFactory | None = None,
        check: Check | None = None,
    ) -> None:
        if lifetime <= 0:
            raise ValueError("attestation lifetime must be positive")
        self._quote = quote
        self._policy_digest = policy_digest
        self.lifetime = lifetime
        self._tls_factory = tls_factory
        self._check = check
        self._lock = threading.Lock()
        self._current: Attestation | None = None
        self._failures = 0
        self._next_try = 0.0
        self._last_error: ProviderError | None = None
        self._listeners: list[Callable[[Attestation], None]] = []

    # --- making one -----------------------------------------------------------------------------------

    def attest(self, now: float, *, checked: bool = False) -> Attestation:
        """Make a new attestation now (keys, RA-TLS certificate, quote) and make it current; with
        ``checked``, only if its quote passes ``check`` (which raises otherwise)."""
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        not_before = max(0, int(now) - NOT_BEFORE_SKEW)
        not_after = int(now + self.lifetime)
        tls = self._tls_factory(self._quote, not_before, not_after) if self._tls_factory else None
        statement = AttestationStatement(
            signing_key=public,
            tls_spki_sha256=tls.spki_sha256 if tls is not None else b"",
            not_before=not_before,
            not_after=not_after,
            policy_digest=self._policy_digest,
        )
        quote = self._quote(statement.report_data())
        if checked and self._check is not None:
            self._check(quote, now)
        attestation = Attestation(AttestationDocument(statement, quote), now, key, tls)
        with self._lock:
            self._current = attestation
            self._failures = 0
            self._last_error = None
            listeners = list(self._listeners)
        log.info(
            "attested provider key id=%s not_after=%d tls=%s",
            attestation.attestation_id,
            not_after,
            "yes" if tls is not None else "no",
        )
        for listener in listeners:
            listener(attestation)
        return attestation

    def on_change(self, listener: Callable[[Attestation], None]) -> None:
        """Call ``listener`` with every new attestation (the HTTPS listener swaps its certificate)."""
        with self._lock:
            self._listeners.append(listener)

    # --- using it -------------------------------------------------------------------------------------

    def current(self, now: float) -> Attestation:
        """The attestation to publish and sign with; :class:`PlatformError` if there is no valid one."""
        attestation = self._current
        if attestation is None:
            raise PlatformError("the provider has no attestation yet")
        if not attestation.statement.valid_at(now):
            raise PlatformError(
                f"the provider's attestation {attestation.attestation_id} has expired and renewing it "
                "keeps failing; no answer is signed with an expired key"
            )
        return attestation

    def sign(self, binding: bytes, now: float) -> tuple[str, bytes]:
        """(attestation id, Ed25519 signature over the labelled binding) with the current key."""
        attestation = self.current(now)
        message = signed_message(attestation.attestation_id, binding)
        return attestation.attestation_id, attestation._signing_key.sign(message)

    # --- keeping it fresh -----------------------------------------------------------------------------

    def due(self, now: float) -> bool:
        attestation = self._current
        return attestation is None or now >= attestation.issued_at + self.lifetime / 2

    def maintain(self, now: float) -> bool:
        """Renew if due or no longer verifying (with backoff after failures); True if renewed."""
        if now < self._next_try:
            return False
        reason = "scheduled" if self.due(now) else None
        attestation = self._current
        if reason is None and attestation is not None and self._check is not None:
            try:
                self._check(attestation.document.quote, now)
            except ProviderError as e:
                reason = f"its quote no longer verifies ({e.code})"
        if reason is None:
            return False
        try:
            self.attest(now, checked=True)
        except RestartRequired:
            raise  # Gramine refuses attestation: the server exits for its supervisor, as on requests
        except ProviderError as e:
            with self._lock:
                self._failures += 1
                self._last_error = e
                delay = min(2.0 ** (self._failures - 1), MAX_BACKOFF)
                self._next_try = now + delay
            log.warning(
                "re-attestation failed (%s) code=%s attempt=%d retry_in=%gs reason=%s",
                reason,
                e.code,
                self._failures,
                delay,
                e.message,
            )
            return False
        self._next_try = 0.0
        return True

    def health(self, now: float) -> str:
        """ "ok", or :class:`PlatformError` when renewal is failing and a quarter lifetime or less is left."""
        attestation = self.current(now)
        left = attestation.statement.not_after - now
        if left <= self.lifetime / 4:
            # Renewal is due at half the lifetime; a quarter left means it has not happened in time,
            # whether it failed (the reason is given) or never ran.
            error = self._last_error
            reason = f"keeps failing ({error.code}: {error.message})" if error else "has not happened"
            raise PlatformError(f"re-attestation {reason}; the current attestation expires in {left:.0f} s")
        return "ok"
