"""DCAP quote verification: Intel's algorithm over a parsed quote and already-fetched collateral.

Pure: bytes and collateral in, a typed result or a typed error out; ``now`` is a parameter. The order
of checks follows Intel's Quote Verification Library (QVL, SGX DCAP ``QuoteVerification``), linearised so
that a failure names the part that is broken: the PCK chain, the collateral, the QE, or the quote.

Expiry policy: fail closed. Any certificate, CRL or collateral document outside its validity window at
``now`` is an error (``PCK_CHAIN_INVALID``, ``COLLATERAL_EXPIRED``, ``COLLATERAL_NOT_YET_VALID``). Intel's
QvE only flags this; a key-release service must not hand out keys on stale revocation data.

Caching: a :class:`Verifier` remembers, keyed by exact bytes, what does not depend on the quote: the
PCK chain check (per chain), the collateral check (signatures of TCB info, QE identity and CRLs, their
chains, per collateral), the QE report signature (per QE report, signature and PCK key) and the parsed
attestation keys. Time windows are re-checked on every call, so a cache hit can never revive an
expired document. Caches are bounded LRUs guarded by a lock, so one verifier can serve many threads.
Nothing that depends on input is shared between verifiers: a fresh :class:`Verifier` has checked
nothing. Only the pinned Intel root (a constant of this source) is prepared once per process, and
within one call a certificate met in several chains (the root, the PCK CA that also issues the PCK
CRL) is parsed once, recognised by its exact PEM body.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from operator import ge
from typing import Generic, NamedTuple, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..errors import (
    CertificateRevoked,
    CollateralExpired,
    CollateralMalformed,
    CollateralMismatch,
    CollateralNotYetValid,
    CollateralSignatureInvalid,
    FmspcMismatch,
    PckChainInvalid,
    PckRevoked,
    ProviderError,
    QeIdentityMismatch,
    QeReportDataMismatch,
    QeReportSignatureInvalid,
    QuoteSignatureInvalid,
    TcbLevelNotFound,
    TdxModuleMismatch,
)
from .abi import BodyType, Quote, TdReport, TeeType, parse_quote
from .collateral import (
    Collateral,
    EnclaveIdentity,
    ModuleTcbLevel,
    TcbInfo,
    TcbLevel,
    TdxModuleIdentity,
    parse_enclave_identity,
    parse_tcb_info,
)
from .der import (
    KU_CRL_SIGN,
    KU_DIGITAL_SIGNATURE,
    KU_KEY_CERT_SIGN,
    OID_AUTHORITY_KEY_IDENTIFIER,
    OID_BASIC_CONSTRAINTS,
    OID_CRL_NUMBER,
    OID_KEY_USAGE,
    Cert,
    common_name,
    crl_tbs,
    decode_body,
    encode_body,
    is_ca,
    key_usage,
    load_cert,
    oid_text,
    pem_bodies,
)
from .pck import X509_ERRORS, PckIdentity, pck_identity_of
from .trust import intel_sgx_root_ca


class TcbStatus(StrEnum):
    """Intel's TCB status names, as in TCB info JSON and QVL results."""

    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    CONFIGURATION_NEEDED = "ConfigurationNeeded"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
    REVOKED = "Revoked"


_PLATFORM_STATUSES = frozenset(s.value for s in TcbStatus)
#: TcbStatus by value (a dict lookup; calling the enum costs ~0.5 us). Statuses are checked against
#: _PLATFORM_STATUSES / _IDENTITY_STATUSES before they are looked up.
_STATUS = {s.value: s for s in TcbStatus}
_IDENTITY_STATUSES = frozenset({"UpToDate", "OutOfDate", "Revoked"})


@dataclass(frozen=True, slots=True)
class VerifiedQuote:
    """A quote that passed every DCAP check, and what Intel's collateral says about its platform."""

    quote: Quote
    status: TcbStatus
    advisory_ids: tuple[str, ...]
    pck: PckIdentity
    #: Earliest notAfter / nextUpdate among every certificate, CRL and document used (Unix seconds).
    collateral_expiry: int
    #: The matched platform TCB level's own status, before merging with the QE and TDX module.
    platform_status: TcbStatus
    qe_status: TcbStatus
    tdx_module_status: TcbStatus | None
    tcb_date: str
    tcb_evaluation_data_number: int
    #: Latest issueDate / thisUpdate among the collateral documents and CRLs used (Unix seconds): the
    #: collateral proves the time was at least this when it was fetched (a floor for a host-set clock).
    collateral_issued: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "status": self.status.value,
            "advisory_ids": list(self.advisory_ids),
            "platform_status": self.platform_status.value,
            "qe_status": self.qe_status.value,
            "tdx_module_status": self.tdx_module_status.value if self.tdx_module_status else None,
            "tcb_date": self.tcb_date,
            "tcb_evaluation_data_number": self.tcb_evaluation_data_number,
            "collateral_expiry": self.collateral_expiry,
            "pck": self.pck.to_dict(),
        }


# --- Small pieces ---------------------------------------------------------------------------------

_K = TypeVar("_K")
_V = TypeVar("_V")


