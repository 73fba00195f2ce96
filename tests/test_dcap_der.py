"""The verifier's raw DER reader agrees with ``cryptography`` on every certificate it meets, and its
shortcuts (PEM fast path, one parse per certificate per call, the pinned anchor prepared once) never
let a changed certificate through."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from sealing_key_provider.dcap import Collateral, Verifier, der, parse_quote, pck
from sealing_key_provider.dcap.der import (
    common_name,
    crl_tbs,
    decode_body,
    encode_body,
    is_ca,
    load_cert,
    pem_bodies,
)
from sealing_key_provider.dcap.pck import (
    SGX_EXTENSION_OID_DER,
    PckIdentity,
    _pairs,
    ca_type_of_cn,
    encode_oid,
    parse_sgx_extension,
    pck_identity,
    pck_identity_of,
    pck_leaf_identity,
)
from sealing_key_provider.dcap.verify import _P256_SPKI_PREFIX, _p256_key
from sealing_key_provider.errors import PckCertificateInvalid, PckChainInvalid, ProviderError
from sealing_key_provider.sim import SimPlatform

from .corpus import Case, case, cases
from .x509_helpers import self_signed


def _chains() -> list[bytes]:
    out: list[bytes] = []
    for c in cases():
        col = c.collateral
        out += [
            parse_quote(c.quote).pck_chain_pem,
            col.tcb_info_issuer_chain,
            col.qe_identity_issuer_chain,
            col.pck_crl_issuer_chain,
        ]
    return out


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _agree(cert: x509.Certificate) -> None:
    der = cert.public_bytes(Encoding.DER)
    parts = load_cert(der)
    assert parts.der == der
    assert parts.tbs == cert.tbs_certificate_bytes
    assert parts.issuer == cert.issuer.public_bytes()
    assert parts.subject == cert.subject.public_bytes()
    assert common_name(parts.issuer) == _cn(cert.issuer)
    assert common_name(parts.subject) == _cn(cert.subject)
    # Every extension, its value and its critical flag, as cryptography reads them.
    assert parts.extensions == {
        encode_oid(e.oid.dotted_string): e.value.public_bytes() for e in cert.extensions
    }
    assert parts.critical == {encode_oid(e.oid.dotted_string) for e in cert.extensions if e.critical}
    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    assert is_ca(parts) is ca
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert parts.spki == spki
    # Every DCAP certificate takes the point shortcut, and it gives the key public_key() gives.
    assert spki.startswith(_P256_SPKI_PREFIX)
    assert _p256_key(parts, "t", PckChainInvalid) == cert.public_key()


@pytest.mark.parametrize("pem", _chains())
def test_reader_agrees_with_cryptography_on_every_corpus_certificate(pem: bytes) -> None:
    certs = x509.load_pem_x509_certificates(pem)
    bodies = pem_bodies(pem)
    assert bodies is not None
    assert [decode_body(b) for b in bodies] == [c.public_bytes(Encoding.DER) for c in certs]
    assert bodies == [encode_body(c.public_bytes(Encoding.DER)) for c in certs]
    for cert in certs:
        _agree(cert)


def _identity_by_cryptography(leaf: x509.Certificate) -> PckIdentity:
    """The PCK identity with every certificate-level read done by ``cryptography`` (the extension's
    own structure is Intel's, which cryptography leaves opaque: that reader is shared)."""
    ext = leaf.extensions.get_extension_for_oid(pck.SGX_EXTENSION_OID).value
    assert isinstance(ext, x509.UnrecognizedExtension)
    return parse_sgx_extension(ext.value, ca_type_of_cn(_cn(leaf.issuer)))


def test_reader_agrees_on_simulated_certificates(tmp_path: Path) -> None:
    p = SimPlatform.init(tmp_path)
    for cert in (p.root_certificate, p.platform_ca_certificate, p.pck_certificate, p.tcb_signing_certificate):
        _agree(cert)
    expected = _identity_by_cryptography(p.pck_certificate)
    assert expected == p.pck_identity
    assert pck_identity(p.pck_certificate) == expected
    assert pck_leaf_identity(p.pck_chain_pem) == expected


@pytest.mark.parametrize("c", cases(), ids=lambda c: c.name)
def test_pck_identity_agrees_with_cryptography_on_every_corpus_quote(c: Case) -> None:
    chain = parse_quote(c.quote).pck_chain_pem
    leaf = x509.load_pem_x509_certificates(chain)[0]
    expected = _identity_by_cryptography(leaf)
    assert pck_leaf_identity(chain) == expected
    assert pck_identity(leaf) == expected
    parts = load_cert(leaf.public_bytes(Encoding.DER))
    assert pck_identity_of(parts.extensions, common_name(parts.issuer)) == expected
    # A chain in a form the PEM fast path hands to cryptography gives the same identity.
    assert pck_leaf_identity(b"leading text\n" + chain) == expected


@pytest.mark.parametrize(
    "chain", [b"", b"no pem", b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"]
)
def test_pck_leaf_identity_of_an_unreadable_chain_is_pck_chain_invalid(chain: bytes) -> None:
    with pytest.raises(PckChainInvalid):
        pck_leaf_identity(chain)


@pytest.mark.parametrize(
    "pem",
    [
        b"subject=CN = x\n" + case("sgx-v3-phala-1").collateral.tcb_info_issuer_chain,  # text before
        case("sgx-v3-phala-1").collateral.tcb_info_issuer_chain.replace(b"CERTIFICATE", b"X509 CERTIFICATE"),
        b"-----BEGIN CERTIFICATE-----\nAAAA\n",
        b"no pem at all",
    ],
)
def test_pem_fast_path_hands_anything_unusual_to_cryptography(pem: bytes) -> None:
    assert pem_bodies(pem) is None


def test_malformed_der_is_a_value_error() -> None:
    der = x509.load_pem_x509_certificates(case("sgx-v3-phala-1").collateral.tcb_info_issuer_chain)[
        0
    ].public_bytes(Encoding.DER)
    for bad in (der[:-1], der + b"\x00", b"\x30\x03\x02\x01\x01", b""):
        with pytest.raises(ValueError):
            load_cert(bad)
    with pytest.raises(ValueError):
        common_name(b"\x30\x05\x31\x03\x02\x01\x01")


def _impostor(of: x509.Certificate) -> x509.Certificate:
    """A certificate with ``of``'s names and dates, but another key and not signed by ``of``'s issuer."""
    key = ec.generate_private_key(ec.SECP256R1())
    b = (
        x509.CertificateBuilder()
        .subject_name(of.subject)
        .issuer_name(of.issuer)
        .public_key(key.public_key())
        .serial_number(of.serial_number % (1 << 159) or 1)
        .not_valid_before(of.not_valid_before_utc)
        .not_valid_after(of.not_valid_after_utc)
    )
    for ext in of.extensions:
        if ext.oid != x509.oid.ExtensionOID.SUBJECT_KEY_IDENTIFIER:
            b = b.add_extension(ext.value, ext.critical)
    return b.sign(key, hashes.SHA256())


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


@pytest.mark.parametrize("warm", [False, True])
def test_pck_crl_issuer_chain_with_another_ca_certificate_is_checked_on_its_own(warm: bool) -> None:
    """The PCK CRL CA certificate is reused from the PCK chain only when its DER is identical."""
    c = case("tdx-v4-phala-1")
    col = c.collateral
    ca, root = x509.load_pem_x509_certificates(col.pck_crl_issuer_chain)
    bad = dataclasses.replace(col, pck_crl_issuer_chain=_pem(_impostor(ca), root))
    v = Verifier()
    if warm:
        v.verify(c.quote, col, c.now)
    with pytest.raises(ProviderError) as err:
        v.verify(c.quote, bad, c.now)
    assert err.value.code == "COLLATERAL_SIGNATURE_INVALID"
    assert "PCK CRL issuer certificate is not signed by the root" in err.value.message


@pytest.mark.parametrize(
    "field", ["tcb_info_issuer_chain", "qe_identity_issuer_chain", "pck_crl_issuer_chain"]
)
def test_a_chain_ending_in_a_lookalike_root_is_refused(field: str) -> None:
    """The anchor is recognised by its exact DER, so a root with the same names and key fails."""
    c = case("sgx-v3-phala-1")
    col = c.collateral
    first, root = x509.load_pem_x509_certificates(getattr(col, field))
    fake_root = _impostor(root)
    changed: Collateral = dataclasses.replace(col, **{field: _pem(first, fake_root)})
    with pytest.raises(ProviderError) as err:
        Verifier().verify(c.quote, changed, c.now)
    assert err.value.code == "COLLATERAL_SIGNATURE_INVALID"


def test_pck_chain_ending_in_a_lookalike_root_is_refused() -> None:
    c = case("tdx-v4-phala-1")
    q = parse_quote(c.quote)
    leaf, inter, root = x509.load_pem_x509_certificates(q.pck_chain_pem)
    v = Verifier()
    v.verify(q, c.collateral, c.now)  # warm: the genuine chain is cached
    fake = dataclasses.replace(q, pck_chain_pem=_pem(leaf, inter, _impostor(root)))
    for verifier in (v, Verifier()):
        with pytest.raises(ProviderError) as err:
            verifier.verify(fake, c.collateral, c.now)
        assert err.value.code == "PCK_CHAIN_INVALID"


def test_pck_chain_with_an_impostor_intermediate_is_refused_cold_and_warm() -> None:
    c = case("tdx-v4-phala-1")
    q = parse_quote(c.quote)
    leaf, inter, root = x509.load_pem_x509_certificates(q.pck_chain_pem)
    v = Verifier()
    v.verify(q, c.collateral, c.now)
    fake = dataclasses.replace(q, pck_chain_pem=_pem(leaf, _impostor(inter), root))
    for verifier in (v, Verifier()):
        with pytest.raises(ProviderError) as err:
            verifier.verify(fake, c.collateral, c.now)
        assert err.value.code == "PCK_CHAIN_INVALID"


def test_crl_reader_agrees_with_cryptography(tmp_path: Path) -> None:
    sim = SimPlatform.init(tmp_path)
    collaterals = [c.collateral for c in cases()] + [
        sim.collateral(tee, now=1_780_000_000) for tee in ("sgx", "tdx")
    ]
    for col in collaterals:
        for raw in (col.root_ca_crl, col.pck_crl):
            pem = raw.startswith(b"-----BEGIN")
            data = x509.load_pem_x509_crl(raw).public_bytes(Encoding.DER) if pem else raw
            crl = x509.load_der_x509_crl(data)
            tbs, oids = crl_tbs(data)
            assert tbs == crl.tbs_certlist_bytes
            assert oids == {encode_oid(e.oid.dotted_string) for e in crl.extensions}


def test_crl_without_crl_number_is_refused_before_its_signature() -> None:
    c = case("sgx-v3-phala-1")
    key = ec.generate_private_key(ec.SECP256R1())
    root = x509.load_pem_x509_certificates(c.collateral.pck_crl_issuer_chain)[1]
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root.subject)
        .last_update(dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
        .next_update(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        .sign(key, hashes.SHA256())
    )
    bad = dataclasses.replace(c.collateral, root_ca_crl=crl.public_bytes(Encoding.DER))
    with pytest.raises(ProviderError) as err:
        Verifier().verify(c.quote, bad, c.now)
    assert err.value.code == "COLLATERAL_MALFORMED"


def test_chain_pem_outside_the_fast_path_verifies_the_same() -> None:
    c = case("sgx-v3-phala-1")
    col = c.collateral
    expected = Verifier().verify(c.quote, col, c.now).to_dict()
    odd = dataclasses.replace(
        col,
        tcb_info_issuer_chain=b"subject=CN = Intel SGX TCB Signing\n" + col.tcb_info_issuer_chain,
        pck_crl_issuer_chain=b"issuer=CN = Intel SGX Root CA\n" + col.pck_crl_issuer_chain,
    )
    assert pem_bodies(odd.tcb_info_issuer_chain) is None
    assert Verifier().verify(c.quote, odd, c.now).to_dict() == expected


def test_a_body_that_is_not_base64_is_a_typed_error() -> None:
    c = case("sgx-v3-phala-1")
    col = c.collateral
    first = col.tcb_info_issuer_chain.index(b"\n", col.tcb_info_issuer_chain.index(b"BEGIN")) + 1
    broken = col.tcb_info_issuer_chain[:first] + b"@@@@" + col.tcb_info_issuer_chain[first + 4 :]
    with pytest.raises(ProviderError) as err:
        Verifier().verify(c.quote, dataclasses.replace(col, tcb_info_issuer_chain=broken), c.now)
    assert err.value.code == "COLLATERAL_MALFORMED"


def _reference_pairs(buf: bytes, start: int, end: int) -> dict[bytes, tuple[int, bytes]]:
    """The SGX extension's pair reader as first written (every element through the generic reader):
    the oracle for the inlined one in ``pck._pairs``."""
    from sealing_key_provider.dcap.der import TAG_OID, TAG_SEQUENCE
    from sealing_key_provider.dcap.pck import _tlv

    out: dict[bytes, tuple[int, bytes]] = {}
    pos = start
    while pos < end:
        tag, vstart, vend = _tlv(buf, pos, end)
        pos = vend
        if tag != TAG_SEQUENCE:
            raise PckCertificateInvalid("not a SEQUENCE")
        otag, ostart, oend = _tlv(buf, vstart, vend)
        itag, istart, iend = _tlv(buf, oend, vend)
        if otag != TAG_OID or oend == ostart or buf[oend - 1] & 0x80 or iend != vend:
            raise PckCertificateInvalid("not {OID, value}")
        oid = buf[ostart:oend]
        if oid in out:
            raise PckCertificateInvalid("duplicate")
        out[oid] = (itag, buf[istart:iend])
    return out


def _sgx_extension(name: str) -> bytes:
    leaf = load_cert(
        x509.load_pem_x509_certificates(parse_quote(case(name).quote).pck_chain_pem)[0].public_bytes(
            Encoding.DER
        )
    )
    return leaf.extensions[SGX_EXTENSION_OID_DER]


@settings(max_examples=400, derandomize=True, deadline=None)
@given(data=st.data())
def test_inlined_pair_reader_matches_the_reference_on_damaged_extensions(data: st.DataObject) -> None:
    ext = bytearray(_sgx_extension(data.draw(st.sampled_from(["tdx-v4-phala-1", "sgx-v3-phala-1"]))))
    for _ in range(data.draw(st.integers(1, 3))):
        ext[data.draw(st.integers(0, len(ext) - 1))] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(ext)))
    buf = bytes(ext[:cut])
    for start, end in [(0, len(buf)), (4, len(buf))]:
        try:
            expected: object = _reference_pairs(buf, start, end)
        except PckCertificateInvalid:
            expected = PckCertificateInvalid
        try:
            got: object = _pairs(buf, start, end, "x")
        except PckCertificateInvalid:
            got = PckCertificateInvalid
        assert got == expected
    with contextlib.suppress(PckCertificateInvalid):  # and no other exception
        parse_sgx_extension(buf, "platform")
    assert _outcome(buf, fast=True) == _outcome(buf, fast=False)


