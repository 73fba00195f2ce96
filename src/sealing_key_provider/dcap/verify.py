"""DCAP quote verification: Intel's algorithm over a parsed quote and already-fetched collateral.

Pure: bytes and collateral in, a typed result or a typed error out; ``now`` is a parameter. The order
of checks follows Intel's QVL (see ``shared/reference/tee-interfaces.md`` section 3), linearised so
that a failure names the part that is broken: the PCK chain, the collateral, the QE, or the quote.

Expiry policy: fail closed. Any certificate, CRL or collateral document outside its validity window at
``now`` is an error (``PCK_CHAIN_INVALID``, ``COLLATERAL_EXPIRED``, ``COLLATERAL_NOT_YET_VALID``). Intel's
QvE only flags this; a key-release service must not hand out keys on stale revocation data.

Caching: a :class:`Verifier` remembers, keyed by exact bytes, what does not depend on the quote: the
PCK chain check (per chain), the collateral check (signatures of TCB info, QE identity and CRLs, their
chains, per collateral), the QE report signature (per QE report, signature and PCK key) and the parsed
attestation keys. Time windows are re-checked on every call, so a cache hit can never revive an
expired document. Caches are bounded LRUs guarded by a lock, so one verifier can serve many threads.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

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
from .pck import PckIdentity, pck_identity
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


@dataclass(frozen=True, slots=True)
class _Window:
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


def _raw_sig_ok(key: ec.EllipticCurvePublicKey, sig: bytes, data: bytes) -> bool:
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"))
    try:
        key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _p256_key(cert: x509.Certificate, what: str, err: type[ProviderError]) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise err(f"{what} key is not ECDSA P-256")
    return key


_ECDSA_SHA256 = x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256


def _signed_by(
    tbs: bytes, signature: bytes, algorithm: x509.ObjectIdentifier, key: ec.EllipticCurvePublicKey
) -> bool:
    """An X.509 signature (certificate or CRL) by ``key``; Intel's PKI uses ecdsa-with-SHA256 only."""
    if algorithm != _ECDSA_SHA256:
        return False
    try:
        key.verify(signature, tbs, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _issued_by(child: x509.Certificate, parent_key: ec.EllipticCurvePublicKey) -> bool:
    """Issuance is proven by the parent key's signature. Names are not compared: with pinned keys they add
    nothing, and building ``x509.Name`` objects would cost more than the signature check itself."""
    return _signed_by(child.tbs_certificate_bytes, child.signature, child.signature_algorithm_oid, parent_key)


def _der_tbs(der: bytes) -> bytes:
    """The to-be-signed part of a DER CRL, sliced from the input (cryptography re-encodes it, slowly).

    A CRL is SEQUENCE { tbsCertList SEQUENCE, signatureAlgorithm, signature }: we return the first inner
    element with its header. The slice is signature-checked, so a wrong slice can only fail closed.
    """

    def header(pos: int) -> tuple[int, int]:
        if pos + 2 > len(der) or der[pos] != 0x30:
            raise CollateralMalformed("CRL is not a DER SEQUENCE")
        n = der[pos + 1]
        pos += 2
        if n & 0x80:
            k = n & 0x7F
            if not 0 < k <= 4 or pos + k > len(der):
                raise CollateralMalformed("CRL has a bad DER length")
            n = int.from_bytes(der[pos : pos + k], "big")
            pos += k
        if pos + n > len(der):
            raise CollateralMalformed("CRL DER length runs past its end")
        return pos, n

    inner, _ = header(0)
    body, length = header(inner)
    return der[inner : body + length]


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


def _load_chain(pem: bytes, count: int, what: str, err: type[ProviderError]) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise err(f"{what} is not a PEM certificate chain: {e}") from e
    if len(certs) != count:
        raise err(f"{what} must hold {count} certificates, it holds {len(certs)}")
    return certs


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


# --- Prepared (cached) pieces ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PckChain:
    leaf: x509.Certificate
    intermediate: x509.Certificate
    leaf_key: ec.EllipticCurvePublicKey
    identity: PckIdentity
    windows: tuple[_Window, ...]


@dataclass(frozen=True, slots=True)
class _PreparedCollateral:
    tcb_info: TcbInfo
    qe_identity: EnclaveIdentity
    root_crl: x509.CertificateRevocationList
    pck_crl: x509.CertificateRevocationList
    pck_crl_issuer: x509.Certificate
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
            except ValueError as e:
                raise PckChainInvalid(f"trust anchor is not a certificate: {e}") from e
        self._anchor = anchor
        # The anchor is trusted by configuration, so its self-signature proves nothing and is not checked.
        self._anchor_key = _p256_key(anchor, "trust anchor", PckChainInvalid)
        self._anchor_window = _cert_window(anchor, "trust anchor (root CA)", False)
        self._pck_cache: _Lru[bytes, _PckChain] = _Lru(256)
        self._collateral_cache: _Lru[Collateral, _PreparedCollateral] = _Lru(64)
        self._chain_cache: _Lru[bytes, tuple[x509.Certificate, ec.EllipticCurvePublicKey]] = _Lru(64)
        self._qe_sig_cache: _Lru[tuple[bytes, bytes, bytes], bool] = _Lru(1024)
        self._att_key_cache: _Lru[bytes, ec.EllipticCurvePublicKey] = _Lru(1024)
        self._issued_cache: _Lru[x509.Certificate, bool] = _Lru(256)

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
        return self._pck_cache.get_or_make(
            quote.pck_chain_pem, lambda: self._prepare_pck(quote.pck_chain_pem)
        ).identity

    def verify(self, quote: bytes | Quote, collateral: Collateral, now: int) -> VerifiedQuote:
        """Verify ``quote`` with ``collateral`` at Unix time ``now``; raise a typed error on failure."""
        q = quote if isinstance(quote, Quote) else parse_quote(quote)
        pck = self._pck_cache.get_or_make(q.pck_chain_pem, lambda: self._prepare_pck(q.pck_chain_pem))
        prepared = self._collateral_cache.get_or_make(
            collateral, lambda: self._prepare_collateral(collateral)
        )
        _check_windows(pck.windows, now)
        _check_windows(prepared.windows, now)
        self._check_revocation(pck, prepared)
        tcb_info, qe_identity = prepared.tcb_info, prepared.qe_identity
        self._check_binding(q, pck.identity, tcb_info, qe_identity)
        self._check_qe_report(q, pck)
        qe_level = self._check_qe_identity(q, qe_identity)
        self._check_quote_signature(q)

        if q.is_tdx:
            td = q.td_report
            module_level = self._check_tdx_module(td, tcb_info)
            level = self._tdx_level(td, pck.identity, tcb_info)
            module_status = TcbStatus(module_level.status) if module_level else None
            status = _converge(TcbStatus(level.status), module_status)
        else:
            module_level = None
            module_status = None
            level = self._sgx_level(pck.identity, tcb_info)
            status = TcbStatus(level.status)
        qe_status = TcbStatus(qe_level.status)
        status = _converge(status, qe_status)

        advisories: dict[str, None] = {}
        for src in (
            level.advisory_ids,
            module_level.advisory_ids if module_level else (),
            qe_level.advisory_ids,
        ):
            advisories.update(dict.fromkeys(src))
        expiry = min(w.end for w in (*pck.windows, *prepared.windows))
        return VerifiedQuote(
            quote=q,
            status=status,
            advisory_ids=tuple(advisories),
            pck=pck.identity,
            collateral_expiry=expiry,
            platform_status=TcbStatus(level.status),
            qe_status=qe_status,
            tdx_module_status=module_status,
            tcb_date=level.tcb_date,
            tcb_evaluation_data_number=tcb_info.tcb_evaluation_data_number,
        )

    def _issued_by_anchor(self, child: x509.Certificate) -> bool:
        # The PCK CA signed by the root appears in the quote and again in the PCK CRL issuer chain.
        return self._issued_cache.get_or_make(child, lambda: _issued_by(child, self._anchor_key))

    # -- PCK chain ------------------------------------------------------------------------------------

    def _prepare_pck(self, pem: bytes) -> _PckChain:
        # cryptography parses certificate fields lazily: a damaged field raises ValueError on access.
        try:
            return self._prepare_pck_inner(pem)
        except ValueError as e:
            raise PckChainInvalid(f"PCK certificate chain is malformed: {e}") from e

    def _prepare_pck_inner(self, pem: bytes) -> _PckChain:
        leaf, inter, root = _load_chain(pem, 3, "PCK certificate chain in the quote", PckChainInvalid)
        if root != self._anchor:
            raise PckChainInvalid(
                f"PCK certificate chain ends in {root.subject.rfc4514_string()!r}, not the trusted root "
                f"{self._anchor.subject.rfc4514_string()!r}"
            )
        if not self._issued_by_anchor(inter) or not _is_ca(inter):
            raise PckChainInvalid("PCK intermediate CA certificate is not a CA signed by the trusted root")
        if not _issued_by(leaf, _p256_key(inter, "PCK intermediate CA", PckChainInvalid)):
            raise PckChainInvalid("PCK certificate is not signed by the PCK intermediate CA in the chain")
        if "SGX PCK Certificate" not in _cn(leaf.subject):
            raise PckChainInvalid(f"leaf certificate {_cn(leaf.subject)!r} is not an SGX PCK certificate")
        leaf_key = _p256_key(leaf, "PCK certificate", PckChainInvalid)
        identity = pck_identity(leaf)
        windows = (
            _cert_window(leaf, "PCK certificate", True),
            _cert_window(inter, "PCK intermediate CA certificate", True),
            _cert_window(root, "root CA certificate", True),
        )
        return _PckChain(leaf, inter, leaf_key, identity, windows)

    # -- Collateral -----------------------------------------------------------------------------------

    def _signing_chain(self, pem: bytes, what: str) -> tuple[x509.Certificate, ec.EllipticCurvePublicKey]:
        def make() -> tuple[x509.Certificate, ec.EllipticCurvePublicKey]:
            signer, root = _load_chain(pem, 2, what, CollateralMalformed)
            if root != self._anchor:
                raise CollateralSignatureInvalid(f"{what} does not end in the trusted root")
            if not self._issued_by_anchor(signer):
                raise CollateralSignatureInvalid(f"{what}: signing certificate is not signed by the root")
            # Role separation: the root also signs the PCK CAs, which must not be able to sign collateral.
            if "SGX TCB Signing" not in _cn(signer.subject):
                raise CollateralSignatureInvalid(f"{what}: the signer is not an SGX TCB Signing certificate")
            return signer, _p256_key(signer, what, CollateralSignatureInvalid)

        return self._chain_cache.get_or_make(pem, make)

    def _load_crl(self, data: bytes, what: str) -> tuple[x509.CertificateRevocationList, bytes]:
        """The CRL and its DER bytes (PEM input is converted once)."""
        try:
            if data.startswith(b"-----BEGIN"):
                crl = x509.load_pem_x509_crl(data)
                return crl, crl.public_bytes(serialization.Encoding.DER)
            return x509.load_der_x509_crl(data), data
        except ValueError as e:
            raise CollateralMalformed(f"{what} is not a CRL: {e}") from e

    def _check_crl(
        self,
        crl: x509.CertificateRevocationList,
        der: bytes,
        key: ec.EllipticCurvePublicKey,
        issuer: x509.Certificate,
        what: str,
    ) -> None:
        if not _signed_by(_der_tbs(der), crl.signature, crl.signature_algorithm_oid, key):
            # Names are compared only to explain the failure (see _issued_by).
            if crl.issuer != issuer.subject:
                raise CollateralMismatch(
                    f"{what} was issued by {crl.issuer.rfc4514_string()!r}, "
                    f"expected {issuer.subject.rfc4514_string()!r}"
                )
            raise CollateralSignatureInvalid(f"{what} signature is invalid")
        try:
            crl.extensions.get_extension_for_class(x509.CRLNumber)
            crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        except x509.ExtensionNotFound as e:
            raise CollateralMalformed(
                f"{what} lacks the CRL Number or Authority Key Identifier extension"
            ) from e
        except ValueError as e:
            raise CollateralMalformed(f"{what} has malformed extensions: {e}") from e

    @staticmethod
    def _crl_window(crl: x509.CertificateRevocationList, what: str) -> _Window:
        next_update = crl.next_update_utc
        if next_update is None:
            raise CollateralMalformed(f"{what} has no nextUpdate")
        return _Window(int(crl.last_update_utc.timestamp()), int(next_update.timestamp()), what, False)

    def _prepare_collateral(self, c: Collateral) -> _PreparedCollateral:
        try:
            return self._prepare_collateral_inner(c)
        except ValueError as e:
            raise CollateralMalformed(f"collateral certificate or CRL is malformed: {e}") from e

    def _prepare_collateral_inner(self, c: Collateral) -> _PreparedCollateral:
        tcb_signer, tcb_key = self._signing_chain(c.tcb_info_issuer_chain, "TCB info issuer chain")
        if not _raw_sig_ok(tcb_key, c.tcb_info_signature, c.tcb_info):
            raise CollateralSignatureInvalid("TCB info signature is invalid")
        qe_signer, qe_key = self._signing_chain(c.qe_identity_issuer_chain, "QE identity issuer chain")
        if not _raw_sig_ok(qe_key, c.qe_identity_signature, c.qe_identity):
            raise CollateralSignatureInvalid("QE identity signature is invalid")
        tcb_info = parse_tcb_info(c.tcb_info)
        qe_identity = parse_enclave_identity(c.qe_identity)

        root_crl, root_der = self._load_crl(c.root_ca_crl, "root CA CRL")
        self._check_crl(root_crl, root_der, self._anchor_key, self._anchor, "root CA CRL")
        crl_ca, crl_root = _load_chain(c.pck_crl_issuer_chain, 2, "PCK CRL issuer chain", CollateralMalformed)
        if crl_root != self._anchor:
            raise CollateralSignatureInvalid("PCK CRL issuer chain does not end in the trusted root")
        if not self._issued_by_anchor(crl_ca):
            raise CollateralSignatureInvalid("PCK CRL issuer certificate is not signed by the root")
        pck_crl, pck_der = self._load_crl(c.pck_crl, "PCK CRL")
        crl_ca_key = _p256_key(crl_ca, "PCK CRL issuer", CollateralSignatureInvalid)
        self._check_crl(pck_crl, pck_der, crl_ca_key, crl_ca, "PCK CRL")
        for cert, what in (
            (tcb_signer, "TCB signing"),
            (qe_signer, "QE identity signing"),
            (crl_ca, "PCK CA"),
        ):
            if root_crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                raise CertificateRevoked(f"the {what} certificate is revoked by the root CA CRL")

        windows = (
            self._anchor_window,
            _cert_window(tcb_signer, "TCB info signing certificate", False),
            _cert_window(qe_signer, "QE identity signing certificate", False),
            _cert_window(crl_ca, "PCK CRL issuer certificate", False),
            self._crl_window(root_crl, "root CA CRL"),
            self._crl_window(pck_crl, "PCK CRL"),
            _Window(tcb_info.issue_date, tcb_info.next_update, "TCB info", False),
            _Window(qe_identity.issue_date, qe_identity.next_update, "QE identity", False),
        )
        return _PreparedCollateral(tcb_info, qe_identity, root_crl, pck_crl, crl_ca, windows)

    def _check_revocation(self, pck: _PckChain, c: _PreparedCollateral) -> None:
        try:
            self._check_revocation_inner(pck, c)
        except ValueError as e:
            raise CollateralMalformed(f"CRL is malformed: {e}") from e

    def _check_revocation_inner(self, pck: _PckChain, c: _PreparedCollateral) -> None:
        if (
            pck.intermediate != c.pck_crl_issuer
            and pck.intermediate.public_key() != c.pck_crl_issuer.public_key()
        ):
            raise CollateralMismatch(
                f"the PCK CRL is from {_cn(c.pck_crl_issuer.subject)!r} but the PCK certificate was issued "
                f"by {_cn(pck.leaf.issuer)!r}: fetch the PCK CRL for ca={pck.identity.ca_type}"
            )
        if c.root_crl.get_revoked_certificate_by_serial_number(pck.intermediate.serial_number) is not None:
            raise CertificateRevoked("the PCK intermediate CA certificate is revoked by the root CA CRL")
        if c.pck_crl.get_revoked_certificate_by_serial_number(pck.leaf.serial_number) is not None:
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

    # -- QE and quote signatures ---------------------------------------------------------------------

    def _check_qe_report(self, q: Quote, pck: _PckChain) -> None:
        key = (q.qe_report.raw, q.qe_report_signature, q.pck_chain_pem)

        def make() -> bool:
            if not _raw_sig_ok(pck.leaf_key, q.qe_report_signature, q.qe_report.raw):
                raise QeReportSignatureInvalid(
                    "QE report signature does not verify with the PCK certificate key"
                )
            return True

        self._qe_sig_cache.get_or_make(key, make)
        expected = hashlib.sha256(q.attestation_key + q.qe_auth_data).digest()
        rd = q.qe_report.report_data
        if rd[:32] != expected or any(rd[32:]):
            raise QeReportDataMismatch("QE report data does not bind the quote's attestation key")

    @staticmethod
    def _check_qe_identity(q: Quote, ident: EnclaveIdentity) -> ModuleTcbLevel:
        r = q.qe_report
        misc = r.miscselect.to_bytes(4, "little")
        if bytes(a & m for a, m in zip(misc, ident.miscselect_mask, strict=True)) != bytes(
            a & m for a, m in zip(ident.miscselect, ident.miscselect_mask, strict=True)
        ):
            raise QeIdentityMismatch("QE MISCSELECT does not match the QE identity")
        if bytes(a & m for a, m in zip(r.attributes, ident.attributes_mask, strict=True)) != bytes(
            a & m for a, m in zip(ident.attributes, ident.attributes_mask, strict=True)
        ):
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

    def _check_quote_signature(self, q: Quote) -> None:
        def make() -> ec.EllipticCurvePublicKey:
            try:
                return ec.EllipticCurvePublicKey.from_encoded_point(
                    ec.SECP256R1(), b"\x04" + q.attestation_key
                )
            except ValueError as e:
                raise QuoteSignatureInvalid("attestation key is not a valid P-256 point") from e

        key = self._att_key_cache.get_or_make(q.attestation_key, make)
        if not _raw_sig_ok(key, q.signature, q.signed_data):
            raise QuoteSignatureInvalid("quote signature does not verify with the attestation key")

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
        mask = module.attributes_mask
        if bytes(a & m for a, m in zip(td.seam_attributes, mask, strict=True)) != bytes(
            a & m for a, m in zip(module.attributes, mask, strict=True)
        ):
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
        return pck.pcesvn >= level.pcesvn and all(
            p >= lv for p, lv in zip(pck.tcb_components, level.sgx_components, strict=True)
        )

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
            if len(comps) == 16 and all(td.tee_tcb_svn[i] >= comps[i] for i in range(start, 16)):
                return _known_status(level)
        if not sgx_matched:
            raise TcbLevelNotFound("the platform's SGX TCB (PCK certificate) matches no TCB level")
        raise TcbLevelNotFound("the TD's TEE_TCB_SVN matches no TDX TCB level")


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