class _Lru(Generic[_K, _V]):
    """A bounded, thread-safe LRU map; the verifier's memory must not grow with hostile input."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[_K, _V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _K) -> _V | None:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        return None

    def put(self, key: _K, value: _V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            if len(self._data) > self._size:
                self._data.popitem(last=False)

    def get_or_make(self, key: _K, make: Callable[[], _V]) -> _V:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = make()  # may raise: failures are never cached
        with self._lock:
            self._data[key] = value
            if len(self._data) > self._size:
                self._data.popitem(last=False)
        return value


class _Window(NamedTuple):
    """A validity window to check at ``now``; ``pck`` selects which error family applies."""

    start: int
    end: int
    what: str
    pck: bool


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _cert_window(cert: x509.Certificate, what: str, pck: bool) -> _Window:
    return _Window(
        int(cert.not_valid_before_utc.timestamp()), int(cert.not_valid_after_utc.timestamp()), what, pck
    )


def _other_root(found: Cert, trusted: Cert) -> str:
    """Why a chain's root is not the trust anchor, for the error message (only on the failure path)."""
    name = found.cert.subject.rfc4514_string()
    if found.subject == trusted.subject:
        return (
            f"ends in a root named {name!r} like the trusted root, but it is another certificate "
            "(another platform's or simulator's root, or the wrong trust anchor)"
        )
    return f"ends in {name!r}, not the trusted root {trusted.cert.subject.rfc4514_string()!r}"


#: subjectPublicKeyInfo of an uncompressed P-256 key up to the point: SEQUENCE { SEQUENCE {
#: id-ecPublicKey, prime256v1 }, BIT STRING (no unused bits) }, then 04 || X || Y.
_P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
_P256_SPKI_SIZE = len(_P256_SPKI_PREFIX) + 65
_SECP256R1 = ec.SECP256R1()


def _p256_key(cert: Cert, what: str, err: type[ProviderError]) -> ec.EllipticCurvePublicKey:
    """The certificate's key, which must be ECDSA P-256.

    The common form (an uncompressed point under prime256v1) is loaded from its point, ~3 us less
    than ``public_key()`` on the cold path; anything else goes through ``public_key()``, whose
    errors name the problem.
    """
    spki = cert.spki
    if len(spki) == _P256_SPKI_SIZE and spki.startswith(_P256_SPKI_PREFIX):
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(_SECP256R1, spki[len(_P256_SPKI_PREFIX) :])
        except ValueError as e:  # not a point on the curve
            raise err(f"{what} key cannot be loaded: {e}") from e
    try:
        key = cert.cert.public_key()
    except X509_ERRORS as e:
        raise err(f"{what} key cannot be loaded: {e}") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise err(f"{what} key is not ECDSA P-256")
    return key


_ECDSA_SHA256 = x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256


#: The certificates parsed so far in one call, with their PEM bodies. Chains have fixed lengths, so
#: it holds at most eight: a linear scan is cheaper than hashing 1.3 KB keys.
_Seen = list[tuple[bytes, Cert]]


def _load_chain(pem: bytes, count: int, what: str, err: type[ProviderError], seen: _Seen) -> list[Cert]:
    """The chain's certificates; one that ``seen`` holds (same base64 text, so same DER, within this
    call) is not decoded or parsed again, and what is parsed is added to ``seen``."""
    try:
        bodies = pem_bodies(pem)
        if bodies is None:
            bodies = [
                encode_body(c.public_bytes(serialization.Encoding.DER))
                for c in x509.load_pem_x509_certificates(pem)
            ]
        if len(bodies) != count:
            raise err(f"{what} must hold {count} certificates, it holds {len(bodies)}")
        certs = []
        for body in bodies:
            for known, cert in seen:
                if known == body:
                    certs.append(cert)
                    break
            else:
                parsed = load_cert(decode_body(body))
                seen.append((body, parsed))
                certs.append(parsed)
    except X509_ERRORS as e:
        raise err(f"{what} is not a PEM certificate chain: {e}") from e
    return certs


#: The critical extensions this verifier processes; a certificate with any other critical extension is
#: refused (RFC 5280 4.2). Intel's certificates mark only these two critical.
_KNOWN_CRITICAL = frozenset({OID_BASIC_CONSTRAINTS, OID_KEY_USAGE})
_USAGE_NAMES = (
    (KU_DIGITAL_SIGNATURE, "digitalSignature"),
    (KU_KEY_CERT_SIGN, "keyCertSign"),
    (KU_CRL_SIGN, "cRLSign"),
)


def _check_usage(cert: Cert, what: str, needs: int, err: type[ProviderError]) -> None:
    """Refuse a certificate with a critical extension we do not process, or whose KeyUsage (when
    present: absent means unrestricted) lacks a use this chain makes of its key."""
    unknown = cert.critical - _KNOWN_CRITICAL
    if unknown:
        oids = ", ".join(sorted(oid_text(o) for o in unknown))
        raise err(f"{what} has a critical extension this verifier does not process ({oids})")
    try:
        usage = key_usage(cert)
    except ValueError as e:
        raise err(f"{what} KeyUsage extension is malformed: {e}") from e
    if usage is not None and usage & needs != needs:
        missing = [name for bit, name in _USAGE_NAMES if needs & bit and not usage & bit]
        raise err(f"{what} KeyUsage does not allow {', '.join(missing)}")