def _outcome(ext: bytes, *, fast: bool) -> object:
    """parse_sgx_extension's result or error type, with or without the TCB fast path."""
    saved = pck._fast_tcb
    if not fast:
        pck._fast_tcb = lambda buf: None
    try:
        return pck.parse_sgx_extension(ext, "processor")
    except PckCertificateInvalid:
        return PckCertificateInvalid
    finally:
        pck._fast_tcb = saved


@pytest.mark.parametrize("name", [c.name for c in cases()])
def test_tcb_fast_path_is_taken_on_real_certificates_and_agrees(name: str) -> None:
    ext = _sgx_extension(name)
    _, start, end = pck._tlv(ext, 0, len(ext))
    _, tcb_value = pck._pairs(ext, start, end, "x")[pck.OID_TCB]
    assert pck._fast_tcb(tcb_value) is not None
    assert _outcome(ext, fast=True) == _outcome(ext, fast=False) != PckCertificateInvalid


def _der(tag: int, value: bytes) -> bytes:
    n = len(value)
    head = bytes([n]) if n < 0x80 else b"\x82" + n.to_bytes(2, "big")
    return bytes([tag]) + head + value


def _pair(oid: bytes, tag: int, value: bytes) -> bytes:
    return _der(0x30, _der(der.TAG_OID, oid) + _der(tag, value))


