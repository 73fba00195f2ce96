"""RA-TLS certificates in Gramine's format: made by the provider, read and checked by clients.

Gramine's ``ra_tls_attest`` makes a self-signed certificate (ECDSA P-384 key made in the enclave,
SHA-256 signature, subject and issuer ``CN=RATLS,O=GramineDevelopers,C=US``, serial 1) carrying two
non-critical extensions, each with its own SGX quote:

- the legacy extension, OID 1.2.840.113741.1337.6: the raw quote, whose report data is
  ``SHA-256(SubjectPublicKeyInfo DER) || 32 zero bytes``;
- the TCG DICE "tagged evidence" extension, OID 2.23.133.5.4.9: CBOR tag 60000 over the array
  ``[bstr quote, bstr claims]``, where claims is the serialized map ``{"pubkey-hash": bstr(serialized
  [1, bstr SHA-256(SPKI DER)])}`` (1 is SHA-256 in the IANA named-information registry) and the
  quote's report data is ``SHA-256(claims) || 32 zero bytes``.

Here the validity is the attestation's (the certificate is re-made with every attestation) instead of
Gramine's fixed 2001-2030 default, so a certificate ends with the attestation that produced it.
:func:`make_ratls_identity` makes one (its key never leaves the returned object, except as the
password-encrypted PEM the TLS library loads); :func:`read_ratls_certificate` parses one and checks
both key bindings, leaving DCAP and identity checks of the two quotes to the caller.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from . import cbor
from .dcap import Quote, TeeType, parse_quote
from .dcap.pck import X509_ERRORS
from .errors import QuoteError, QuoteMalformed, ResponseBindingInvalid

LEGACY_QUOTE_OID: Final = x509.ObjectIdentifier("1.2.840.113741.1337.6")
TAGGED_EVIDENCE_OID: Final = x509.ObjectIdentifier("2.23.133.5.4.9")
CBOR_TAG_INTEL_TEE_QUOTE: Final = 60000
#: "sha-256" in the IANA Named Information Hash Algorithm Registry.
HASH_ALG_SHA256: Final = 1
PUBKEY_HASH_CLAIM: Final = "pubkey-hash"
SUBJECT: Final = x509.Name(
    [
        x509.NameAttribute(NameOID.COMMON_NAME, "RATLS"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GramineDevelopers"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
    ]
)
_CERT_ERRORS: Final[tuple[type[Exception], ...]] = (*X509_ERRORS, TypeError, ValueError, InvalidSignature)
#: A certificate with two quotes is ~10 KiB; refuse to parse anything far larger.
MAX_CERTIFICATE_SIZE: Final = 64 * 1024


def spki_der(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims_for(spki: bytes) -> bytes:
    """The serialized claims map of the tagged-evidence extension for this public key."""
    pubkey_hash = cbor.encode([HASH_ALG_SHA256, hashlib.sha256(spki).digest()])
    return cbor.encode({PUBKEY_HASH_CLAIM: pubkey_hash})


def _report_data(digest: bytes) -> bytes:
    return digest + bytes(32)


@dataclass(frozen=True, slots=True, repr=False)
class RaTlsIdentity:
    """A certificate and its private key; the key is reachable only as encrypted PEM for a TLS context."""

    certificate_der: bytes
    spki_sha256: bytes
    _key: ec.EllipticCurvePrivateKey = field(repr=False)

    def certificate_pem(self) -> bytes:
        return x509.load_der_x509_certificate(self.certificate_der).public_bytes(serialization.Encoding.PEM)

    def encrypted_key_pem(self, password: bytes) -> bytes:
        """The private key as PKCS#8 PEM encrypted under ``password`` (for ``SSLContext.load_cert_chain``,
        which reads files only: what reaches the file system is useless without the password)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )

    def __repr__(self) -> str:
        return f"RaTlsIdentity(spki_sha256={self.spki_sha256.hex()})"


def make_ratls_identity(quote: Callable[[bytes], bytes], not_before: int, not_after: int) -> RaTlsIdentity:
    """A fresh P-384 key and its RA-TLS certificate; ``quote`` is the enclave's quote function (two calls)."""
    key = ec.generate_private_key(ec.SECP384R1())
    public = key.public_key()
    spki = spki_der(public)
    spki_hash = hashlib.sha256(spki).digest()
    legacy_quote = quote(_report_data(spki_hash))
    claims = claims_for(spki)
    tagged_quote = quote(_report_data(hashlib.sha256(claims).digest()))
    evidence = cbor.encode(cbor.Tag(CBOR_TAG_INTEL_TEE_QUOTE, [tagged_quote, claims]))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(SUBJECT)
        .issuer_name(SUBJECT)
        .serial_number(1)
        .not_valid_before(dt.datetime.fromtimestamp(not_before, dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(not_after, dt.UTC))
        .public_key(public)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .add_extension(x509.UnrecognizedExtension(LEGACY_QUOTE_OID, legacy_quote), critical=False)
        .add_extension(x509.UnrecognizedExtension(TAGGED_EVIDENCE_OID, evidence), critical=False)
        .sign(key, hashes.SHA256())
    )
    return RaTlsIdentity(certificate.public_bytes(serialization.Encoding.DER), spki_hash, key)


# --- reading one (client side) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RaTlsEvidence:
    """What an RA-TLS certificate carries, after both key bindings were checked."""

    spki_sha256: bytes
    legacy_quote: bytes = field(repr=False)
    tagged_quote: bytes = field(repr=False)
    not_before: int
    not_after: int