def _time(ts: int) -> str:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_windows(windows: Iterable[_Window], now: int) -> None:
    for w in windows:
        if now < w.start:
            if w.pck:
                raise PckChainInvalid(f"{w.what} is not valid before {_time(w.start)} (now {_time(now)})")
            raise CollateralNotYetValid(f"{w.what} is not valid before {_time(w.start)} (now {_time(now)})")
        if now > w.end:
            if w.pck:
                raise PckChainInvalid(f"{w.what} expired at {_time(w.end)} (now {_time(now)})")
            raise CollateralExpired(f"{w.what} expired at {_time(w.end)} (now {_time(now)})")


# --- Signature checks, batched ----------------------------------------------------------------------

_ECDSA_P256_SHA256 = ec.ECDSA(hashes.SHA256())


class _Check(NamedTuple):
    key: ec.EllipticCurvePublicKey
    signature: bytes  # DER
    data: bytes
    fail: Callable[[], ProviderError]


def _check_ok(check: _Check) -> bool:
    try:
        check.key.verify(check.signature, check.data, _ECDSA_P256_SHA256)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


class _Batch:
    """The independent ECDSA checks of one verification, collected while a chain or collateral is
    prepared, then run in collection order.

    Preparation thus stays free of verification, the first failure in a fixed order is reported, and
    cache entries are committed (``on_success``) only after every check passed. (Splitting a batch over
    two threads was measured: cryptography releases the GIL while verifying, but starting a thread
    costs ~130 us and GIL hand-offs eat most of the rest, so nine ~70 us checks ran slower.)
    """

    __slots__ = ("checks", "commits")

    def __init__(self) -> None:
        self.checks: list[_Check] = []
        self.commits: list[Callable[[], None]] = []

    def raw(
        self, key: ec.EllipticCurvePublicKey, sig: bytes, data: bytes, fail: Callable[[], ProviderError]
    ) -> None:
        """A raw r||s signature (quotes, QE reports, collateral documents)."""
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"))
        self.checks.append(_Check(key, der, data, fail))

    def x509(
        self,
        key: ec.EllipticCurvePublicKey,
        signature: bytes,
        tbs: bytes,
        algorithm: x509.ObjectIdentifier,
        fail: Callable[[], ProviderError],
    ) -> None:
        """An X.509 signature (certificate or CRL); Intel's PKI uses ecdsa-with-SHA256 only."""
        if algorithm != _ECDSA_SHA256:
            raise fail()
        self.checks.append(_Check(key, signature, tbs, fail))

    def on_success(self, commit: Callable[[], None]) -> None:
        self.commits.append(commit)

    def run(self) -> None:
        for check in self.checks:
            if not _check_ok(check):
                raise check.fail()
        for commit in self.commits:
            commit()


# --- Prepared (cached) pieces ---------------------------------------------------------------------


class _Anchor(NamedTuple):
    """The trust anchor as the verifier uses it: DER pieces, key and validity window."""

    cert: Cert
    #: Its PEM body (see :func:`_load_chain`).
    body: bytes
    key: ec.EllipticCurvePublicKey
    #: Its validity as the end of collateral chains, and as the end of the PCK chain.
    window: _Window
    pck_window: _Window


def _make_anchor(cert: x509.Certificate) -> _Anchor:
    try:
        parts = load_cert(cert.public_bytes(serialization.Encoding.DER))
        window = _cert_window(cert, "trust anchor (root CA)", False)
        pck_window = _cert_window(cert, "root CA certificate", True)
    except X509_ERRORS as e:
        raise PckChainInvalid(f"trust anchor is not a usable certificate: {e}") from e
    # The anchor is trusted by configuration, so its self-signature proves nothing and is not checked.
    key = _p256_key(parts, "trust anchor", PckChainInvalid)
    return _Anchor(parts, encode_body(parts.der), key, window, pck_window)


@cache
def _intel_anchor() -> _Anchor:
    """The pinned Intel root, prepared once per process: it is a constant of this source, not input."""
    return _make_anchor(intel_sgx_root_ca())


class _PckChain(NamedTuple):
    leaf: Cert
    intermediate: Cert
    leaf_key: ec.EllipticCurvePublicKey
    intermediate_key: ec.EllipticCurvePublicKey
    identity: PckIdentity
    windows: tuple[_Window, ...]


class _PreparedCollateral(NamedTuple):
    tcb_info: TcbInfo
    qe_identity: EnclaveIdentity
    root_crl: x509.CertificateRevocationList
    pck_crl: x509.CertificateRevocationList
    pck_crl_issuer: Cert
    #: Collateral signing certificates the root CA CRL revokes ("TCB signing", ...).
    revoked: tuple[str, ...]
    windows: tuple[_Window, ...]


# --- The verifier ---------------------------------------------------------------------------------