def _minimal(n: int) -> bytes:
    return bytes([n]) if n < 0x80 else b"\x00" + bytes([n])


@pytest.mark.parametrize("svns", [(0,) * 16, (255,) * 16, tuple(range(120, 136)), (127, 128) * 8])
def test_tcb_fast_path_agrees_on_every_integer_form(svns: tuple[int, ...]) -> None:
    for encode in (_minimal, lambda n: n.to_bytes(2, "big")):
        items = [_pair(pck.OID_TCB_ITEM[i + 1], der.TAG_INTEGER, encode(v)) for i, v in enumerate(svns)]
        items += [
            _pair(pck.OID_TCB_ITEM[17], der.TAG_INTEGER, b"\x0d"),
            _pair(pck.OID_TCB_ITEM[18], der.TAG_OCTET_STRING, b"\x01" * 16),
        ]
        others = b"".join(
            _pair(o, t, v)
            for o, t, v in (
                (pck.OID_PPID, der.TAG_OCTET_STRING, b"\x02" * 16),
                (pck.OID_PCEID, der.TAG_OCTET_STRING, b"\x00\x00"),
                (pck.OID_FMSPC, der.TAG_OCTET_STRING, b"\x00" * 6),
                (pck.OID_SGX_TYPE, pck.TAG_ENUMERATED, b"\x00"),
            )
        )
        in_order = b"".join(items)
        minimal = all(encode(v) == _minimal(v) for v in svns)
        assert (pck._fast_tcb(in_order) is not None) is minimal
        for tcb in (in_order, b"".join(reversed(items)), in_order + items[3], items[0] + in_order):
            ext = _der(0x30, others + _pair(pck.OID_TCB, 0x30, tcb))
            fast, general = _outcome(ext, fast=True), _outcome(ext, fast=False)
            assert fast == general
            if tcb in (in_order, b"".join(reversed(items))):
                assert isinstance(fast, pck.PckIdentity)
                assert fast.tcb_components == svns
            else:
                assert fast is PckCertificateInvalid  # a repeated component


