"""Critical extensions and KeyUsage: the verifier refuses a certificate with a critical extension it does
not process (RFC 5280 4.2) and one whose KeyUsage forbids what the chain uses its key for.

The raw readers are held to ``cryptography``'s reading on every corpus and simulated certificate; the
policy is exercised through ``Verifier.verify`` with simulated chains re-issued under the simulator's
own keys, so that only the one property under test differs from a chain that verifies.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given
from hypothesis import strategies as st

from sealing_key_provider.dcap.abi import parse_quote
from sealing_key_provider.dcap.collateral import Collateral
from sealing_key_provider.dcap.der import key_usage, load_cert, oid_text
from sealing_key_provider.dcap.pck import encode_oid
from sealing_key_provider.dcap.verify import Verifier
from sealing_key_provider.errors import ProviderError
from sealing_key_provider.sim import SimPlatform
from sealing_key_provider.sim.state import Authority, read_state
from tests.corpus import cases
from tests.x509_helpers import self_signed

NOW = 1_780_000_000
_KU_FIELDS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)
KU_OID = x509.oid.ExtensionOID.KEY_USAGE


def _bits(ku: x509.KeyUsage) -> int:
    out = 0
    for i, name in enumerate(_KU_FIELDS):
        if name in ("encipher_only", "decipher_only"):
            on = ku.key_agreement and getattr(ku, name)
        else:
            on = getattr(ku, name)
        out |= int(on) << i
    return out


def _corpus_certificates() -> list[x509.Certificate]:
    out: dict[bytes, x509.Certificate] = {}
    for c in cases():
        col = c.collateral
        pems = [col.tcb_info_issuer_chain, col.qe_identity_issuer_chain, col.pck_crl_issuer_chain]
        with contextlib.suppress(ProviderError):  # a negative case's quote may not parse
            pems.append(parse_quote(c.quote).pck_chain_pem)
        for pem in pems:
            for cert in x509.load_pem_x509_certificates(pem):
                out[cert.public_bytes(Encoding.DER)] = cert
    return list(out.values())


def _agree(cert: x509.Certificate) -> None:
    parts = load_cert(cert.public_bytes(Encoding.DER))
    assert parts.critical == frozenset(encode_oid(e.oid.dotted_string) for e in cert.extensions if e.critical)
    try:
        ku = cert.extensions.get_extension_for_oid(KU_OID).value
    except x509.ExtensionNotFound:
        assert key_usage(parts) is None
    else:
        assert isinstance(ku, x509.KeyUsage)
        assert key_usage(parts) == _bits(ku)


def test_readers_agree_with_cryptography_on_every_corpus_certificate() -> None:
    certs = _corpus_certificates()
    assert len(certs) >= 4
    for cert in certs:
        _agree(cert)


# --- Simulated chains re-issued with one property changed ---------------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("sim-ku"))


@pytest.fixture(scope="module")
def authority(sim: SimPlatform) -> Authority:
    return read_state(Path(sim.state_dir)).authority


def test_readers_agree_on_simulated_certificates(sim: SimPlatform) -> None:
    for cert in (
        sim.root_certificate,
        sim.platform_ca_certificate,
        sim.tcb_signing_certificate,
        sim.pck_certificate,
    ):
        _agree(cert)


def _usage(*names: str) -> x509.KeyUsage:
    return x509.KeyUsage(**{n: n in names for n in _KU_FIELDS})


def _reissue(
    cert: x509.Certificate,
    signer: ec.EllipticCurvePrivateKey,
    *,
    usage: x509.KeyUsage | str | None = "keep",
    extra: x509.ExtensionType | None = None,
    raw_usage: bytes | None = None,
) -> x509.Certificate:
    """``cert`` with its key, names, dates and other extensions, its KeyUsage replaced (None: dropped),
    an extra critical extension added, signed again by ``signer``."""
    b = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for ext in cert.extensions:
        if ext.oid == KU_OID and usage != "keep":
            if isinstance(usage, x509.KeyUsage):  # None: dropped
                b = b.add_extension(usage, critical=True)
            continue
        if ext.oid == KU_OID and raw_usage is not None:
            b = b.add_extension(x509.UnrecognizedExtension(KU_OID, raw_usage), critical=True)
            continue
        b = b.add_extension(ext.value, ext.critical)
    if extra is not None:
        b = b.add_extension(extra, critical=True)
    return b.sign(signer, hashes.SHA256())


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


def _verify(
    sim: SimPlatform, *, pck_chain: bytes | None = None, collateral: Collateral | None = None
) -> None:
    q = parse_quote(sim.tdx_quote(report_data=b"ku"))
    if pck_chain is not None:
        q = dataclasses.replace(q, pck_chain_pem=pck_chain)
    col = collateral or sim.collateral("tdx", now=NOW)
    Verifier(trust_anchor=sim.root_certificate).verify(q, col, NOW)


def _refused(
    sim: SimPlatform,
    code: str,
    words: str,
    *,
    pck_chain: bytes | None = None,
    collateral: Collateral | None = None,
) -> None:
    with pytest.raises(ProviderError) as err:
        _verify(sim, pck_chain=pck_chain, collateral=collateral)
    assert err.value.code == code, err.value.message
    assert words in err.value.message


def test_the_unchanged_re_issued_chain_verifies(sim: SimPlatform, authority: Authority) -> None:
    """The baseline the refusals below differ from in one property only."""
    leaf = _reissue(sim.pck_certificate, authority.platform_ca_key)
    _verify(sim, pck_chain=_pem(leaf, sim.platform_ca_certificate, sim.root_certificate))


def test_absent_key_usage_means_unrestricted(sim: SimPlatform, authority: Authority) -> None:
    inter = _reissue(sim.platform_ca_certificate, authority.root_key, usage=None)
    leaf = _reissue(sim.pck_certificate, authority.platform_ca_key, usage=None)
    root = sim.root_certificate
    col = dataclasses.replace(sim.collateral("tdx", now=NOW), pck_crl_issuer_chain=_pem(inter, root))
    _verify(sim, pck_chain=_pem(leaf, inter, root), collateral=col)


def test_unknown_critical_extension_on_the_pck_certificate_is_refused(
    sim: SimPlatform, authority: Authority
) -> None:
    extra = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.7"), b"\x05\x00")
    leaf = _reissue(sim.pck_certificate, authority.platform_ca_key, extra=extra)
    _refused(
        sim,
        "PCK_CHAIN_INVALID",
        "critical extension this verifier does not process (1.3.6.1.4.1.99999.7)",
        pck_chain=_pem(leaf, sim.platform_ca_certificate, sim.root_certificate),
    )


def test_known_extension_marked_critical_but_not_processed_is_refused(
    sim: SimPlatform, authority: Authority
) -> None:
    """Name constraints are a standard extension, but this verifier does not apply them."""
    nc = x509.NameConstraints(permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None)
    inter = _reissue(sim.platform_ca_certificate, authority.root_key, extra=nc)
    leaf = _reissue(sim.pck_certificate, authority.platform_ca_key)
    _refused(
        sim,
        "PCK_CHAIN_INVALID",
        "PCK intermediate CA certificate has a critical extension this verifier does not process (2.5.29.30)",
        pck_chain=_pem(leaf, inter, sim.root_certificate),
    )


def test_intermediate_that_may_not_sign_certificates_is_refused(
    sim: SimPlatform, authority: Authority
) -> None:
    inter = _reissue(sim.platform_ca_certificate, authority.root_key, usage=_usage("crl_sign"))
    _refused(
        sim,
        "PCK_CHAIN_INVALID",
        "PCK intermediate CA certificate KeyUsage does not allow keyCertSign",
        pck_chain=_pem(sim.pck_certificate, inter, sim.root_certificate),
    )


def test_pck_certificate_that_may_not_sign_is_refused(sim: SimPlatform, authority: Authority) -> None:
    leaf = _reissue(sim.pck_certificate, authority.platform_ca_key, usage=_usage("key_agreement"))
    _refused(
        sim,
        "PCK_CHAIN_INVALID",
        "PCK certificate KeyUsage does not allow digitalSignature",
        pck_chain=_pem(leaf, sim.platform_ca_certificate, sim.root_certificate),
    )


def test_malformed_key_usage_is_a_typed_refusal(sim: SimPlatform, authority: Authority) -> None:
    # BIT STRING with one unused bit that is set: not DER.
    leaf = _reissue(sim.pck_certificate, authority.platform_ca_key, raw_usage=bytes.fromhex("030201c1"))
    _refused(
        sim,
        "PCK_CHAIN_INVALID",
        "PCK certificate KeyUsage extension is malformed",
        pck_chain=_pem(leaf, sim.platform_ca_certificate, sim.root_certificate),
    )


def test_tcb_signing_certificate_that_may_not_sign_is_refused(sim: SimPlatform, authority: Authority) -> None:
    signer = _reissue(sim.tcb_signing_certificate, authority.root_key, usage=_usage("key_cert_sign"))
    chain = _pem(signer, sim.root_certificate)
    col = dataclasses.replace(
        sim.collateral("tdx", now=NOW), tcb_info_issuer_chain=chain, qe_identity_issuer_chain=chain
    )
    _refused(
        sim,
        "COLLATERAL_SIGNATURE_INVALID",
        "TCB info issuer chain: the signing certificate KeyUsage does not allow digitalSignature",
        collateral=col,
    )


def test_pck_crl_issuer_that_may_not_sign_crls_is_refused(sim: SimPlatform, authority: Authority) -> None:
    """The same CA certificate in both places, allowed to sign certificates but not CRLs."""
    inter = _reissue(sim.platform_ca_certificate, authority.root_key, usage=_usage("key_cert_sign"))
    leaf = _reissue(sim.pck_certificate, authority.platform_ca_key)
    root = sim.root_certificate
    col = dataclasses.replace(sim.collateral("tdx", now=NOW), pck_crl_issuer_chain=_pem(inter, root))
    _refused(
        sim,
        "COLLATERAL_SIGNATURE_INVALID",
        "PCK CRL issuer certificate KeyUsage does not allow cRLSign",
        pck_chain=_pem(leaf, inter, root),
        collateral=col,
    )


# --- The raw readers on their own -------------------------------------------------------------------


@given(st.lists(st.booleans(), min_size=9, max_size=9).filter(any))
def test_key_usage_reader_agrees_with_cryptography_on_every_bit_pattern(flags: list[bool]) -> None:
    names = dict(zip(_KU_FIELDS, flags, strict=True))
    if not names["key_agreement"]:
        names["encipher_only"] = names["decipher_only"] = False
    if not any(names.values()):
        return
    _agree(self_signed("t", (x509.KeyUsage(**names), True)))


@pytest.mark.parametrize(
    "value",
    [
        "0300",  # empty BIT STRING
        "030100",  # no bits at all
        "03020100",  # all bits clear
        "030208c0",  # more than 7 unused bits
        "030201c1",  # an unused bit set
        "0402 0180",  # not a BIT STRING
        "0305 00ffffffff",  # longer than KeyUsage can be
        "030201c000",  # trailing data
    ],
)
def test_malformed_key_usage_values_are_value_errors(value: str) -> None:
    parts = load_cert(_corpus_certificates()[0].public_bytes(Encoding.DER))
    broken = parts._replace(extensions={**parts.extensions, encode_oid("2.5.29.15"): bytes.fromhex(value)})
    with pytest.raises(ValueError):
        key_usage(broken)


@given(st.integers(0, 2), st.integers(0, 39), st.lists(st.integers(0, 2**40), max_size=6))
def test_oid_text_inverts_the_oid_encoder(top: int, second: int, rest: list[int]) -> None:
    dotted = ".".join(map(str, [top, second, *rest]))
    assert oid_text(encode_oid(dotted)) == dotted


def test_oid_text_of_a_cut_off_oid_is_a_question_mark() -> None:
    assert oid_text(b"") == "?"
    assert oid_text(b"\x2b\x86") == "?"
