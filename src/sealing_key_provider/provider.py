"""The request flow: one TD quote in, one sealed key out, authenticated (DESIGN.md steps 1-8).

This module holds the flow and nothing else. It talks to the edges through small interfaces: an
:class:`~.platform.SgxPlatform` (own quote, sealing key), a :class:`~.collateral.CollateralSource`, a
clock. Both protocols (legacy TCP, HTTP v1) call :meth:`Provider.handle`; they differ in the scheme
they ask for, the binding of the response, and what authenticates it: a per-request SGX quote (legacy,
or v1 on request), the attested key's signature (v1 default, :mod:`.attested_key`), or nothing more
than the RA-TLS channel the answer goes back on.

Every decision is written to the ``sealing_key_provider.audit`` logger: granted or denied, the code,
a digest of the TD's measurements, key name and version, TCB status. Never key material.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from . import __version__
from .attested_key import DEFAULT_LIFETIME, AttestedKeys, TlsFactory
from .binding import RequestContext, report_data_legacy, report_data_v1
from .collateral.source import CollateralSource
from .dcap import PckIdentity, Quote, TdReport, TeeType, Verifier, parse_quote
from .dcap.abi import MAX_QUOTE_SIZE
from .dcap.pck import pck_leaf_identity
from .errors import (
    BadRequest,
    CollateralError,
    CollateralUnavailable,
    FreshnessError,
    PckChainInvalid,
    PlatformError,
    PlatformMismatch,
    PolicyDenied,
    ProviderError,
    RequestTooLarge,
    UnsupportedQuote,
)
from .freshness import FreshnessTokens
from .keys import (
    DEFAULT_KEY_NAME,
    DEFAULT_KEY_VERSION,
    LEGACY_SCHEME,
    SchemeRegistry,
    recipient_key_from_report_data,
    seal,
    validate_key_name,
    validate_key_version,
)
from .platform import DEV_MODE_ISVPRODID, SgxPlatform, attested_quote
from .policy import Policy
from .timefloor import TimeFloor
from .wire import EVIDENCE_QUOTE, EVIDENCE_RATLS, EVIDENCE_SIGNATURE, REQUESTABLE_EVIDENCE

log = logging.getLogger("sealing_key_provider.provider")
audit = logging.getLogger("sealing_key_provider.audit")

#: The TCB status reported for a quote that development mode did not verify.
UNVERIFIED: Final = "Unverified"


#: Upper bounds (seconds) of the quote-generation histogram buckets.
QUOTE_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class QuoteStats:
    """Every SGX quote this provider generated and how long each took (start-up, attestation,
    renewal and per-request quotes alike), for ``skp_quote_generation_seconds``. Thread-safe."""

    def __init__(self, buckets: tuple[float, ...] = QUOTE_BUCKETS) -> None:
        self.buckets = buckets
        self._lock = threading.Lock()
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        index = bisect.bisect_left(self.buckets, seconds)
        with self._lock:
            self._counts[index] += 1
            self._sum += seconds

    def snapshot(self) -> tuple[list[int], float]:
        """(count per bucket, the last one above every bound; sum of seconds)."""
        with self._lock:
            return list(self._counts), self._sum

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts)


@dataclass(frozen=True, slots=True)
class KeyRequest:
    """A key request as both protocols deliver it. ``legacy`` selects the original's exact behaviour."""

    quote: bytes = field(repr=False)
    scheme: str | None = None
    key_name: str = DEFAULT_KEY_NAME
    key_version: int = DEFAULT_KEY_VERSION
    #: A freshness token from ``/v1/nonce``; the TD put SHA-256 of it in report_data[32:64].
    nonce: bytes | None = None
    legacy: bool = False
    #: ``"quote"`` asks for a per-request SGX quote (v1); None: the channel's default.
    evidence: str | None = None
    #: The request came over the RA-TLS listener: the channel is attested.
    attested_channel: bool = False
    #: Who asked (address), for the audit log only.
    peer: str = "-"


@dataclass(frozen=True, slots=True)
class KeyResponse:
    """The answer, and what was applied to produce it (the v1 API reports all of it)."""

    encrypted_key: bytes
    #: The per-request SGX quote (legacy, and v1 with evidence "quote"); empty otherwise.
    provider_quote: bytes = field(repr=False)
    scheme: str
    measurements: tuple[str, ...]
    key_name: str
    key_version: int
    tcb_status: str
    advisory_ids: tuple[str, ...]
    dev_mode: bool
    #: Seconds spent generating the provider quote (0 without one).
    quote_seconds: float
    #: The 64 bytes that authenticate this answer: the report data of the legacy or v1 binding.
    binding: bytes = b""
    evidence: str = EVIDENCE_QUOTE
    #: The attested key's signature over the labelled binding, and the attestation naming that key.
    signature: bytes = b""
    attestation_id: str = ""