def _with_basic_constraints(raw: bytes) -> x509.Certificate:
    """A self-signed certificate whose BasicConstraints extension value is exactly ``raw``."""
    return self_signed("CA", (x509.UnrecognizedExtension(x509.oid.ExtensionOID.BASIC_CONSTRAINTS, raw), True))


@pytest.mark.parametrize(
    ("value", "ca"),
    [
        ("30030101ff", True),
        ("30060101ff020100", True),
        ("30060101ff020101", True),
        ("30070101ff02020080", True),
        ("3003010100", False),  # cA FALSE (and DEFAULT encoded)
        ("3000", False),
        ("30030101ff00", False),  # data after the SEQUENCE
        ("30030101ff0000", False),
        ("30060101ff040100", False),  # something other than pathLenConstraint after cA
        ("30080101ff0201000201", False),  # two pathLenConstraints
        ("30060101ff0201ff", False),  # negative pathLenConstraint
        ("30070101ff02020001", False),  # non-minimal INTEGER
        ("30050101ff0200", False),  # empty INTEGER
        ("30830000030101ff", False),  # non-minimal length
        ("3081030101ff", False),
        ("300e0101ff020901000000000000000000", False),  # pathLenConstraint past 64 bits
    ],
)
def test_basic_constraints_reader_is_as_strict_as_cryptography(value: str, ca: bool) -> None:
    """cryptography parses extension values only when they are read, so is_ca alone judges the
    intermediate's BasicConstraints: it must refuse every encoding cryptography refuses (it once took
    any value that merely began with SEQUENCE { BOOLEAN TRUE })."""
    cert = _with_basic_constraints(bytes.fromhex(value))
    try:
        expected = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except ValueError:
        expected = False
    assert expected is ca
    assert is_ca(load_cert(cert.public_bytes(Encoding.DER))) is ca