def _invalid(message: str) -> QuoteMalformed:
    return QuoteMalformed(f"RA-TLS certificate: {message}")


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier, what: str) -> bytes:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        raise _invalid(f"no {what} extension ({oid.dotted_string})") from None
    value = ext.value
    if ext.critical or not isinstance(value, x509.UnrecognizedExtension):
        raise _invalid(f"the {what} extension is not a plain non-critical extension")
    return value.value


def _sgx_quote(raw: bytes, what: str) -> Quote:
    try:
        quote = parse_quote(raw)
    except QuoteError as e:
        raise _invalid(f"the {what} quote does not parse: {e.message}") from None
    if quote.header.tee_type != TeeType.SGX:
        raise _invalid(f"the {what} quote is not an SGX quote")
    return quote


def parse_tagged_evidence(value: bytes) -> tuple[bytes, bytes]:
    """(quote, claims) of a tagged-evidence extension value; :class:`QuoteMalformed` otherwise."""
    try:
        item = cbor.decode(value, max_depth=4, max_items=8)
    except cbor.CborError as e:
        raise _invalid(f"tagged evidence is not CBOR: {e}") from None
    if not isinstance(item, cbor.Tag) or item.tag != CBOR_TAG_INTEL_TEE_QUOTE:
        raise _invalid(f"tagged evidence is not CBOR tag {CBOR_TAG_INTEL_TEE_QUOTE}")
    body = item.value
    if not isinstance(body, list) or len(body) != 2 or not all(isinstance(x, bytes) for x in body):
        raise _invalid("tagged evidence is not an array of two byte strings [quote, claims]")
    quote, claims = body
    assert isinstance(quote, bytes) and isinstance(claims, bytes)
    return quote, claims


def pubkey_hash_claim(claims: bytes) -> bytes:
    """The SHA-256 public-key hash of a claims map; :class:`QuoteMalformed` if it is not one."""
    try:
        item = cbor.decode(claims, max_depth=2, max_items=8)
    except cbor.CborError as e:
        raise _invalid(f"claims are not CBOR: {e}") from None
    if not isinstance(item, dict) or not isinstance(item.get(PUBKEY_HASH_CLAIM), bytes):
        raise _invalid(f"claims are not a map with a {PUBKEY_HASH_CLAIM!r} byte string")
    raw = item[PUBKEY_HASH_CLAIM]
    assert isinstance(raw, bytes)
    try:
        entry = cbor.decode(raw, max_depth=1, max_items=3)
    except cbor.CborError as e:
        raise _invalid(f"{PUBKEY_HASH_CLAIM} is not CBOR: {e}") from None
    if (
        not isinstance(entry, list)
        or len(entry) != 2
        or entry[0] != HASH_ALG_SHA256
        or not isinstance(entry[1], bytes)
        or len(entry[1]) != 32
    ):
        raise _invalid(f"{PUBKEY_HASH_CLAIM} is not [1 (SHA-256), 32-byte digest]")
    return entry[1]


def read_ratls_certificate(der: bytes, now: float) -> RaTlsEvidence:
    """Parse an RA-TLS certificate and check everything it says about itself, at time ``now``.

    Checked: size, DER, self-signature, validity, both extensions present and well formed, both
    quotes SGX, the legacy quote's report data = SHA-256(SPKI) || 0^32, the claims' public-key hash =
    SHA-256(SPKI), and the tagged quote's report data = SHA-256(claims) || 0^32. Not checked here:
    whether the quotes are genuine and from the expected enclave (the caller's DCAP and pins).
    """
    if len(der) > MAX_CERTIFICATE_SIZE:
        raise _invalid(f"{len(der)} bytes, more than {MAX_CERTIFICATE_SIZE}")
    try:
        cert = x509.load_der_x509_certificate(der)
        public = cert.public_key()
        cert.verify_directly_issued_by(cert)
    except _CERT_ERRORS as e:
        raise _invalid(f"not a readable self-signed certificate ({type(e).__name__})") from None
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise _invalid("the key is not an elliptic-curve key")
    not_before = int(cert.not_valid_before_utc.timestamp())
    not_after = int(cert.not_valid_after_utc.timestamp())
    if not not_before <= now < not_after:
        raise _invalid(f"not valid now (valid {not_before}..{not_after}, now {int(now)})")
    spki_hash = hashlib.sha256(spki_der(public)).digest()

    legacy_raw = _extension(cert, LEGACY_QUOTE_OID, "legacy quote")
    legacy = _sgx_quote(legacy_raw, "legacy extension's")
    if not hmac.compare_digest(legacy.enclave_report.report_data, _report_data(spki_hash)):
        raise ResponseBindingInvalid(
            "RA-TLS certificate: the legacy extension's quote does not bind the certificate's public key"
        )
    tagged_raw, claims = parse_tagged_evidence(_extension(cert, TAGGED_EVIDENCE_OID, "tagged evidence"))
    if not hmac.compare_digest(pubkey_hash_claim(claims), spki_hash):
        raise ResponseBindingInvalid(
            "RA-TLS certificate: the claims' pubkey-hash is not the certificate's key"
        )
    tagged = _sgx_quote(tagged_raw, "tagged evidence")
    if not hmac.compare_digest(
        tagged.enclave_report.report_data, _report_data(hashlib.sha256(claims).digest())
    ):
        raise ResponseBindingInvalid("RA-TLS certificate: the tagged evidence quote does not bind its claims")
    return RaTlsEvidence(spki_hash, legacy_raw, tagged_raw, not_before, not_after)
