"""RA-TLS certificates in Gramine's format: an independent structural check, and the reader's refusals.

The structural check builds what Gramine's ``ra_tls_attest`` documents (subject, serial, P-384 key,
SHA-256 signature, the legacy quote extension and the TCG DICE tagged-evidence extension with its CBOR
bytes written out by hand from the format) without using this project's CBOR encoder or certificate
reader, and compares it with the certificate the provider makes.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from sealing_key_provider.errors import ProviderError, QuoteMalformed, ResponseBindingInvalid
from sealing_key_provider.ratls import (
    RaTlsIdentity,
    make_ratls_identity,
    parse_tagged_evidence,
    pubkey_hash_claim,
    read_ratls_certificate,
)
from sealing_key_provider.sim import SimPlatform, SimSgxPlatform

NOW = 1_780_000_000
# Gramine's OIDs as DER content bytes (reference: tee-interfaces 5.3).
LEGACY_OID_DER = bytes.fromhex("2A864886F84D8A3906")
TAGGED_OID_DER = bytes.fromhex("678105050409")
REPORT_DATA = slice(368, 432)  # SGX v3 quote: header 48 + report body offset 320, 64 bytes


def _oid_from_der(content: bytes) -> str:
    """Decode OID content bytes (X.690 8.19) by hand, so the OIDs above are checked independently."""
    first, rest = content[0], content[1:]
    arcs = [first // 40, first % 40] if first < 80 else [2, first - 80]
    value = 0
    for byte in rest:
        value = value << 7 | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    return ".".join(map(str, arcs))


def _cbor_bstr_head(length: int) -> bytes:
    """The CBOR head of a byte string (major type 2), written from RFC 8949 section 3."""
    if length < 24:
        return bytes([0x40 | length])
    if length < 0x100:
        return bytes([0x58, length])
    if length < 0x10000:
        return b"\x59" + struct.pack(">H", length)
    return b"\x5a" + struct.pack(">I", length)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("ratls"))


@pytest.fixture(scope="module")
def quote_fn(sim: SimPlatform) -> Callable[[bytes], bytes]:
    return SimSgxPlatform.load(sim.state_dir).quote


@pytest.fixture(scope="module")
def identity(quote_fn: Callable[[bytes], bytes]) -> RaTlsIdentity:
    return make_ratls_identity(quote_fn, NOW - 300, NOW + 3600)


def test_independent_structure_of_gramines_format(identity: RaTlsIdentity) -> None:
    assert _oid_from_der(LEGACY_OID_DER) == "1.2.840.113741.1337.6"
    assert _oid_from_der(TAGGED_OID_DER) == "2.23.133.5.4.9"
    cert = x509.load_der_x509_certificate(identity.certificate_der)
    names = [(a.oid, a.value) for a in cert.subject]
    assert names == [
        (NameOID.COMMON_NAME, "RATLS"),
        (NameOID.ORGANIZATION_NAME, "GramineDevelopers"),
        (NameOID.COUNTRY_NAME, "US"),
    ]
    assert cert.issuer == cert.subject and cert.serial_number == 1 and cert.version == x509.Version.v3
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"
    public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))  # self-signed
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    spki_hash = hashlib.sha256(spki).digest()
    assert identity.spki_sha256 == spki_hash

    by_oid = {ext.oid.dotted_string: ext for ext in cert.extensions}
    legacy = by_oid["1.2.840.113741.1337.6"]
    tagged = by_oid["2.23.133.5.4.9"]
    assert not legacy.critical and not tagged.critical
    bc = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    assert isinstance(bc, x509.BasicConstraints) and not bc.ca
    # The OIDs are encoded as Gramine's constants say (tag 06, length, content) inside the TBS.
    assert b"\x06\x09" + LEGACY_OID_DER in cert.tbs_certificate_bytes
    assert b"\x06\x06" + TAGGED_OID_DER in cert.tbs_certificate_bytes

    # Legacy extension: the raw quote; report data = SHA-256(SPKI DER) || 0^32.
    assert isinstance(legacy.value, x509.UnrecognizedExtension)
    legacy_quote = legacy.value.value
    assert struct.unpack_from("<H", legacy_quote, 0)[0] == 3  # an SGX v3 quote, as Gramine's
    assert legacy_quote[REPORT_DATA] == spki_hash + bytes(32)

    # Tagged evidence: CBOR tag 60000 (d9 ea60) over array(2) (82) of [bstr quote, bstr claims], where
    # claims = map(1){"pubkey-hash": bstr(array(2)[1, bstr(32) SHA-256(SPKI)])}.
    assert isinstance(tagged.value, x509.UnrecognizedExtension)
    value = tagged.value.value
    hash_entry = b"\x82\x01\x58\x20" + spki_hash
    claims = b"\xa1\x6b" + b"pubkey-hash" + _cbor_bstr_head(len(hash_entry)) + hash_entry
    prefix = b"\xd9\xea\x60\x82"
    assert value.startswith(prefix)
    head = value[len(prefix) : len(prefix) + 3]
    assert head[0] == 0x59  # a quote is longer than 255 bytes: two-byte length
    quote_len = struct.unpack(">H", head[1:3])[0]
    tagged_quote = value[len(prefix) + 3 : len(prefix) + 3 + quote_len]
    expected = (
        prefix + _cbor_bstr_head(len(tagged_quote)) + tagged_quote + _cbor_bstr_head(len(claims)) + claims
    )
    assert value == expected
    assert tagged_quote[REPORT_DATA] == hashlib.sha256(claims).digest() + bytes(32)
    # Two different quotes, both of the same enclave (same report body apart from report data).
    assert tagged_quote != legacy_quote
    assert tagged_quote[48:368] == legacy_quote[48:368]


def test_reader_accepts_and_binds(identity: RaTlsIdentity) -> None:
    evidence = read_ratls_certificate(identity.certificate_der, NOW)
    assert evidence.spki_sha256 == identity.spki_sha256
    assert evidence.not_after == NOW + 3600
    with pytest.raises(QuoteMalformed, match="not valid now"):
        read_ratls_certificate(identity.certificate_der, NOW + 3600)
    assert "BEGIN" not in repr(identity) and "PRIVATE" not in repr(identity)


def _build(
    quote_fn: Callable[[bytes], bytes],
    *,
    legacy: bytes | None = None,
    tagged: bytes | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
    signer: ec.EllipticCurvePrivateKey | None = None,
    critical: bool = False,
) -> bytes:
    """A certificate with chosen extension values (defaults: the genuine ones for its key)."""
    genuine = make_ratls_identity(quote_fn, NOW - 10, NOW + 10)
    gcert = x509.load_der_x509_certificate(genuine.certificate_der)
    values = {ext.oid.dotted_string: ext.value for ext in gcert.extensions}
    legacy_v = values["1.2.840.113741.1337.6"]
    tagged_v = values["2.23.133.5.4.9"]
    assert isinstance(legacy_v, x509.UnrecognizedExtension) and isinstance(
        tagged_v, x509.UnrecognizedExtension
    )
    key = key or genuine._key
    builder = (
        x509.CertificateBuilder()
        .subject_name(gcert.subject)
        .issuer_name(gcert.issuer)
        .serial_number(1)
        .not_valid_before(gcert.not_valid_before_utc)
        .not_valid_after(gcert.not_valid_after_utc)
        .public_key(key.public_key())
        .add_extension(
            x509.UnrecognizedExtension(legacy_v.oid, legacy if legacy is not None else legacy_v.value),
            critical=critical,
        )
        .add_extension(
            x509.UnrecognizedExtension(tagged_v.oid, tagged if tagged is not None else tagged_v.value),
            critical=False,
        )
    )
    return builder.sign(signer or key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_reader_refusals(quote_fn: Callable[[bytes], bytes]) -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    genuine = _build(quote_fn)
    read_ratls_certificate(genuine, NOW)
    cases: list[tuple[bytes, type[ProviderError], str]] = [
        (_build(quote_fn, key=other), ResponseBindingInvalid, "legacy extension's quote does not bind"),
        (_build(quote_fn, signer=other), QuoteMalformed, "self-signed"),
        (_build(quote_fn, critical=True), QuoteMalformed, "non-critical"),
        (_build(quote_fn, legacy=b"\x03\x00" + bytes(10)), QuoteMalformed, "does not parse"),
        (_build(quote_fn, tagged=b"\xd9\xea\x61\x82\x40\x40"), QuoteMalformed, "not CBOR tag 60000"),
        (_build(quote_fn, tagged=b"\xd9\xea\x60\x81\x40"), QuoteMalformed, "array of two"),
        (_build(quote_fn, tagged=b"\xd9\xea\x60\x82\x40\x41\xa0"), QuoteMalformed, "pubkey-hash"),
        (_build(quote_fn, tagged=b"\xd9\xea\x60\x82\x40"), QuoteMalformed, "not CBOR"),
        (b"\x30\x03\x02\x01\x01", QuoteMalformed, "not a readable"),
        (bytes(70_000), QuoteMalformed, "more than"),
    ]
    for der, error, message in cases:
        with pytest.raises(error, match=message):
            read_ratls_certificate(der, NOW)


def test_tagged_quote_must_bind_the_claims(quote_fn: Callable[[bytes], bytes]) -> None:
    """Genuine claims for the key, but the tagged quote was made over other report data."""
    key = ec.generate_private_key(ec.SECP384R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    h = hashlib.sha256(spki).digest()
    hash_entry = b"\x82\x01\x58\x20" + h
    claims = b"\xa1\x6bpubkey-hash\x58\x24" + hash_entry
    wrong_quote = quote_fn(bytes(64))
    tagged = (
        b"\xd9\xea\x60\x82"
        + _cbor_bstr_head(len(wrong_quote))
        + wrong_quote
        + _cbor_bstr_head(len(claims))
        + claims
    )
    legacy = quote_fn(h + bytes(32))
    der = _build(quote_fn, key=key, legacy=legacy, tagged=tagged)
    with pytest.raises(ResponseBindingInvalid, match="does not bind its claims"):
        read_ratls_certificate(der, NOW)
    other_claims = b"\xa1\x6bpubkey-hash\x58\x24\x82\x01\x58\x20" + bytes(32)
    tagged = (
        b"\xd9\xea\x60\x82"
        + _cbor_bstr_head(len(wrong_quote))
        + wrong_quote
        + _cbor_bstr_head(len(other_claims))
        + other_claims
    )
    with pytest.raises(ResponseBindingInvalid, match="pubkey-hash is not"):
        read_ratls_certificate(_build(quote_fn, key=key, legacy=legacy, tagged=tagged), NOW)


@given(st.binary(max_size=200))
def test_evidence_parsers_fail_typed_on_any_input(data: bytes) -> None:
    for parse in (parse_tagged_evidence, pubkey_hash_claim):
        with contextlib.suppress(QuoteMalformed):
            parse(data)


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_tagged_evidence_round_trip(quote: bytes, claims: bytes) -> None:
    value = b"\xd9\xea\x60\x82" + _cbor_bstr_head(len(quote)) + quote + _cbor_bstr_head(len(claims)) + claims
    assert parse_tagged_evidence(value) == (quote, claims)
    with pytest.raises(QuoteMalformed):
        parse_tagged_evidence(value + b"\x00")


def test_the_transports_peer_check_is_per_thread() -> None:
    """A KeyClient shared between threads sets one check per request: each thread sees only its own."""
    import threading

    from sealing_key_provider.client.ratls import RaTlsTransport

    transport = RaTlsTransport("https://127.0.0.1:8443")
    seen: dict[str, object] = {}
    ready = threading.Barrier(2)

    def request(name: str) -> None:
        def mine(der: bytes) -> None:
            raise AssertionError(name)

        transport.peer_check = mine
        ready.wait(timeout=30)  # both have set theirs before either reads
        seen[name] = transport.peer_check

    threads = [threading.Thread(target=request, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert seen["a"] is not seen["b"] and seen["a"] is not None and seen["b"] is not None
    assert transport.peer_check is None  # nothing set in this thread