@pytest.mark.parametrize("der", ["30810100", "3082000100", "308200", "30817f" + "00" * 127])
def test_non_minimal_lengths_are_refused(der: str) -> None:
    from sealing_key_provider.dcap.der import tlv

    raw = bytes.fromhex(der)
    with pytest.raises(ValueError):
        tlv(raw, 0, len(raw))


def test_intermediate_with_trailing_data_in_basic_constraints_is_not_a_ca() -> None:
    """Through the verifier: an intermediate signed by the anchor whose BasicConstraints value has
    data after SEQUENCE { TRUE } is refused as a CA, as cryptography's reading refused it."""
    root_key, inter_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(
        subject: str, issuer: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
            .not_valid_after(dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
        )

    root = (
        cert("Root CA", "Root CA", root_key, root_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    bc = x509.UnrecognizedExtension(x509.oid.ExtensionOID.BASIC_CONSTRAINTS, bytes.fromhex("30030101ff00"))
    inter = (
        cert("SGX PCK Platform CA", "Root CA", inter_key, root_key)
        .add_extension(bc, critical=True)
        .sign(root_key, hashes.SHA256())
    )
    leaf = cert("SGX PCK Certificate", "SGX PCK Platform CA", leaf_key, inter_key).sign(
        inter_key, hashes.SHA256()
    )
    c = case("sgx-v3-phala-1")
    q = dataclasses.replace(parse_quote(c.quote), pck_chain_pem=_pem(leaf, inter, root))
    with pytest.raises(ProviderError) as err:
        Verifier(trust_anchor=root).verify(q, c.collateral, c.now)
    assert err.value.code == "PCK_CHAIN_INVALID"
    assert "not a CA certificate" in err.value.message


def test_a_certificate_whose_point_is_off_the_curve_is_refused_through_either_key_path() -> None:
    """cryptography reads the key lazily, so such a certificate loads; its key must not."""
    c = case("tdx-v4-phala-1")
    q = parse_quote(c.quote)
    leaf, inter, root = x509.load_pem_x509_certificates(q.pck_chain_pem)
    der = bytearray(leaf.public_bytes(Encoding.DER))
    point = leaf.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    at = bytes(der).index(point)
    der[at + 64] ^= 0x01  # the last byte of Y: no longer on the curve
    parts = load_cert(bytes(der))
    with pytest.raises(PckChainInvalid, match="PCK certificate key cannot be loaded"):
        _p256_key(parts, "PCK certificate", PckChainInvalid)
    with pytest.raises(PckChainInvalid, match="PCK certificate key cannot be loaded"):
        _p256_key(parts._replace(spki=b""), "PCK certificate", PckChainInvalid)  # the public_key() path
    broken = x509.load_der_x509_certificate(bytes(der))
    fake = dataclasses.replace(q, pck_chain_pem=_pem(broken, inter, root))
    with pytest.raises(ProviderError) as err:
        Verifier().verify(fake, c.collateral, c.now)
    assert err.value.code == "PCK_CHAIN_INVALID"


def test_same_platform_is_ppid_and_fmspc() -> None:
    chain = parse_quote(case("tdx-v4-phala-1").quote).pck_chain_pem
    me = pck_leaf_identity(chain)
    assert me.same_platform(me)
    assert me.same_platform(dataclasses.replace(me, pcesvn=me.pcesvn + 1, cpusvn=bytes(16)))  # newer TCB
    assert not me.same_platform(dataclasses.replace(me, ppid=bytes(16)))
    assert not me.same_platform(dataclasses.replace(me, fmspc=bytes(6)))
