"""The TD-side SDK: get this TD's sealing key from the provider on its host, and believe it only
after checking everything the answer claims.

Usage::

    trust = ProviderTrust.from_hex(mrenclave="ab12...")
    with KeyClient.http("http://127.0.0.1:8080", trust, Verifier(), collateral, detect_quote_source()) as c:
        key = c.get_key("app/db", key_version=1)          # 32 bytes

``KeyClient.ratls("https://127.0.0.1:8443", ...)`` talks to the provider's RA-TLS listener instead
(its certificate is checked before any request is sent, :mod:`.ratls`). Over plain HTTP, answers are
signed by the provider's attested key: its attestation is fetched once, verified in full and cached
until it expires (:mod:`.attested`); ``evidence="quote"`` asks for a per-request quote instead.

Only the HTTP API v1 binds an answer to the request it answers (the TD's exact quote, the scheme, the
key name and version, the policy). The original's TCP protocol binds only the ciphertext: the host can
swap the TD's quote for a quote of another TD image on the same machine that carries this TD's public
key, and the TD receives *that* image's key, which that TD can fetch again whenever it likes. A legacy
provider is therefore refused unless the caller opts in (``allow_unbound_legacy=True``), and then a
warning names the risk; providers serving legacy clients must restrict ``policy.allowed_mrtd``.

The scheme is always sent (:data:`~..keys.DEFAULT_SCHEME` when none is named) and the answer must
name the same one: otherwise the host could rewrite the request to another scheme, which the provider
would honour and bind honestly, and the TD would get a different key than before.

Per request: a fresh X25519 key pair (a key pair is never reused, so a leaked one exposes one answer);
``report_data = public key || SHA-256(freshness token)`` (or 32 zero bytes); the TD quote from the
quote source; the request; then every check of :mod:`.verify`; only then the sealed box is opened.

Secrets in memory, honestly: the request's X25519 private key is born in a buffer the SDK owns and is
zeroed when the request ends, together with the one ``bytes`` copy libsodium needs (see
:mod:`.secret`); libsodium zeroes its own intermediates. The decrypted key is returned as ``bytes``,
which the caller owns. The interpreter may still have made copies the SDK cannot reach, so the SDK
never logs, formats or repr()s a secret. A TD that must guarantee erasure has to do this step in a
language that controls memory.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Final

import nacl.exceptions
import nacl.public

from ..collateral.source import CollateralSource
from ..dcap import TcbStatus, VerifiedQuote, Verifier
from ..errors import DecryptionFailed, LegacyNotAllowed, ProviderError, ResponseBindingInvalid
from ..freshness import token_binding
from ..keys import (
    DEFAULT_KEY_NAME,
    DEFAULT_KEY_VERSION,
    DEFAULT_SCHEME,
    DERIVED_KEY_SIZE,
    LEGACY_SCHEME,
    SEALED_BOX_OVERHEAD,
    validate_key_name,
    validate_key_version,
)
from ..wire import EVIDENCE_QUOTE, EVIDENCE_RATLS, EVIDENCE_SIGNATURE, REQUESTABLE_EVIDENCE
from .attested import AttestationCache, AttestationSource
from .errors import TdQuoteInvalid
from .quote_base import QuoteSource
from .ratls import RaTlsTransport, RaTlsVerifier, VerifiedCertificate
from .secret import EphemeralKeyPair
from .transport import (
    DEFAULT_TIMEOUT,
    PROTOCOL_LEGACY,
    HttpTransport,
    LegacyTransport,
    ProviderAnswer,
    Transport,
)
from .trust import ProviderTrust
from .verify import (
    TdQuoteInfo,
    expected_binding_v1,
    inspect_td_quote,
    verify_binding_legacy,
    verify_binding_v1,
    verify_provider_quote,
    verify_same_platform,
)

log = logging.getLogger("sealing_key_provider.client")

#: 32-byte key + sealed-box overhead (ephemeral public key and Poly1305 tag).
ENCRYPTED_KEY_SIZE: Final = DERIVED_KEY_SIZE + SEALED_BOX_OVERHEAD

#: What an explicit legacy opt-in is told (logged at WARNING; ``get-key --legacy`` shows it on stderr).
LEGACY_RISK_WARNING: Final = (
    "legacy protocol: the provider's answer is not bound to this TD's quote: the host can swap the "
    "quote for one of another TD image on this machine that carries this TD's public key, and this TD "
    "then receives that image's key (which that TD can also fetch). Use it only with a provider whose "
    "policy.allowed_mrtd lists your own images, or use the HTTP API v1"
)


@dataclass(frozen=True, slots=True)
class ProviderKey:
    """A key that passed every check, and who released it under which terms."""

    key: bytes = field(repr=False)
    scheme: str
    key_name: str
    key_version: int
    provider_mrenclave: bytes
    provider_mrsigner: bytes
    provider_ppid: bytes
    provider_tcb_status: TcbStatus
    provider_advisory_ids: tuple[str, ...]
    #: What the provider applied to this TD (v1 only; None on the legacy protocol): a TCB status as
    #: the provider sent it (its wire string; "Unverified" from a development-mode provider).
    td_tcb_status: str | None
    policy_digest: bytes | None


class KeyClient:
    """Requests keys over one transport and checks every answer against ``trust``.

    ``verifier`` carries the trust anchor (the pinned Intel root by default); ``collateral`` supplies
    the provider platform's SGX collateral (a PCCS client, a cache, or a file); ``clock`` gives Unix
    time for certificate and collateral validity. A client keeps no per-request state (each request's
    key pair and quote are local to the call), so it may be shared between threads as far as its
    transport and quote source allow: httpx clients and the project's quote sources do.
    """

    def __init__(
        self,
        transport: Transport,
        trust: ProviderTrust,
        verifier: Verifier,
        collateral: CollateralSource,
        quote_source: QuoteSource,
        *,
        clock: Callable[[], float] = time.time,
        evidence: str | None = None,
        allow_unbound_legacy: bool = False,
    ) -> None:
        if evidence not in (None, *REQUESTABLE_EVIDENCE):
            raise ValueError(f"evidence must be one of {', '.join(REQUESTABLE_EVIDENCE)}")
        if transport.protocol == PROTOCOL_LEGACY:
            if not allow_unbound_legacy:
                raise LegacyNotAllowed(
                    "refusing the legacy protocol: its answers are not bound to the request, so the host "
                    "can hand this TD another TD's key; use the HTTP API v1 (http://HOST:PORT), or opt in "
                    "with allow_unbound_legacy=True (get-key --legacy) for a provider whose "
                    "policy.allowed_mrtd lists only your images"
                )
            log.warning("%s", LEGACY_RISK_WARNING)
        self.transport = transport
        self.trust = trust
        self._verifier = verifier
        self._collateral = collateral
        self._quote_source = quote_source
        self._clock = clock
        #: ``"quote"`` asks the provider for a per-request SGX quote instead of its attested signature.
        self.evidence = evidence
        self.attestations = (
            AttestationCache(transport, trust, verifier, collateral)
            if isinstance(transport, AttestationSource)
            else None
        )
        self.ratls_verifier = (
            RaTlsVerifier(trust, verifier, collateral, clock=clock)
            if isinstance(transport, RaTlsTransport)
            else None
        )

    @classmethod
    def http(
        cls,
        url: str,
        trust: ProviderTrust,
        verifier: Verifier,
        collateral: CollateralSource,
        quote_source: QuoteSource,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = DEFAULT_TIMEOUT,
        verify_tls: bool | str = True,
        evidence: str | None = None,
    ) -> KeyClient:
        """A client of the HTTP API v1 at ``url`` (``http://host:port``, or ``https://...`` through an
        ordinary TLS front; for the provider's own RA-TLS listener use :meth:`ratls`). ``evidence="quote"``
        asks for a per-request quote instead of the attested key's signature."""
        return cls(
            HttpTransport(url, timeout=timeout, verify=verify_tls),
            trust,
            verifier,
            collateral,
            quote_source,
            clock=clock,
            evidence=evidence,
        )

    @classmethod
    def ratls(
        cls,
        url: str,
        trust: ProviderTrust,
        verifier: Verifier,
        collateral: CollateralSource,
        quote_source: QuoteSource,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = DEFAULT_TIMEOUT,
        evidence: str | None = None,
    ) -> KeyClient:
        """A client of the provider's RA-TLS listener at ``https://host:port`` (see :mod:`.ratls`)."""
        return cls(
            RaTlsTransport(url, timeout=timeout),
            trust,
            verifier,
            collateral,
            quote_source,
            clock=clock,
            evidence=evidence,
        )

    @classmethod
    def legacy(
        cls,
        address: str,
        trust: ProviderTrust,
        verifier: Verifier,
        collateral: CollateralSource,
        quote_source: QuoteSource,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = DEFAULT_TIMEOUT,
        allow_unbound_legacy: bool = False,
    ) -> KeyClient:
        """A client of the original's TCP protocol at ``host:port`` (default key, legacy-sha256 only).

        Refused (:class:`LegacyNotAllowed`) unless ``allow_unbound_legacy``: see the module docstring."""
        return cls(
            LegacyTransport(address, timeout=timeout),
            trust,
            verifier,
            collateral,
            quote_source,
            clock=clock,
            allow_unbound_legacy=allow_unbound_legacy,
        )

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> KeyClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- the request -------------------------------------------------------------------------------

    def get_key(
        self,
        key_name: str = DEFAULT_KEY_NAME,
        key_version: int = DEFAULT_KEY_VERSION,
        scheme: str | None = None,
        freshness: bool = False,
    ) -> bytes:
        """This TD's 32-byte key for (``key_name``, ``key_version``, ``scheme``); see :meth:`fetch`."""
        return self.fetch(key_name, key_version, scheme, freshness).key

    def fetch(
        self,
        key_name: str = DEFAULT_KEY_NAME,
        key_version: int = DEFAULT_KEY_VERSION,
        scheme: str | None = None,
        freshness: bool = False,
    ) -> ProviderKey:
        """Request, check and decrypt one key; return it with what the provider said about it.

        ``scheme=None`` means :data:`~..keys.DEFAULT_SCHEME` (``legacy-sha256`` on the legacy
        protocol); the scheme is always sent and the answer must name it, so neither the host nor a
        provider configuration change can switch this TD to another key. ``freshness``
        (v1 only) puts SHA-256 of a provider token into the quote, so the provider can tell the
        quote is recent. Raises a :class:`~sealing_key_provider.errors.ProviderError` subclass with
        a stable code; ``ValueError`` for arguments the protocol cannot express.
        """
        key_name = validate_key_name(key_name)
        key_version = validate_key_version(key_version)
        if self.transport.protocol == PROTOCOL_LEGACY:
            _check_legacy_request(key_name, key_version, scheme, freshness)
            scheme = LEGACY_SCHEME
        elif scheme is None:
            scheme = DEFAULT_SCHEME

        if self.ratls_verifier is not None:
            assert isinstance(self.transport, RaTlsTransport)
            ratls = self.ratls_verifier

            def identity_only(der: bytes) -> None:
                ratls.verify(der, None)  # the TD's platform is not known before its quote

            self.transport.peer_check = identity_only
        nonce = self.transport.nonce() if freshness else None
        # A fresh key pair for every request: never reused, never stored.
        with EphemeralKeyPair() as secret:
            public = secret.public_key
            report_data = public + (token_binding(nonce) if nonce is not None else bytes(32))
            td = self._own_quote(report_data)
            channel: list[VerifiedCertificate] = []
            if self.ratls_verifier is not None:
                assert isinstance(self.transport, RaTlsTransport)
                ratls, checked_td = self.ratls_verifier, td
                self.transport.peer_check = lambda der: channel.append(ratls.verify(der, checked_td))
            answer = self.transport.request(
                td.quote,
                key_name=key_name,
                key_version=key_version,
                scheme=scheme,
                nonce=nonce,
                evidence=self.evidence,
            )
            verified = self._authenticate(answer, td, key_name, key_version, scheme, channel)
            used_scheme = LEGACY_SCHEME if answer.v1 is None else answer.v1.scheme
            verify_same_platform(verified, td)
            key = _open(secret, answer.encrypted_key)
        report = verified.quote.enclave_report
        _log_received(key_name, key_version, used_scheme, verified)
        return ProviderKey(
            key=key,
            scheme=used_scheme,
            key_name=key_name,
            key_version=key_version,
            provider_mrenclave=report.mrenclave,
            provider_mrsigner=report.mrsigner,
            provider_ppid=verified.pck.ppid,
            provider_tcb_status=verified.status,
            provider_advisory_ids=verified.advisory_ids,
            td_tcb_status=answer.v1.tcb_status if answer.v1 is not None else None,
            policy_digest=answer.v1.policy_digest if answer.v1 is not None else None,
        )

    def _authenticate(  # noqa: PLR0917 (one private call site)
        self,
        answer: ProviderAnswer,
        td: TdQuoteInfo,
        key_name: str,
        key_version: int,
        scheme: str,
        channel: list[VerifiedCertificate],
    ) -> VerifiedQuote:
        """Which of the three forms authenticates this answer, checked; the provider quote that stands
        behind it. An answer none of them authenticates is refused: there is no fourth way."""
        now = int(self._clock())
        v1 = answer.v1
        if v1 is None or v1.evidence == EVIDENCE_QUOTE:
            verified = verify_provider_quote(
                answer.provider_quote,
                trust=self.trust,
                verifier=self._verifier,
                collateral=self._collateral,
                now=now,
            )
            if v1 is None:
                verify_binding_legacy(verified, answer.encrypted_key)
            else:
                verify_binding_v1(
                    verified,
                    v1,
                    td_quote=td.quote,
                    key_name=key_name,
                    key_version=key_version,
                    scheme=scheme,
                    trust=self.trust,
                )
            return verified
        binding = expected_binding_v1(
            v1, td_quote=td.quote, key_name=key_name, key_version=key_version, scheme=scheme, trust=self.trust
        )
        if v1.evidence == EVIDENCE_SIGNATURE:
            if self.attestations is None:
                raise ResponseBindingInvalid("a signed answer on a transport without attestations")
            return self.attestations.check(v1.attestation_id, v1.signature, binding, now).verified
        if v1.evidence == EVIDENCE_RATLS:
            if self.ratls_verifier is None or not channel:
                raise ResponseBindingInvalid(
                    "the answer claims an attested RA-TLS channel, but it did not come over one"
                )
            if not hmac.compare_digest(v1.binding, binding):
                raise ResponseBindingInvalid("the RA-TLS answer does not bind this request and answer")
            return channel[-1].legacy
        raise ResponseBindingInvalid(f"the answer's evidence {v1.evidence!r} is not one this client checks")

    def _own_quote(self, report_data: bytes) -> TdQuoteInfo:
        """This TD's quote over ``report_data``, checked, with its platform identity.

        The TD's own platform is taken from its quote's proven signature chain, not from the
        certificate the host attached: a swapped-in PCK chain of another machine fails here.
        """
        td = inspect_td_quote(self._quote_source.quote(report_data), report_data)
        try:
            return replace(td, pck=self._verifier.quote_platform(td.parsed))
        except ProviderError as e:
            raise TdQuoteInvalid(f"the TD's own quote does not verify ({e.code}): {e.message}") from None


def _check_legacy_request(key_name: str, key_version: int, scheme: str | None, freshness: bool) -> None:
    """What the legacy protocol cannot express is a ValueError before anything is sent."""
    if key_name != DEFAULT_KEY_NAME or key_version != DEFAULT_KEY_VERSION:
        raise ValueError("the legacy protocol serves only the default key name and version")
    if scheme not in (None, LEGACY_SCHEME):
        raise ValueError(f"the legacy protocol always uses the {LEGACY_SCHEME} scheme")
    if freshness:
        raise ValueError("the legacy protocol has no freshness nonce; use the HTTP API v1")


def _log_received(key_name: str, key_version: int, scheme: str, verified: VerifiedQuote) -> None:
    # legacy-sha256 has one key per TD: no name or version to report (they are only the defaults).
    which = (
        f"the {LEGACY_SCHEME} key (no name or version)"
        if scheme == LEGACY_SCHEME
        else f"name={key_name!r} version={key_version} scheme={scheme}"
    )
    log.info(
        "key received: %s provider_mrenclave=%s provider_tcb=%s",
        which,
        verified.quote.enclave_report.mrenclave.hex(),
        verified.status.value,
    )


def _open(secret: EphemeralKeyPair, encrypted_key: bytes) -> bytes:
    """Open the sealed box; anything but exactly 32 bytes of authentic plaintext is a failure."""
    if len(encrypted_key) != ENCRYPTED_KEY_SIZE:
        raise DecryptionFailed(f"encrypted key is {len(encrypted_key)} bytes, expected {ENCRYPTED_KEY_SIZE}")
    try:
        key = secret.open_sealed_box(encrypted_key)
    except nacl.exceptions.CryptoError:
        raise DecryptionFailed("the sealed box does not open with this request's private key") from None
    if len(key) != DERIVED_KEY_SIZE:
        raise DecryptionFailed(f"decrypted key is {len(key)} bytes, expected {DERIVED_KEY_SIZE}")
    return key
