"""The client side of the attested provider key: verify ``/v1/attestation`` once, then each signature.

An attestation is believed only after the full provider check (:func:`.verify.verify_provider_quote`:
DCAP, TCB policy, pinned identity) of its quote, the quote's report data equal to SHA-256 of the
statement it came with, the pinned policy digest (if any), and a validity that includes now. It is
then cached until it expires. An answer signed under another attestation id makes the client fetch
the current attestation once (the provider renews it on a schedule); if the id still differs, the
signature is by a key this client has not verified, and the answer is refused.
"""

from __future__ import annotations

import hmac
import threading
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..attestation import AttestationDocument, verify_signature
from ..collateral.source import CollateralSource
from ..dcap import VerifiedQuote, Verifier
from ..errors import ProviderIdentityMismatch, ResponseBindingInvalid
from .trust import ProviderTrust
from .verify import verify_provider_quote


@runtime_checkable
class AttestationSource(Protocol):
    """A transport that can fetch ``GET /v1/attestation``."""

    def attestation(self) -> AttestationDocument: ...


@dataclass(frozen=True, slots=True)
class VerifiedAttestation:
    """An attestation that passed every check, with the provider quote's verification result."""

    document: AttestationDocument
    verified: VerifiedQuote

    @property
    def attestation_id(self) -> str:
        return self.document.attestation_id

    def usable_at(self, now: int) -> bool:
        """Within the attestation's validity and before the earliest expiry of the collateral and
        certificates its quote was verified with: the provider sets its attestation's lifetime, so
        that alone must not keep a verification alive past its evidence (a revocation in between)."""
        return self.document.statement.valid_at(now) and now < self.verified.collateral_expiry


def verify_attestation(
    document: AttestationDocument,
    *,
    trust: ProviderTrust,
    verifier: Verifier,
    collateral: CollateralSource,
    now: int,
) -> VerifiedAttestation:
    """Every check of an attestation document (see the module docstring); typed errors otherwise."""
    statement = document.statement
    if not statement.valid_at(now):
        raise ProviderIdentityMismatch(
            f"the provider's attestation {statement.attestation_id} is not valid now (valid "
            f"{statement.not_before}..{statement.not_after}, now {now})"
        )
    verified = verify_provider_quote(
        document.quote, trust=trust, verifier=verifier, collateral=collateral, now=now
    )
    if not hmac.compare_digest(verified.quote.report_data, statement.report_data()):
        raise ResponseBindingInvalid("the provider's attestation quote does not bind its attested key")
    expected = trust.expected_policy_digest
    if expected is not None and not hmac.compare_digest(statement.policy_digest, expected):
        raise ProviderIdentityMismatch(
            f"provider policy digest {statement.policy_digest.hex()} is not the expected {expected.hex()}"
        )
    return VerifiedAttestation(document, verified)


class AttestationCache:
    """The verified attestation of one provider, until it expires (thread-safe)."""

    def __init__(
        self,
        source: AttestationSource,
        trust: ProviderTrust,
        verifier: Verifier,
        collateral: CollateralSource,
    ) -> None:
        self._source = source
        self._trust = trust
        self._verifier = verifier
        self._collateral = collateral
        self._lock = threading.Lock()
        self._current: VerifiedAttestation | None = None
        #: How many attestation documents were fetched (each is verified in full).
        self.fetches = 0

    def _fetch(self, now: int) -> VerifiedAttestation:
        document = self._source.attestation()
        self.fetches += 1
        verified = verify_attestation(
            document, trust=self._trust, verifier=self._verifier, collateral=self._collateral, now=now
        )
        self._current = verified
        return verified

    def current(self, now: int) -> VerifiedAttestation:
        with self._lock:
            current = self._current
            if current is not None and current.usable_at(now):
                return current
            return self._fetch(now)

    def for_answer(self, attestation_id: str, now: int) -> VerifiedAttestation:
        """The verified attestation named by an answer: cached, or fetched once more."""
        current = self.current(now)
        if current.attestation_id == attestation_id:
            return current
        with self._lock:
            current = self._fetch(now)
        if current.attestation_id != attestation_id:
            raise ProviderIdentityMismatch(
                f"the answer is signed under attestation {attestation_id[:32]!r}, which this client has not "
                f"verified (the provider's current one is {current.attestation_id})"
            )
        return current

    def check(self, attestation_id: str, signature: bytes, binding: bytes, now: int) -> VerifiedAttestation:
        """The attestation whose key signed ``binding``; raises if the signature is not its key's."""
        attestation = self.for_answer(attestation_id, now)
        verify_signature(attestation.document.statement, signature, binding)
        return attestation
