"""A test PKI shaped like Intel's SGX PKI: root CA, PCK Platform CA, PCK certificates, TCB signing.

Names, key types, signature algorithm, extensions and their order follow Intel's production
certificates (Intel's "SGX PCK Certificate and CRL Profile" and PCS API specification), so that the production
verifier walks exactly the same code paths on simulated chains. Every subject says it is simulated
(``CN=Simulated Intel SGX ...``, ``O=Simulated Intel Corporation``) while keeping the CN phrases
verifiers look for ("SGX Root CA", "SGX PCK Platform CA", "SGX PCK Certificate", "SGX TCB Signing").
Nothing chains to Intel's real root: a verifier pinned to Intel rejects every simulated quote.

All functions are pure: keys, serials and times are parameters.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from . import der

ORGANIZATION = "Simulated Intel Corporation"
ROOT_CN = "Simulated Intel SGX Root CA"
PLATFORM_CA_CN = "Simulated Intel SGX PCK Platform CA"
PCK_CN = "Simulated Intel SGX PCK Certificate"
TCB_SIGNING_CN = "Simulated Intel SGX TCB Signing"

#: Where a relying party would fetch the CRLs: the simulator's own PCCS-compatible server.
ROOT_CRL_URL = "https://localhost:8081/sgx/certification/v4/rootcacrl"
PCK_CRL_URL = "https://localhost:8081/sgx/certification/v4/pckcrl?ca=platform&encoding=der"

#: Validity of every simulated certificate: the window of Intel's root (2018-05-21 .. 2049-12-31), so
#: that tests can verify at any fixed time of their choosing without certificates getting in the way.
NOT_BEFORE = 1526899510
NOT_AFTER = 2524607999

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
SGX_TYPE_SCALABLE = 1


def utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def name(common_name: str) -> x509.Name:
    """Intel's RDN order: CN, O, L, ST, C."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


@dataclass(frozen=True, slots=True)
class PckTcb:
    """What goes into a PCK certificate's SGX extension."""

    ppid: bytes
    components: tuple[int, ...]
    pcesvn: int
    cpusvn: bytes
    pce_id: bytes
    fmspc: bytes
    platform_instance_id: bytes
    dynamic_platform: bool = True
    cached_keys: bool = True
    smt_enabled: bool = True


def sgx_extension_der(tcb: PckTcb) -> bytes:
    """The DER value of the SGX extension of a Platform-CA PCK certificate (7 top-level entries)."""
    p = SGX_EXTENSION_OID
    tcb_items = [der.pair(f"{p}.2.{i + 1}", der.integer(svn)) for i, svn in enumerate(tcb.components)]
    tcb_items.append(der.pair(f"{p}.2.17", der.integer(tcb.pcesvn)))
    tcb_items.append(der.pair(f"{p}.2.18", der.octets(tcb.cpusvn)))
    return der.sequence(
        der.pair(f"{p}.1", der.octets(tcb.ppid)),
        der.pair(f"{p}.2", der.sequence(*tcb_items)),
        der.pair(f"{p}.3", der.octets(tcb.pce_id)),
        der.pair(f"{p}.4", der.octets(tcb.fmspc)),
        der.pair(f"{p}.5", der.enumerated(SGX_TYPE_SCALABLE)),
        der.pair(f"{p}.6", der.octets(tcb.platform_instance_id)),
        der.pair(
            f"{p}.7",
            der.sequence(
                der.pair(f"{p}.7.1", der.boolean(tcb.dynamic_platform)),
                der.pair(f"{p}.7.2", der.boolean(tcb.cached_keys)),
                der.pair(f"{p}.7.3", der.boolean(tcb.smt_enabled)),
            ),
        ),
    )


def _crl_dp(url: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints(
        [
            x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(url)],
                relative_name=None,
                reasons=None,
                crl_issuer=None,
            )
        ]
    )


_CA_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_SIGNING_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=True,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _issue(
    *,
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    serial: int,
    ca_path_length: int | None,
    is_ca: bool,
    crl_url: str,
    sgx_extension: bytes | None = None,
) -> x509.Certificate:
    """One certificate with Intel's extension set, in Intel's order: AKI, CRL DP, SKI, KU, BC[, SGX]."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(utc(NOT_BEFORE))
        .not_valid_after(utc(NOT_AFTER))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
        .add_extension(_crl_dp(crl_url), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_CA_USAGE if is_ca else _SIGNING_USAGE, critical=True)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=ca_path_length), critical=True)
    )
    if sgx_extension is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION_OID), sgx_extension),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def root_certificate(key: ec.EllipticCurvePrivateKey, serial: int) -> x509.Certificate:
    return _issue(
        subject=name(ROOT_CN),
        issuer=name(ROOT_CN),
        public_key=key.public_key(),
        issuer_key=key,
        serial=serial,
        ca_path_length=1,
        is_ca=True,
        crl_url=ROOT_CRL_URL,
    )


def platform_ca_certificate(
    key: ec.EllipticCurvePrivateKey, root_key: ec.EllipticCurvePrivateKey, serial: int
) -> x509.Certificate:
    return _issue(
        subject=name(PLATFORM_CA_CN),
        issuer=name(ROOT_CN),
        public_key=key.public_key(),
        issuer_key=root_key,
        serial=serial,
        ca_path_length=0,
        is_ca=True,
        crl_url=ROOT_CRL_URL,
    )


def tcb_signing_certificate(
    key: ec.EllipticCurvePrivateKey, root_key: ec.EllipticCurvePrivateKey, serial: int
) -> x509.Certificate:
    return _issue(
        subject=name(TCB_SIGNING_CN),
        issuer=name(ROOT_CN),
        public_key=key.public_key(),
        issuer_key=root_key,
        serial=serial,
        ca_path_length=None,
        is_ca=False,
        crl_url=ROOT_CRL_URL,
    )


def pck_certificate(
    public_key: ec.EllipticCurvePublicKey,
    platform_ca_key: ec.EllipticCurvePrivateKey,
    serial: int,
    tcb: PckTcb,
) -> x509.Certificate:
    return _issue(
        subject=name(PCK_CN),
        issuer=name(PLATFORM_CA_CN),
        public_key=public_key,
        issuer_key=platform_ca_key,
        serial=serial,
        ca_path_length=None,
        is_ca=False,
        crl_url=PCK_CRL_URL,
        sgx_extension=sgx_extension_der(tcb),
    )


def crl(
    issuer_cert: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    this_update: int,
    next_update: int,
    revoked: Iterable[int] = (),
    crl_number: int = 1,
) -> bytes:
    """A DER CRL like Intel's: issuer name, CRL Number and Authority Key Identifier extensions."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(utc(this_update))
        .next_update(utc(next_update))
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(utc(min(this_update, NOT_AFTER)))
            .build()
        )
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(Encoding.DER)