@dataclass(frozen=True, slots=True)
class ProviderIdentity:
    """Who this provider is, read once at start-up from its own quote (served by ``/v1/info``)."""

    mrenclave: bytes
    mrsigner: bytes
    isvprodid: int
    isvsvn: int
    debug: bool
    pck: PckIdentity
    qe_id: bytes

    def to_dict(self) -> dict[str, object]:
        return {
            "mrenclave": self.mrenclave.hex(),
            "mrsigner": self.mrsigner.hex(),
            "isvprodid": self.isvprodid,
            "isvsvn": self.isvsvn,
            "debug": self.debug,
            "ppid": self.pck.ppid.hex(),
            "fmspc": self.pck.fmspc.hex().upper(),
            "pce_id": self.pck.pce_id.hex(),
            "ca_type": self.pck.ca_type,
            "qe_id": self.qe_id.hex(),
        }


def identity_from_quote(
    own_quote: bytes, report_data: bytes | None = None, verifier: Verifier | None = None
) -> ProviderIdentity:
    """The provider's enclave identity and its platform's PCK identity, from its own SGX quote.

    The quote comes back through the host (Gramine hands the report to the host's quoting enclave), so
    a hostile host could answer with another platform's quote or certificate chain and make the
    provider believe it runs elsewhere: the same-platform check would then admit that platform's TDs.
    Hence the quote must come from :func:`~.platform.attested_quote` (its body is this enclave's own
    report, so it is a quote of this enclave and no other), ``report_data`` is a fresh nonce the quote
    must carry (no replay of a quote made earlier) and, in production, ``verifier`` proves the platform
    (PCK chain to the trust anchor, QE report signed by that PCK key, quote signed by the key the QE
    report binds): only then is its PCK identity this platform's. Without a verifier (development mode) the PCK certificate is read unverified.
    """
    q = parse_quote(own_quote)
    if q.header.tee_type != TeeType.SGX:
        raise PlatformError("the platform returned a TDX quote for the provider enclave; expected SGX")
    report = q.enclave_report
    if report_data is not None and report.report_data != report_data:
        raise PlatformError(
            "the platform returned a quote over other report data than the provider asked for"
        )
    if verifier is not None:
        try:
            pck = verifier.quote_platform(q)
        except ProviderError as e:
            raise PlatformError(
                f"the provider's own quote does not prove its platform ({e.code}: {e.message}); is the "
                "trust anchor the one this platform chains to (for the simulator: the root-ca.pem of the "
                "same state directory)?"
            ) from e
    else:
        try:
            pck = pck_leaf_identity(q.pck_chain_pem)
        except PckChainInvalid as e:
            raise PlatformError(
                f"the provider's own quote carries no readable PCK certificate: {e.message}"
            ) from e
    return ProviderIdentity(
        mrenclave=report.mrenclave,
        mrsigner=report.mrsigner,
        isvprodid=report.isvprodid,
        isvsvn=report.isvsvn,
        debug=report.debug,
        pck=pck,
        qe_id=q.header.qe_id,
    )


def _evidence_for(request: KeyRequest) -> str:
    """How the answer is bound: a per-request quote for the legacy protocol (and when asked for), else
    what the request asked for, else the attested key's signature, or the RA-TLS channel it came on."""
    if request.legacy:
        return EVIDENCE_QUOTE
    if request.evidence is not None:
        return request.evidence
    return EVIDENCE_RATLS if request.attested_channel else EVIDENCE_SIGNATURE


def measurement_digest(td: TdReport) -> str:
    """A short, non-secret fingerprint of the TD image for logs: SHA-256(MRTD || RTMR0..3), 16 hex."""
    return hashlib.sha256(td.mrtd + td.rtmr0 + td.rtmr1 + td.rtmr2 + td.rtmr3).hexdigest()[:16]