class Verifier:
    """Verifies DCAP quotes against collateral, chained to one trust anchor.

    The default anchor is the pinned Intel SGX Root CA; only a deliberate ``trust_anchor`` argument
    replaces it (the simulator's root in tests and demos).
    """

    def __init__(self, trust_anchor: x509.Certificate | bytes | None = None) -> None:
        if trust_anchor is None:
            anchor = intel_sgx_root_ca()
        elif isinstance(trust_anchor, x509.Certificate):
            anchor = trust_anchor
        else:
            try:
                anchor = (
                    x509.load_pem_x509_certificate(trust_anchor)
                    if trust_anchor.lstrip().startswith(b"-----BEGIN")
                    else x509.load_der_x509_certificate(trust_anchor)
                )
            except X509_ERRORS as e:
                raise PckChainInvalid(
                    "trust anchor is not a PEM or DER certificate"
                ) from e  # cause: the parser's detail
        self._anchor = anchor
        root = _intel_anchor() if trust_anchor is None else _make_anchor(anchor)
        self._root = root.cert
        self._root_body = root.body
        self._anchor_key = root.key
        self._anchor_window = root.window
        self._anchor_window_pck = root.pck_window
        self._pck_cache: _Lru[bytes, _PckChain] = _Lru(256)
        self._collateral_cache: _Lru[Collateral, _PreparedCollateral] = _Lru(64)
        self._chain_cache: _Lru[bytes, tuple[Cert, ec.EllipticCurvePublicKey]] = _Lru(64)
        self._qe_sig_cache: _Lru[tuple[bytes, bytes, bytes], bool] = _Lru(1024)
        self._att_key_cache: _Lru[bytes, ec.EllipticCurvePublicKey] = _Lru(1024)

    @property
    def trust_anchor(self) -> x509.Certificate:
        return self._anchor

    # -- public API ---------------------------------------------------------------------------------

    def pck_identity(self, quote: Quote) -> PckIdentity:
        """The PCK identity of ``quote``'s platform, from a chain checked against the trust anchor.

        Cached like :meth:`verify`'s chain check (which it shares), so callers can pick collateral by
        FMSPC and CA type without parsing certificates again and without trusting an unchecked leaf.
        Certificate validity at a given time is checked by :meth:`verify`, not here.
        """
        pck = self._pck_cache.get(quote.pck_chain_pem)
        if pck is None:
            batch = _Batch()
            pck = self._build_pck(quote.pck_chain_pem, batch, self._seen())
            batch.run()
        return pck.identity

    def quote_platform(self, quote: Quote) -> PckIdentity:
        """The PCK identity of the platform that produced ``quote``, proven without collateral.

        Checks the signature chain only: PCK chain to the trust anchor, QE report signed by the PCK
        key and binding the attestation key, quote signed by that key. No TCB status, expiry or
        revocation: this is for a party that holds a quote and must know *which* platform made it
        (the TD comparing its own platform with the provider's), not whether to trust that platform.
        """
        batch = _Batch()
        pck = self._pck_cache.get(quote.pck_chain_pem) or self._build_pck(
            quote.pck_chain_pem, batch, self._seen()
        )
        batch.raw(
            pck.leaf_key,
            quote.qe_report_signature,
            quote.qe_report.raw,
            lambda: QeReportSignatureInvalid(
                "QE report signature does not verify with the PCK certificate key"
            ),
        )
        batch.raw(
            self._attestation_key(quote),
            quote.signature,
            quote.signed_data,
            lambda: QuoteSignatureInvalid("quote signature does not verify with the attestation key"),
        )
        batch.run()
        self._check_qe_report_data(quote)
        return pck.identity

    def verify(self, quote: bytes | Quote, collateral: Collateral, now: int) -> VerifiedQuote:
        """Verify ``quote`` with ``collateral`` at Unix time ``now``; raise a typed error on failure."""
        q = quote if isinstance(quote, Quote) else parse_quote(quote)
        batch = _Batch()
        seen = self._seen()
        pck = self._pck_cache.get(q.pck_chain_pem) or self._build_pck(q.pck_chain_pem, batch, seen)
        prepared = self._collateral_cache.get(collateral) or self._build_collateral(
            collateral, batch, pck, seen
        )
        qe_sig_key = (q.qe_report.raw, q.qe_report_signature, q.pck_chain_pem)
        if self._qe_sig_cache.get(qe_sig_key) is None:
            batch.raw(
                pck.leaf_key,
                q.qe_report_signature,
                q.qe_report.raw,
                lambda: QeReportSignatureInvalid(
                    "QE report signature does not verify with the PCK certificate key"
                ),
            )
            batch.on_success(lambda: self._qe_sig_cache.put(qe_sig_key, True))
        batch.raw(
            self._attestation_key(q),
            q.signature,
            q.signed_data,
            lambda: QuoteSignatureInvalid("quote signature does not verify with the attestation key"),
        )
        batch.run()

        _check_windows(pck.windows, now)
        _check_windows(prepared.windows, now)
        self._check_revocation(pck, prepared)
        tcb_info, qe_identity = prepared.tcb_info, prepared.qe_identity
        self._check_binding(q, pck.identity, tcb_info, qe_identity)
        self._check_qe_report_data(q)
        qe_level = self._check_qe_identity(q, qe_identity)

        if q.is_tdx:
            td = q.td_report
            module_level = self._check_tdx_module(td, tcb_info)
            level = self._tdx_level(td, pck.identity, tcb_info)
            module_status = _STATUS[module_level.status] if module_level else None
            status = _converge(_STATUS[level.status], module_status)
        else:
            module_level = None
            module_status = None
            level = self._sgx_level(pck.identity, tcb_info)
            status = _STATUS[level.status]
        qe_status = _STATUS[qe_level.status]
        status = _converge(status, qe_status)

        advisories: dict[str, None] = {}
        for src in (
            level.advisory_ids,
            module_level.advisory_ids if module_level else (),
            qe_level.advisory_ids,
        ):
            advisories.update(dict.fromkeys(src))
        expiry = min(w.end for w in (*pck.windows, *prepared.windows))
        issued = max(
            tcb_info.issue_date,
            qe_identity.issue_date,
            int(prepared.root_crl.last_update_utc.timestamp()),
            int(prepared.pck_crl.last_update_utc.timestamp()),
        )
        return VerifiedQuote(
            quote=q,
            status=status,
            advisory_ids=tuple(advisories),
            pck=pck.identity,
            collateral_expiry=expiry,
            platform_status=_STATUS[level.status],
            qe_status=qe_status,
            tdx_module_status=module_status,
            tcb_date=level.tcb_date,
            tcb_evaluation_data_number=tcb_info.tcb_evaluation_data_number,
            collateral_issued=issued,
        )

    # -- PCK chain ------------------------------------------------------------------------------------

    def _seen(self) -> _Seen:
        """A new list of the certificates parsed in one call (see :func:`_load_chain`); the anchor is
        known from the start."""
        return [(self._root_body, self._root)]

    def _build_pck(self, pem: bytes, batch: _Batch, seen: _Seen) -> _PckChain:
        """Parse and check the chain's structure now; its signatures join ``batch``; cached on success."""
        # cryptography parses certificate fields lazily: a damaged field raises ValueError on access.
        try:
            pck = self._build_pck_inner(pem, batch, seen)
        except X509_ERRORS as e:
            raise PckChainInvalid(f"PCK certificate chain is malformed: {e}") from e
        batch.on_success(lambda: self._pck_cache.put(pem, pck))
        return pck

    def _build_pck_inner(self, pem: bytes, batch: _Batch, seen: _Seen) -> _PckChain:
        leaf, inter, root = _load_chain(pem, 3, "PCK certificate chain in the quote", PckChainInvalid, seen)
        if root.der != self._root.der:
            raise PckChainInvalid(f"PCK certificate chain {_other_root(root, self._root)}")
        if not is_ca(inter):
            raise PckChainInvalid("PCK intermediate CA certificate is not a CA certificate")
        _check_usage(inter, "PCK intermediate CA certificate", KU_KEY_CERT_SIGN, PckChainInvalid)
        leaf_cn = common_name(leaf.subject)
        if "SGX PCK Certificate" not in leaf_cn:
            raise PckChainInvalid(f"leaf certificate {leaf_cn!r} is not an SGX PCK certificate")
        _check_usage(leaf, "PCK certificate", KU_DIGITAL_SIGNATURE, PckChainInvalid)
        inter_key = _p256_key(inter, "PCK intermediate CA", PckChainInvalid)
        leaf_key = _p256_key(leaf, "PCK certificate", PckChainInvalid)
        batch.x509(
            self._anchor_key,
            inter.cert.signature,
            inter.tbs,
            inter.cert.signature_algorithm_oid,
            lambda: PckChainInvalid("PCK intermediate CA certificate is not signed by the trusted root"),
        )
        batch.x509(
            inter_key,
            leaf.cert.signature,
            leaf.tbs,
            leaf.cert.signature_algorithm_oid,
            lambda: PckChainInvalid("PCK certificate is not signed by the PCK intermediate CA in the chain"),
        )
        identity = pck_identity_of(leaf.extensions, common_name(leaf.issuer))
        windows = (
            _cert_window(leaf.cert, "PCK certificate", True),
            _cert_window(inter.cert, "PCK intermediate CA certificate", True),
            self._anchor_window_pck,
        )
        return _PckChain(leaf, inter, leaf_key, inter_key, identity, windows)

    # -- Collateral -----------------------------------------------------------------------------------

    def _signing_chain(
        self, pem: bytes, what: str, batch: _Batch, seen: _Seen
    ) -> tuple[Cert, ec.EllipticCurvePublicKey]:
        cached = self._chain_cache.get(pem)
        if cached is not None:
            return cached
        signer, root = _load_chain(pem, 2, what, CollateralMalformed, seen)
        if root.der != self._root.der:
            raise CollateralSignatureInvalid(f"{what} {_other_root(root, self._root)}")
        # Role separation: the root also signs the PCK CAs, which must not be able to sign collateral.
        if "SGX TCB Signing" not in common_name(signer.subject):
            raise CollateralSignatureInvalid(f"{what}: the signer is not an SGX TCB Signing certificate")
        _check_usage(
            signer, f"{what}: the signing certificate", KU_DIGITAL_SIGNATURE, CollateralSignatureInvalid
        )
        batch.x509(
            self._anchor_key,
            signer.cert.signature,
            signer.tbs,
            signer.cert.signature_algorithm_oid,
            lambda: CollateralSignatureInvalid(f"{what}: signing certificate is not signed by the root"),
        )
        result = (signer, _p256_key(signer, what, CollateralSignatureInvalid))
        batch.on_success(lambda: self._chain_cache.put(pem, result))
        return result

    def _load_crl(self, data: bytes, what: str) -> tuple[x509.CertificateRevocationList, bytes]:
        """The CRL and its DER bytes (PEM input is converted once)."""
        try:
            if data.startswith(b"-----BEGIN"):
                crl = x509.load_pem_x509_crl(data)
                return crl, crl.public_bytes(serialization.Encoding.DER)
            return x509.load_der_x509_crl(data), data
        except X509_ERRORS as e:
            raise CollateralMalformed(f"{what} is not a CRL: {e}") from e

    def _add_crl(
        self,
        batch: _Batch,
        *,
        crl: x509.CertificateRevocationList,
        der: bytes,
        key: ec.EllipticCurvePublicKey,
        issuer: Cert,
        what: str,
    ) -> None:
        tbs, extensions = crl_tbs(der)
        if OID_CRL_NUMBER not in extensions or OID_AUTHORITY_KEY_IDENTIFIER not in extensions:
            raise CollateralMalformed(f"{what} lacks the CRL Number or Authority Key Identifier extension")

        def fail() -> ProviderError:
            # Issuance is proven by the issuer key's signature; names are compared only to explain a
            # failure (building x509.Name objects costs more than the signature check itself).
            try:
                if crl.issuer != issuer.cert.subject:
                    return CollateralMismatch(
                        f"{what} was issued by {crl.issuer.rfc4514_string()!r}, "
                        f"expected {issuer.cert.subject.rfc4514_string()!r}"
                    )
            except X509_ERRORS:
                pass
            return CollateralSignatureInvalid(f"{what} signature is invalid")

        batch.x509(key, crl.signature, tbs, crl.signature_algorithm_oid, fail)

    @staticmethod
    def _crl_window(crl: x509.CertificateRevocationList, what: str) -> _Window:
        next_update = crl.next_update_utc
        if next_update is None:
            raise CollateralMalformed(f"{what} has no nextUpdate")
        return _Window(int(crl.last_update_utc.timestamp()), int(next_update.timestamp()), what, False)

    def _build_collateral(
        self, c: Collateral, batch: _Batch, pck: _PckChain, seen: _Seen
    ) -> _PreparedCollateral:
        if not any(cert is pck.intermediate for _, cert in seen):  # a cached chain: not parsed now
            seen.append((encode_body(pck.intermediate.der), pck.intermediate))
        try:
            prepared = self._build_collateral_inner(c, batch, pck, seen)
        except X509_ERRORS as e:
            raise CollateralMalformed(f"collateral certificate or CRL is malformed: {e}") from e
        batch.on_success(lambda: self._collateral_cache.put(c, prepared))
        return prepared

    def _build_collateral_inner(
        self, c: Collateral, batch: _Batch, pck: _PckChain, seen: _Seen
    ) -> _PreparedCollateral:
        tcb_signer, tcb_key = self._signing_chain(
            c.tcb_info_issuer_chain, "TCB info issuer chain", batch, seen
        )
        batch.raw(
            tcb_key,
            c.tcb_info_signature,
            c.tcb_info,
            lambda: CollateralSignatureInvalid("TCB info signature is invalid"),
        )
        if c.qe_identity_issuer_chain == c.tcb_info_issuer_chain:
            qe_signer, qe_key = tcb_signer, tcb_key
        else:
            qe_signer, qe_key = self._signing_chain(
                c.qe_identity_issuer_chain, "QE identity issuer chain", batch, seen
            )
        batch.raw(
            qe_key,
            c.qe_identity_signature,
            c.qe_identity,
            lambda: CollateralSignatureInvalid("QE identity signature is invalid"),
        )
        root_crl, root_der = self._load_crl(c.root_ca_crl, "root CA CRL")
        self._add_crl(
            batch, crl=root_crl, der=root_der, key=self._anchor_key, issuer=self._root, what="root CA CRL"
        )
        crl_ca, crl_root = _load_chain(
            c.pck_crl_issuer_chain, 2, "PCK CRL issuer chain", CollateralMalformed, seen
        )
        if crl_root.der != self._root.der:
            raise CollateralSignatureInvalid(f"PCK CRL issuer chain {_other_root(crl_root, self._root)}")
        if crl_ca.der != pck.intermediate.der:  # the same certificate is checked with the PCK chain
            batch.x509(
                self._anchor_key,
                crl_ca.cert.signature,
                crl_ca.tbs,
                crl_ca.cert.signature_algorithm_oid,
                lambda: CollateralSignatureInvalid("PCK CRL issuer certificate is not signed by the root"),
            )
        _check_usage(crl_ca, "PCK CRL issuer certificate", KU_CRL_SIGN, CollateralSignatureInvalid)
        pck_crl, pck_der = self._load_crl(c.pck_crl, "PCK CRL")
        crl_ca_key = (
            pck.intermediate_key
            if crl_ca.der == pck.intermediate.der
            else _p256_key(crl_ca, "PCK CRL issuer", CollateralSignatureInvalid)
        )
        self._add_crl(batch, crl=pck_crl, der=pck_der, key=crl_ca_key, issuer=crl_ca, what="PCK CRL")
        # The signed documents are parsed now (their signatures are checked with the batch): a parse
        # error on a forged document is still a typed error, and nothing is cached unless all verify.
        tcb_info = parse_tcb_info(c.tcb_info)
        qe_identity = parse_enclave_identity(c.qe_identity)
        # Judged after the batch (in _check_revocation): a CRL is believed only once its signature is.
        revoked = tuple(
            what
            for cert, what in (
                (tcb_signer, "TCB signing"),
                (qe_signer, "QE identity signing"),
                (crl_ca, "PCK CA"),
            )
            if root_crl.get_revoked_certificate_by_serial_number(cert.cert.serial_number) is not None
        )

        tcb_window = _cert_window(tcb_signer.cert, "TCB info signing certificate", False)
        windows = (
            self._anchor_window,
            tcb_window,
            tcb_window._replace(what="QE identity signing certificate")
            if qe_signer is tcb_signer
            else _cert_window(qe_signer.cert, "QE identity signing certificate", False),
            _cert_window(crl_ca.cert, "PCK CRL issuer certificate", False),
            self._crl_window(root_crl, "root CA CRL"),
            self._crl_window(pck_crl, "PCK CRL"),
            _Window(tcb_info.issue_date, tcb_info.next_update, "TCB info", False),
            _Window(qe_identity.issue_date, qe_identity.next_update, "QE identity", False),
        )
        return _PreparedCollateral(tcb_info, qe_identity, root_crl, pck_crl, crl_ca, revoked, windows)

    def _check_revocation(self, pck: _PckChain, c: _PreparedCollateral) -> None:
        try:
            self._check_revocation_inner(pck, c)
        except X509_ERRORS as e:
            raise CollateralMalformed(f"CRL is malformed: {e}") from e

    def _check_revocation_inner(self, pck: _PckChain, c: _PreparedCollateral) -> None:
        if c.revoked:
            raise CertificateRevoked(f"the {c.revoked[0]} certificate is revoked by the root CA CRL")
        inter, crl_ca = pck.intermediate.cert, c.pck_crl_issuer.cert
        if pck.intermediate.der != c.pck_crl_issuer.der and inter.public_key() != crl_ca.public_key():
            raise CollateralMismatch(
                f"the PCK CRL is from {_cn(crl_ca.subject)!r} but the PCK certificate was issued "
                f"by {_cn(pck.leaf.cert.issuer)!r}: fetch the PCK CRL for ca={pck.identity.ca_type}"
            )
        if c.root_crl.get_revoked_certificate_by_serial_number(inter.serial_number) is not None:
            raise CertificateRevoked("the PCK intermediate CA certificate is revoked by the root CA CRL")
        if c.pck_crl.get_revoked_certificate_by_serial_number(pck.leaf.cert.serial_number) is not None:
            raise PckRevoked("the PCK certificate of this platform is revoked")

    @staticmethod
    def _check_binding(q: Quote, pck: PckIdentity, tcb: TcbInfo, qe: EnclaveIdentity) -> None:
        want = "TDX" if q.is_tdx else "SGX"
        if tcb.id != want:
            raise CollateralMismatch(f"TCB info is for {tcb.id} but the quote is a {want} quote")
        want_qe = "TD_QE" if q.is_tdx else "QE"
        if qe.id != want_qe:
            raise CollateralMismatch(f"QE identity is {qe.id!r} but a {want} quote needs {want_qe!r}")
        if tcb.fmspc != pck.fmspc:
            raise FmspcMismatch(
                f"TCB info is for FMSPC {tcb.fmspc.hex().upper()}, "
                f"the platform's is {pck.fmspc.hex().upper()}"
            )
        if tcb.pce_id != pck.pce_id:
            raise CollateralMismatch(
                f"TCB info is for PCE-ID {tcb.pce_id.hex()}, the platform's is {pck.pce_id.hex()}"
            )

    # -- QE and quote ---------------------------------------------------------------------------------

    @staticmethod
    def _check_qe_report_data(q: Quote) -> None:
        expected = hashlib.sha256(q.attestation_key + q.qe_auth_data).digest()
        rd = q.qe_report.report_data
        if rd[:32] != expected or any(rd[32:]):
            raise QeReportDataMismatch("QE report data does not bind the quote's attestation key")

    @staticmethod
    def _check_qe_identity(q: Quote, ident: EnclaveIdentity) -> ModuleTcbLevel:
        r = q.qe_report
        if not _masked_equal(r.miscselect.to_bytes(4, "little"), ident.miscselect, ident.miscselect_mask):
            raise QeIdentityMismatch("QE MISCSELECT does not match the QE identity")
        if not _masked_equal(r.attributes, ident.attributes, ident.attributes_mask):
            raise QeIdentityMismatch("QE attributes do not match the QE identity")
        if r.mrsigner != ident.mrsigner:
            raise QeIdentityMismatch("QE MRSIGNER does not match the QE identity")
        if r.isvprodid != ident.isvprodid:
            raise QeIdentityMismatch(
                f"QE ISVPRODID {r.isvprodid} does not match the QE identity ({ident.isvprodid})"
            )
        for level in sorted(ident.tcb_levels, key=lambda lv: lv.isvsvn, reverse=True):
            if level.isvsvn <= r.isvsvn:
                if level.status not in _IDENTITY_STATUSES:
                    raise CollateralMalformed(f"QE identity level has unknown status {level.status!r}")
                return level
        raise TcbLevelNotFound(f"QE ISVSVN {r.isvsvn} is below every level of the QE identity")

    def _attestation_key(self, q: Quote) -> ec.EllipticCurvePublicKey:
        def make() -> ec.EllipticCurvePublicKey:
            try:
                return ec.EllipticCurvePublicKey.from_encoded_point(
                    ec.SECP256R1(), b"\x04" + q.attestation_key
                )
            except ValueError as e:
                raise QuoteSignatureInvalid("attestation key is not a valid P-256 point") from e

        return self._att_key_cache.get_or_make(q.attestation_key, make)

    # -- TCB levels -----------------------------------------------------------------------------------

    @staticmethod
    def _check_tdx_module(td: TdReport, tcb: TcbInfo) -> ModuleTcbLevel | None:
        major = td.tee_tcb_svn[1]
        module: TdxModuleIdentity | None = tcb.tdx_module
        if major > 0:
            want = f"TDX_{major:02X}"
            module = next((m for m in tcb.tdx_module_identities if m.id.upper() == want), None)
            if module is None:
                raise TdxModuleMismatch(f"TCB info has no identity for TDX module {want}")
        if module is None:
            raise CollateralMalformed("TDX TCB info lacks tdxModule")
        if td.mrsignerseam != module.mrsigner:
            raise TdxModuleMismatch("MRSIGNERSEAM does not match the TDX module identity")
        if not _masked_equal(td.seam_attributes, module.attributes, module.attributes_mask):
            raise TdxModuleMismatch("SEAM attributes do not match the TDX module identity")
        if major == 0:
            return None
        for level in sorted(module.tcb_levels, key=lambda lv: lv.isvsvn, reverse=True):
            if td.tee_tcb_svn[0] >= level.isvsvn:
                if level.status not in _IDENTITY_STATUSES:
                    raise CollateralMalformed(f"TDX module level has unknown status {level.status!r}")
                return level
        raise TcbLevelNotFound(f"TDX module {module.id} SVN {td.tee_tcb_svn[0]} is below every level")

    @staticmethod
    def _sgx_match(pck: PckIdentity, level: TcbLevel) -> bool:
        if len(pck.tcb_components) != len(level.sgx_components):
            raise ValueError("SGX TCB component lists of different lengths")
        return pck.pcesvn >= level.pcesvn and all(map(ge, pck.tcb_components, level.sgx_components))

    def _sgx_level(self, pck: PckIdentity, tcb: TcbInfo) -> TcbLevel:
        for level in tcb.tcb_levels:
            if self._sgx_match(pck, level):
                return _known_status(level)
        raise TcbLevelNotFound("the platform's SGX TCB (PCK certificate) matches no TCB level")

    def _tdx_level(self, td: TdReport, pck: PckIdentity, tcb: TcbInfo) -> TcbLevel:
        start = 2 if td.tee_tcb_svn[1] > 0 else 0
        sgx_matched = False
        for level in tcb.tcb_levels:
            if not self._sgx_match(pck, level):
                continue
            sgx_matched = True
            comps = level.tdx_components or ()
            if len(comps) == 16 and all(map(ge, td.tee_tcb_svn[start:16], comps[start:])):
                return _known_status(level)
        if not sgx_matched:
            raise TcbLevelNotFound("the platform's SGX TCB (PCK certificate) matches no TCB level")
        raise TcbLevelNotFound("the TD's TEE_TCB_SVN matches no TDX TCB level")


