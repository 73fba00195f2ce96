"""The TD-side SDK: get this TD's sealing key from the provider on its host, and believe it only
after checking everything the answer claims.

Usage::

    trust = ProviderTrust.from_hex(mrenclave="ab12...")
    with KeyClient.http("http://127.0.0.1:8080", trust, Verifier(), collateral, detect_quote_source()) as c:
        key = c.get_key("app/db", key_version=1)          # 32 bytes

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

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Final

import nacl.exceptions
import nacl.public

from ..collateral.source import CollateralSource
from ..dcap import Verifier
from ..errors import DecryptionFailed, LegacyNotAllowed, ProviderError
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
from .errors import TdQuoteInvalid
from .quote_base import QuoteSource
from .secret import EphemeralKeyPair
from .transport import DEFAULT_TIMEOUT, PROTOCOL_LEGACY, HttpTransport, LegacyTransport, Transport
from .trust import ProviderTrust
from .verify import (
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
    provider_tcb_status: str
    provider_advisory_ids: tuple[str, ...]
    #: What the provider applied to this TD (v1 only; None on the legacy protocol).
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
        allow_unbound_legacy: bool = False,
    ) -> None:
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
    ) -> KeyClient:
        """A client of the HTTP API v1 at ``url`` (``http://host:port`` or ``https://...``)."""
        return cls(
            HttpTransport(url, timeout=timeout, verify=verify_tls),
            trust,
            verifier,
            collateral,
            quote_source,
            clock=clock,
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
        legacy = self.transport.protocol == PROTOCOL_LEGACY
        if legacy:
            if key_name != DEFAULT_KEY_NAME or key_version != DEFAULT_KEY_VERSION:
                raise ValueError("the legacy protocol serves only the default key name and version")
            if scheme not in (None, LEGACY_SCHEME):
                raise ValueError(f"the legacy protocol always uses the {LEGACY_SCHEME} scheme")
            if freshness:
                raise ValueError("the legacy protocol has no freshness nonce; use the HTTP API v1")
            scheme = LEGACY_SCHEME
        elif scheme is None:
            scheme = DEFAULT_SCHEME

        nonce = self.transport.nonce() if freshness else None
        # A fresh key pair for every request: never reused, never stored.
        with EphemeralKeyPair() as secret:
            public = secret.public_key
            report_data = public + (token_binding(nonce) if nonce is not None else bytes(32))
            td = inspect_td_quote(self._quote_source.quote(report_data), report_data)
            # The TD's own platform is taken from its quote's proven signature chain, not from the
            # certificate the host attached: a swapped-in PCK chain of another machine fails here.
            try:
                td = replace(td, pck=self._verifier.quote_platform(td.parsed))
            except ProviderError as e:
                raise TdQuoteInvalid(f"the TD's own quote does not verify ({e.code}): {e.message}") from None
            answer = self.transport.request(
                td.quote, key_name=key_name, key_version=key_version, scheme=scheme, nonce=nonce
            )
            verified = verify_provider_quote(
                answer.provider_quote,
                trust=self.trust,
                verifier=self._verifier,
                collateral=self._collateral,
                now=int(self._clock()),
            )
            if answer.v1 is None:
                verify_binding_legacy(verified, answer.encrypted_key)
                used_scheme = LEGACY_SCHEME
            else:
                verify_binding_v1(
                    verified,
                    answer.v1,
                    td_quote=td.quote,
                    key_name=key_name,
                    key_version=key_version,
                    scheme=scheme,
                    trust=self.trust,
                )
                used_scheme = answer.v1.scheme
            verify_same_platform(verified, td)
            key = _open(secret, answer.encrypted_key)
        report = verified.quote.enclave_report
        # legacy-sha256 has one key per TD: no name or version to report (they are only the defaults).
        which = (
            f"the {LEGACY_SCHEME} key (no name or version)"
            if used_scheme == LEGACY_SCHEME
            else f"name={key_name!r} version={key_version} scheme={used_scheme}"
        )
        log.info(
            "key received: %s provider_mrenclave=%s provider_tcb=%s",
            which,
            report.mrenclave.hex(),
            verified.status.value,
        )
        return ProviderKey(
            key=key,
            scheme=used_scheme,
            key_name=key_name,
            key_version=key_version,
            provider_mrenclave=report.mrenclave,
            provider_mrsigner=report.mrsigner,
            provider_ppid=verified.pck.ppid,
            provider_tcb_status=verified.status.value,
            provider_advisory_ids=verified.advisory_ids,
            td_tcb_status=answer.v1.tcb_status if answer.v1 is not None else None,
            policy_digest=answer.v1.policy_digest if answer.v1 is not None else None,
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