class Provider:
    """The stateless key provider. Thread-safe: every field is immutable after construction."""

    def __init__(
        self,
        platform: SgxPlatform,
        collateral: CollateralSource,
        verifier: Verifier,
        policy: Policy,
        schemes: SchemeRegistry,
        *,
        clock: Callable[[], float] = time.time,
        dev_mode: bool = False,
        time_floor: TimeFloor | None = None,
        attestation_lifetime: float = DEFAULT_LIFETIME,
        tls_factory: TlsFactory | None = None,
    ) -> None:
        self.quote_stats = QuoteStats()
        self._platform = platform
        self._collateral = collateral
        self._verifier = verifier
        self.policy = policy
        self.schemes = schemes
        self._clock = clock
        self.dev_mode = dev_mode
        #: Time below which the clock is not believed (it only rises): see :mod:`.timefloor`.
        self.time_floor = time_floor if time_floor is not None else TimeFloor()
        self.policy_digest = policy.digest()
        if dev_mode and getattr(platform, "key_policy", None) == "mrsigner":
            # The configuration refuses this pair; a provider built by hand must not slip through.
            raise PlatformError(
                "development mode with the MRSIGNER sealing key would share the production sealing key; "
                "use the MRENCLAVE key policy for development"
            )
        # The provider's PCK identity comes from its own quote, once: one quote generation per request.
        nonce = secrets.token_bytes(64)
        self.identity = identity_from_quote(self._quote(nonce), nonce, None if dev_mode else verifier)
        if dev_mode and self.identity.isvprodid != DEV_MODE_ISVPRODID:
            log.warning(
                "DEVELOPMENT MODE in an enclave with ISVPRODID %d, not the development ISVPRODID %d: "
                "sign development builds with DEV_MODE=1",
                self.identity.isvprodid,
                DEV_MODE_ISVPRODID,
            )
        # Read once: a per-request read would add I/O on the hot path and the key cannot change while
        # the enclave runs (same MRENCLAVE, same CPUSVN until a reboot).
        self._sealing_key = platform.sealing_key()
        self.freshness = FreshnessTokens.from_sealing_key(
            self._sealing_key, window_seconds=policy.freshness_window_seconds
        )
        if dev_mode:
            log.warning(
                "DEVELOPMENT MODE: TD quotes are NOT verified and the same-platform check is skipped; "
                "never use this build in production"
            )
        # The attested key (and RA-TLS certificate): v1 answers are signed, not quoted, so the quoting
        # enclave is out of the request path. Attested now, before any listener opens.
        self.attested = AttestedKeys(
            self._quote,
            self.policy_digest,
            lifetime=attestation_lifetime,
            tls_factory=tls_factory,
            check=None if dev_mode else self._check_own_quote,
        )
        # The raw clock on purpose: a provider started while the clock is behind its floor still comes
        # up (and says why it refuses), since every request and GET /v1/attestation go through the floor.
        self.attested.attest(self._clock())

    def _quote(self, report_data: bytes) -> bytes:
        """Every SGX quote the provider makes goes through here: its report body checked against the
        enclave's own report (:func:`~.platform.attested_quote`), counted and timed."""
        started = time.perf_counter()
        quote = attested_quote(self._platform, report_data)
        self.quote_stats.observe(time.perf_counter() - started)
        return quote

    def _check_own_quote(self, quote: bytes, now: float) -> None:
        """Raise if the provider's own quote no longer verifies under the collateral available now.

        Collateral that cannot be had is not a reason to re-attest (a new quote would not verify any
        better); a quote the verifier refuses is.
        """
        mine = self.identity.pck
        try:
            collateral = self._collateral.get("sgx", mine.fmspc, mine.ca_type)
        except CollateralError as e:
            log.debug("own quote check skipped: no SGX collateral (%s)", e.code)
            return
        try:
            self._verifier.verify(parse_quote(quote), collateral, int(now))
        except CollateralError as e:
            log.debug("own quote check skipped: collateral not usable (%s)", e.code)

    # --- the flow ---------------------------------------------------------------------------------

    def handle(self, request: KeyRequest) -> KeyResponse:
        """Run the whole flow for one request; raise a :class:`ProviderError` with a code on refusal."""
        td: TdReport | None = None
        try:
            response, td = self._handle(request)
        except ProviderError as e:
            audit.info(
                "denied code=%s peer=%s td=%s key_name=%r key_version=%s legacy=%s reason=%s",
                e.code,
                request.peer,
                measurement_digest(td) if td is not None else _peek_digest(request.quote),
                request.key_name,
                request.key_version,
                request.legacy,
                e.message,
            )
            raise
        audit.info(
            "granted peer=%s td=%s scheme=%s key_name=%r key_version=%s tcb_status=%s advisories=%s dev_mode=%s",
            request.peer,
            measurement_digest(td),
            response.scheme,
            response.key_name,
            response.key_version,
            response.tcb_status,
            ",".join(response.advisory_ids) or "-",
            response.dev_mode,
        )
        return response

    def _handle(self, request: KeyRequest) -> tuple[KeyResponse, TdReport]:
        # 1. Bound and parse.
        quote, scheme, key_name, key_version = self._read_request(request)
        td = quote.td_report
        # The host sets the clock: never verify collateral or tokens at a time already known to be past.
        now = self.time_floor.check(self._clock())

        # 2-4. Verify, apply policy, same platform (production only).
        status: str = UNVERIFIED
        advisories: tuple[str, ...] = ()
        if self.dev_mode:
            log.warning("DEVELOPMENT MODE: serving an UNVERIFIED TD quote (td=%s)", measurement_digest(td))
        else:
            status, advisories = self._verify(quote, key_name, now)
        if self.policy.freshness_required or request.nonce is not None:
            if request.nonce is None:
                raise FreshnessError("this provider requires a freshness token: GET /v1/nonce first")
            self.freshness.verify_bound(request.nonce, td.report_data, now)

        # 5-6. Derive, then seal to the TD's key (validated before any key is derived).
        recipient = recipient_key_from_report_data(td.report_data)
        derived = self.schemes.derive(
            self._sealing_key,
            td,
            scheme=scheme,
            key_name=key_name,
            key_version=key_version,
            dev_mode=self.dev_mode,
        )
        encrypted_key = seal(derived.key, recipient)

        # 7. Bind the response: in a per-request quote (legacy, or asked for), with the attested key's
        # signature (v1 default), or in nothing more than the attested RA-TLS channel it goes back on.
        evidence = _evidence_for(request)
        if request.legacy:
            report_data = report_data_legacy(encrypted_key)
        else:
            context = RequestContext.for_quote(
                request.quote,
                scheme=derived.scheme,
                key_name=derived.key_name,
                key_version=derived.key_version,
                policy_digest=self.policy_digest,
                measurements=derived.measurements,
                tcb_status=status,
                advisory_ids=advisories,
                dev_mode=self.dev_mode,
            )
            report_data = report_data_v1(encrypted_key, context)
        provider_quote, signature, attestation_id, quote_seconds = b"", b"", "", 0.0
        if evidence == EVIDENCE_QUOTE:
            started = time.perf_counter()
            provider_quote = self._quote(report_data)
            quote_seconds = time.perf_counter() - started
        elif evidence == EVIDENCE_SIGNATURE:
            attestation_id, signature = self.attested.sign(report_data, now)
        else:
            # The RA-TLS channel stands in for the signature: like a signature, it is never used past
            # its attestation's expiry (a keep-alive connection or a stale certificate would be).
            self.attested.current(now)

        # 8. Answer with what was applied.
        return (
            KeyResponse(
                encrypted_key=encrypted_key,
                provider_quote=provider_quote,
                scheme=derived.scheme,
                measurements=derived.measurements,
                key_name=derived.key_name,
                key_version=derived.key_version,
                tcb_status=status,
                advisory_ids=advisories,
                dev_mode=self.dev_mode,
                quote_seconds=quote_seconds,
                binding=report_data,
                evidence=evidence,
                signature=signature,
                attestation_id=attestation_id,
            ),
            td,
        )

    def _read_request(self, request: KeyRequest) -> tuple[Quote, str, str, int]:
        """The TD quote (bounded, parsed, TDX), the scheme, key name and version the request names."""
        if len(request.quote) > MAX_QUOTE_SIZE:
            raise RequestTooLarge(
                f"quote is {len(request.quote)} bytes; at most {MAX_QUOTE_SIZE} are accepted"
            )
        quote = parse_quote(request.quote)
        if not quote.is_tdx:
            raise UnsupportedQuote("the provider serves TDX quotes (v4 or v5); this is an SGX quote")
        scheme = LEGACY_SCHEME if request.legacy else self.schemes.get(request.scheme).name
        key_name = validate_key_name(request.key_name)
        key_version = validate_key_version(request.key_version)
        if request.legacy and (request.scheme not in (None, LEGACY_SCHEME)):
            raise PolicyDenied("the legacy protocol always uses the legacy-sha256 scheme")
        if request.evidence is not None and request.evidence not in REQUESTABLE_EVIDENCE:
            raise BadRequest(f"evidence must be one of {', '.join(REQUESTABLE_EVIDENCE)}")
        return quote, scheme, key_name, key_version

    def _verify(self, quote: Quote, key_name: str, now: int) -> tuple[str, tuple[str, ...]]:
        # The PCK chain is checked against the trust anchor first (cached per chain), and same platform
        # implies the provider's own FMSPC and CA: so every collateral lookup is for this platform, and a
        # forged PCK leaf can never make the provider query the PCCS for arbitrary FMSPCs.
        pck = self._verifier.pck_identity(quote)
        fmspc, ca = pck.fmspc, pck.ca_type
        mine = self.identity
        if fmspc != mine.pck.fmspc or ca != mine.pck.ca_type:
            raise PlatformMismatch(
                f"the TD's PCK certificate names FMSPC {fmspc.hex().upper()} ({ca} CA); this platform is "
                f"{mine.pck.fmspc.hex().upper()} ({mine.pck.ca_type} CA)"
            )
        try:
            collateral = self._collateral.get("tdx", fmspc, ca)
        except CollateralUnavailable as e:
            # Relayed to the TD: say whose source failed, or "GET /tdx/..." reads like the TD's own call.
            raise CollateralUnavailable(
                f"the provider could not get TDX collateral for FMSPC {fmspc.hex().upper()} from its "
                f"collateral source (PCCS or file): {e.message}"
            ) from e
        verified = self._verifier.verify(quote, collateral, now)
        # Accepted at a time not below the floor: its issue date is now a time known to have passed.
        self.time_floor.raise_to(verified.collateral_issued)
        # Same platform before policy: TDs of other machines never reach policy code (nor learn the
        # policy from its error codes).
        if not verified.pck.same_platform(mine.pck):
            raise PlatformMismatch(
                "the TD runs on another platform: its PCK certificate has another PPID or FMSPC than the "
                "provider's"
            )
        if quote.header.qe_id != mine.qe_id:
            raise PlatformMismatch("the TD's quoting enclave has another QE ID than the provider's")
        self.policy.check_collateral(verified.tcb_evaluation_data_number)
        self.policy.check(verified, key_name)
        td = quote.td_report
        if td.mrservicetd is not None and any(td.mrservicetd):
            # A bound service TD (TDX 1.5) can act on this TD's behalf; keys are not released to it.
            raise PolicyDenied("the TD is bound to a service TD (MRSERVICETD is not zero)")
        return verified.status.value, verified.advisory_ids

    # --- the rest of the API ----------------------------------------------------------------------

    def issue_nonce(self) -> tuple[bytes, int]:
        """A freshness token and its expiry (Unix seconds)."""
        now = self.time_floor.check(self._clock())
        return self.freshness.issue(now), now + self.policy.freshness_window_seconds

    def info(self) -> dict[str, object]:
        return {
            "version": __version__,
            **self.identity.to_dict(),
            "policy_digest": self.policy_digest.hex(),
            "schemes": list(self.schemes.names),
            "default_scheme": self.schemes.default,
            "dev_mode": self.dev_mode,
            "freshness_required": self.policy.freshness_required,
        }

    def readiness(self) -> dict[str, str]:
        """Check that the provider can answer now: its attestation is valid and renewing (no quote is
        generated for a probe; a failing quoting enclave shows as failing renewal) and the TD
        collateral source works.

        Returns {check: "ok"} or raises the first failure (the HTTP layer turns it into 503).
        """
        attestation = self.attested.health(self._clock())
        if not self.dev_mode:
            collateral = self._collateral.get("tdx", self.identity.pck.fmspc, self.identity.pck.ca_type)
            del collateral
        return {"attestation": attestation, "collateral": "skipped (dev mode)" if self.dev_mode else "ok"}

    def now(self) -> float:
        """The provider's clock (Unix seconds): the one its verification and attestation use."""
        return self._clock()

    def maintain(self) -> bool:
        """Renew the attestation if it is due or no longer verifies (the server calls this
        periodically, off the request path); True if a new one was made."""
        # A clock set back below the floor makes no attestation (ClockBehindFloor); the current one stays.
        return self.attested.maintain(self.time_floor.check(self._clock()))

    def attestation(self) -> dict[str, object]:
        """The current attestation document (``GET /v1/attestation``)."""
        return self.attested.current(self.time_floor.check(self._clock())).document.to_json()


def _peek_digest(quote: bytes) -> str:
    """The measurement digest of a request that failed before its quote was fully parsed, if any."""
    try:
        q = parse_quote(quote)
        return measurement_digest(q.td_report)
    except ProviderError:
        return "-"