def _masked_equal(value: bytes, expected: bytes, mask: bytes) -> bool:
    """``value & mask == expected & mask`` bytewise, for equal-length byte strings."""
    if not len(value) == len(expected) == len(mask):
        raise ValueError("masked comparison of byte strings of different lengths")
    m = int.from_bytes(mask, "little")
    return int.from_bytes(value, "little") & m == int.from_bytes(expected, "little") & m


def _known_status(level: TcbLevel) -> TcbLevel:
    if level.status not in _PLATFORM_STATUSES:
        raise CollateralMalformed(f"TCB level has unknown status {level.status!r}")
    return level


def _converge(platform: TcbStatus, other: TcbStatus | None) -> TcbStatus:
    """Merge a platform status with a QE or TDX module status as Intel's QVL does."""
    if other is TcbStatus.OUT_OF_DATE:
        if platform in (TcbStatus.UP_TO_DATE, TcbStatus.SW_HARDENING_NEEDED):
            return TcbStatus.OUT_OF_DATE
        if platform in (TcbStatus.CONFIGURATION_NEEDED, TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED):
            return TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED
    if other is TcbStatus.REVOKED:
        return TcbStatus.REVOKED
    return platform


__all__ = ["BodyType", "TcbStatus", "TeeType", "VerifiedQuote", "Verifier"]
