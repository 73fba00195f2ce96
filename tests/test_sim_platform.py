"""The simulated platform on its own: state persistence, the Intel-shaped PKI, quote bytes, sealing keys.

Format conformance is checked twice: with the production parsers (``dcap.abi``, ``dcap.pck``) and with
an independent implementation (dcap-qvl), so a shared misunderstanding cannot hide in both.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import dcap_qvl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtensionOID, NameOID, SignatureAlgorithmOID

from sealing_key_provider.dcap import abi
from sealing_key_provider.dcap.abi import BodyType
from sealing_key_provider.dcap.pck import SGX_EXTENSION_OID, pck_identity
from sealing_key_provider.errors import ConfigError, ProviderError
from sealing_key_provider.sim import (
    DEBUG_SGX_ATTRIBUTES,
    SgxEnclaveIdentity,
    SimPlatform,
    SimStateError,
    SimStateNotFound,
    default_state_dir,
    der,
)
from sealing_key_provider.sim.platform import SGX_QE_MRSIGNER, TD_QE_MRSIGNER
from sealing_key_provider.sim.state import STATE_FILE

ENCLAVE = SgxEnclaveIdentity(mrenclave=bytes(range(32)), mrsigner=bytes(range(32, 64)), isvprodid=7, isvsvn=3)
MRTD = bytes([0x11]) * 48
RTMRS = (bytes([0x20]) * 48, bytes([0x21]) * 48, bytes([0x22]) * 48, bytes([0x23]) * 48)
REPORT_DATA = hashlib.sha512(b"report data").digest()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("sim") / "state")


def _verify_raw(key: ec.EllipticCurvePublicKey, sig: bytes, data: bytes) -> None:
    der_sig = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    key.verify(der_sig, data, ec.ECDSA(hashes.SHA256()))


def _public_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)


# --- state ---------------------------------------------------------------------------------------


def test_init_writes_private_state_and_root_pem(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b"
    p = SimPlatform.init(d)
    assert stat.S_IMODE((d / STATE_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert x509.load_pem_x509_certificate((d / "root-ca.pem").read_bytes()) == p.root_certificate
    assert p.root_ca_pem_path == d / "root-ca.pem"
    assert sorted(f.name for f in d.iterdir()) == ["platform.json", "root-ca.pem"]  # no temp files left
    assert len(p.ppid) == 16 and len(p.qe_id) == 16 and len(p.fmspc) == 6


def test_init_is_idempotent_and_state_survives_restart(tmp_path: Path) -> None:
    p1 = SimPlatform.init(tmp_path)
    before = (tmp_path / STATE_FILE).read_bytes()
    p2 = SimPlatform.init(tmp_path)
    p3 = SimPlatform.load(tmp_path)
    assert (tmp_path / STATE_FILE).read_bytes() == before
    for p in (p2, p3):
        assert (p.ppid, p.qe_id, p.fmspc, p.root_certificate) == (
            p1.ppid,
            p1.qe_id,
            p1.fmspc,
            p1.root_certificate,
        )
        assert p.sealing_key(ENCLAVE) == p1.sealing_key(ENCLAVE)
    # The attestation keys are derived, not random: the same across restarts.
    q1, q3 = abi.parse_quote(p1.tdx_quote()), abi.parse_quote(p3.tdx_quote())
    assert q1.attestation_key == q3.attestation_key


def test_init_restores_a_missing_root_pem(tmp_path: Path) -> None:
    p = SimPlatform.init(tmp_path)
    (tmp_path / "root-ca.pem").unlink()
    SimPlatform.init(tmp_path)
    assert x509.load_pem_x509_certificate((tmp_path / "root-ca.pem").read_bytes()) == p.root_certificate


def test_concurrent_init_yields_one_platform(tmp_path: Path) -> None:
    results: list[SimPlatform] = []
    threads = [threading.Thread(target=lambda: results.append(SimPlatform.init(tmp_path))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6
    assert len({p.ppid for p in results}) == 1
    assert SimPlatform.load(tmp_path).ppid == results[0].ppid


def test_init_refuses_options_that_contradict_the_state(tmp_path: Path) -> None:
    SimPlatform.init(tmp_path, fmspc=bytes.fromhex("00906ED50000"))
    with pytest.raises(SimStateError):
        SimPlatform.init(tmp_path, fmspc=bytes.fromhex("90C06F000000"))
    with pytest.raises(SimStateError):
        SimPlatform.init(tmp_path, tdx_module_major=3)
    assert SimPlatform.init(tmp_path, fmspc=bytes.fromhex("00906ED50000")).fmspc.hex() == "00906ed50000"


def test_load_without_state_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(SimStateNotFound) as e:
        SimPlatform.load(tmp_path / "nothing")
    assert isinstance(e.value, ConfigError) and isinstance(e.value, ProviderError)
    assert e.value.code == "SIM_STATE_NOT_FOUND"


def _corrupt_variants(doc: dict[str, object], other: dict[str, object]) -> dict[str, str]:
    def mutated(**changes: object) -> str:
        return json.dumps({**doc, **changes})

    authority = dict(doc["authority"])  # type: ignore[call-overload]
    authority["root_cert"] = other["authority"]["root_cert"]  # type: ignore[index]
    return {
        "truncated": json.dumps(doc)[:500],
        "not json": "\x00\x01garbage",
        "array": "[]",
        "wrong format": mutated(format="something-else/9"),
        "short ppid": mutated(ppid="00" * 15),
        "non-hex fmspc": mutated(fmspc="zz" * 6),
        "bool pcesvn": mutated(pcesvn=True),
        "component out of range": mutated(sgx_tcb_components=[256] + [0] * 15),
        "other secret": mutated(platform_secret=other["platform_secret"]),
        "other PCK cert": mutated(pck_cert=other["pck_cert"]),
        "ppid disagrees with PCK cert": mutated(ppid=other["ppid"]),
        "root cert of another key": mutated(authority=authority),
        "missing authority": json.dumps({k: v for k, v in doc.items() if k != "authority"}),
        "bad key": mutated(authority={**authority, "root_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n"}),
    }


def test_corrupted_state_is_a_typed_error_without_secrets(tmp_path: Path) -> None:
    SimPlatform.init(tmp_path / "good")
    SimPlatform.init(tmp_path / "other")
    doc = json.loads((tmp_path / "good" / STATE_FILE).read_text())
    other = json.loads((tmp_path / "other" / STATE_FILE).read_text())
    for name, text in _corrupt_variants(doc, other).items():
        d = tmp_path / name.replace(" ", "-")
        d.mkdir()
        (d / STATE_FILE).write_text(text)
        with pytest.raises(SimStateError) as e:
            SimPlatform.load(d)
        assert e.value.code == "SIM_STATE_INVALID", name
        message = str(e.value)
        assert doc["platform_secret"] not in message and other["platform_secret"] not in message, name
        assert "PRIVATE KEY" not in message, name
        # init must not paper over damaged state either.
        with pytest.raises(SimStateError):
            SimPlatform.init(d)


def test_default_state_dir_follows_xdg() -> None:
    assert default_state_dir({"XDG_DATA_HOME": "/x", "HOME": "/h"}) == Path("/x/sealing-key-provider/sim")
    assert default_state_dir({"HOME": "/h"}) == Path("/h/.local/share/sealing-key-provider/sim")


def test_default_state_dir_is_used_when_none_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    p = SimPlatform.init()
    assert p.state_dir == tmp_path / "sealing-key-provider" / "sim"
    assert SimPlatform.load().ppid == p.ppid


# --- PKI -----------------------------------------------------------------------------------------


def _cn(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_pki_is_shaped_like_intels(platform: SimPlatform) -> None:
    root, ca, leaf, signing = (
        platform.root_certificate,
        platform.platform_ca_certificate,
        platform.pck_certificate,
        platform.tcb_signing_certificate,
    )
    assert "SGX Root CA" in _cn(root.subject) and root.issuer == root.subject
    assert "SGX PCK Platform CA" in _cn(ca.subject) and ca.issuer == root.subject
    assert "SGX PCK Certificate" in _cn(leaf.subject) and leaf.issuer == ca.subject
    assert "SGX TCB Signing" in _cn(signing.subject) and signing.issuer == root.subject
    for cert in (root, ca, leaf, signing):
        oids = [a.oid for a in cert.subject]
        assert oids == [
            NameOID.COMMON_NAME,
            NameOID.ORGANIZATION_NAME,
            NameOID.LOCALITY_NAME,
            NameOID.STATE_OR_PROVINCE_NAME,
            NameOID.COUNTRY_NAME,
        ]
        assert "Simulated" in str(cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value)
        assert "Simulated" in _cn(cert.subject)
        assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
        ext = [e.oid for e in cert.extensions]
        assert ext[:5] == [
            ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
            ExtensionOID.CRL_DISTRIBUTION_POINTS,
            ExtensionOID.SUBJECT_KEY_IDENTIFIER,
            ExtensionOID.KEY_USAGE,
            ExtensionOID.BASIC_CONSTRAINTS,
        ]
        assert cert.extensions.get_extension_for_class(x509.KeyUsage).critical
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).critical
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    # Signatures chain up.
    leaf.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(root)
    signing.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)


def test_pck_extension_parses_with_both_parsers(platform: SimPlatform) -> None:
    ident = pck_identity(platform.pck_certificate)
    assert ident == platform.pck_identity
    assert (ident.ppid, ident.fmspc, ident.pce_id) == (platform.ppid, platform.fmspc, platform.pce_id)
    assert ident.ca_type == "platform" and ident.sgx_type == "Scalable"
    assert ident.platform_instance_id is not None and ident.smt_enabled is True
    assert ident.cpusvn == platform.cpusvn and ident.pcesvn == platform.pcesvn
    ext = dcap_qvl.parse_pck_extension_from_pem(platform.pck_chain_pem)
    assert (ext.ppid, ext.fmspc, ext.pce_id, ext.cpu_svn, ext.pce_svn) == (
        platform.ppid,
        platform.fmspc,
        platform.pce_id,
        platform.cpusvn,
        platform.pcesvn,
    )
    assert ext.platform_instance_id == ident.platform_instance_id
    raw = platform.pck_certificate.extensions.get_extension_for_oid(SGX_EXTENSION_OID)
    assert not raw.critical


def test_der_encodings_match_intels() -> None:
    # Byte strings as they appear in Intel's PCK certificates (see the test corpus).
    assert der.oid("1.2.840.113741.1.13.1.2.17") == bytes.fromhex("060B2A864886F84D010D010211")
    assert der.integer(3) == bytes.fromhex("020103")
    assert der.integer(255) == bytes.fromhex("020200FF")
    assert der.enumerated(1) == bytes.fromhex("0A0101")
    assert der.boolean(True) == bytes.fromhex("0101FF")
    assert der.tlv(0x30, bytes(200))[:3] == bytes.fromhex("3081C8")
    assert der.tlv(0x30, bytes(300))[:4] == bytes.fromhex("3082012C")


# --- quotes --------------------------------------------------------------------------------------


def _check_common(platform: SimPlatform, q: abi.Quote, tee: str) -> None:
    assert q.header.qe_vendor_id == abi.INTEL_QE_VENDOR_ID
    assert q.header.att_key_type == 2
    assert q.header.user_data == platform.qe_id + bytes(4)
    assert q.qe_auth_data == bytes(range(32))
    qe = q.qe_report
    assert qe.isvprodid == (2 if tee == "tdx" else 1)
    assert qe.mrsigner == (TD_QE_MRSIGNER if tee == "tdx" else SGX_QE_MRSIGNER)
    assert qe.report_data == hashlib.sha256(q.attestation_key + q.qe_auth_data).digest() + bytes(32)
    assert not qe.debug
    _verify_raw(platform.pck_certificate.public_key(), q.qe_report_signature, qe.raw)  # type: ignore[arg-type]
    _verify_raw(_public_key(q.attestation_key), q.signature, q.signed_data)
    assert q.pck_chain_pem == platform.pck_chain_pem
    certs = x509.load_pem_x509_certificates(q.pck_chain_pem)
    assert certs == [platform.pck_certificate, platform.platform_ca_certificate, platform.root_certificate]


@pytest.mark.parametrize(
    ("version", "body", "expected_type", "size"),
    [(4, None, BodyType.TD10, 584), (5, None, BodyType.TD15, 648), (5, BodyType.TD10, BodyType.TD10, 584)],
)
def test_tdx_quote_carries_the_requested_measurements(
    platform: SimPlatform, version: int, body: BodyType | None, expected_type: BodyType, size: int
) -> None:
    data = platform.tdx_quote(
        report_data=REPORT_DATA,
        mrtd=MRTD,
        rtmrs=RTMRS,
        mrconfigid=b"\x31" * 48,
        mrowner=b"\x32" * 48,
        mrownerconfig=b"\x33" * 48,
        version=version,
        body=body,
    )
    q = abi.parse_quote(data)
    assert q.size == len(data)
    assert q.header.version == version and q.header.tee_type == abi.TeeType.TDX
    assert q.body_type == expected_type and len(q.td_report.raw) == size
    td = q.td_report
    assert td.report_data == REPORT_DATA and td.mrtd == MRTD and td.rtmrs == RTMRS
    assert (td.mrconfigid, td.mrowner, td.mrownerconfig) == (b"\x31" * 48, b"\x32" * 48, b"\x33" * 48)
    assert td.mrsignerseam == bytes(48) and td.seam_attributes == bytes(8)
    assert td.tee_tcb_svn == platform.tee_tcb_svn and td.tee_tcb_svn[1] == 1
    assert int.from_bytes(td.td_attributes, "little") == 1 << 28 and not td.debug
    assert td.xfam == bytes.fromhex("e702060000000000")
    if expected_type == BodyType.TD15:
        assert td.tee_tcb_svn2 == platform.tee_tcb_svn and td.mrservicetd == bytes(48)
    else:
        assert td.tee_tcb_svn2 is None
    _check_common(platform, q, "tdx")
    # v4: signature data length at 632, type 6 at 764 and nested type 5 at 1252 (reference 1.5).
    if version == 4:
        assert data[764:766] == b"\x06\x00" and data[1252:1254] == b"\x05\x00"


@pytest.mark.parametrize("version", [3, 5])
def test_sgx_quote_carries_the_enclave_identity(platform: SimPlatform, version: int) -> None:
    data = platform.sgx_quote(REPORT_DATA[:40], enclave=ENCLAVE, version=version)
    q = abi.parse_quote(data)
    assert q.header.version == version and q.header.tee_type == abi.TeeType.SGX
    e = q.enclave_report
    assert e.report_data == REPORT_DATA[:40] + bytes(24)
    assert (e.mrenclave, e.mrsigner, e.isvprodid, e.isvsvn) == (
        ENCLAVE.mrenclave,
        ENCLAVE.mrsigner,
        ENCLAVE.isvprodid,
        ENCLAVE.isvsvn,
    )
    assert e.cpusvn == platform.cpusvn and not e.debug
    if version == 3:
        # Gramine's sgx-quote.py offsets; v3 header carries QE and PCE SVNs.
        assert data[112:144] == ENCLAVE.mrenclave and data[368:432] == e.report_data
        assert (q.header.qe_svn, q.header.pce_svn) == (q.qe_report.isvsvn, platform.pcesvn)
        assert data[1046:1048] == b"\x05\x00"
    _check_common(platform, q, "sgx")


def test_one_qe_id_two_attestation_keys(platform: SimPlatform) -> None:
    t = abi.parse_quote(platform.tdx_quote())
    s = abi.parse_quote(platform.sgx_quote(enclave=ENCLAVE))
    assert t.header.qe_id == s.header.qe_id == platform.qe_id
    assert t.attestation_key != s.attestation_key
    # The QE report (and its PCK signature) is fixed per QE; only the quote signature is new.
    assert abi.parse_quote(platform.tdx_quote(report_data=b"x")).qe_report_signature == t.qe_report_signature


def test_debug_flags(platform: SimPlatform) -> None:
    assert abi.parse_quote(platform.tdx_quote(debug=True)).td_report.debug
    debug_enclave = SgxEnclaveIdentity(ENCLAVE.mrenclave, ENCLAVE.mrsigner, attributes=DEBUG_SGX_ATTRIBUTES)
    assert debug_enclave.debug
    assert abi.parse_quote(platform.sgx_quote(enclave=debug_enclave)).enclave_report.debug


def test_tdx_module_major_3(tmp_path: Path) -> None:
    p = SimPlatform.init(tmp_path, tdx_module_major=3)
    assert abi.parse_quote(p.tdx_quote()).td_report.tee_tcb_svn[:2] == bytes([3, 3])


def test_dcap_qvl_reads_simulated_quotes_the_same(platform: SimPlatform) -> None:
    quotes = {
        "tdx4": platform.tdx_quote(report_data=REPORT_DATA, mrtd=MRTD, rtmrs=RTMRS, version=4),
        "tdx5": platform.tdx_quote(report_data=REPORT_DATA, mrtd=MRTD, rtmrs=RTMRS, version=5),
        "tdx5-td10": platform.tdx_quote(report_data=REPORT_DATA, mrtd=MRTD, version=5, body=BodyType.TD10),
    }
    for name, data in quotes.items():
        q = dcap_qvl.parse_quote(data)
        assert q.is_tdx(), name
        assert q.header.version == (4 if name == "tdx4" else 5)
        assert q.header.user_data[:16] == platform.qe_id
        assert q.fmspc() == platform.fmspc.hex().upper() and q.ca() == "platform"
        r = q.report
        assert r.report_data == REPORT_DATA and r.mr_td == MRTD
        if name != "tdx5-td10":
            assert (r.rt_mr0, r.rt_mr1, r.rt_mr2, r.rt_mr3) == RTMRS
        assert r.tee_tcb_svn == platform.tee_tcb_svn and r.mr_signer_seam == bytes(48)
    s = dcap_qvl.parse_quote(platform.sgx_quote(REPORT_DATA, enclave=ENCLAVE))
    assert s.is_sgx() and s.header.version == 3
    assert s.report.mr_enclave == ENCLAVE.mrenclave and s.report.mr_signer == ENCLAVE.mrsigner
    assert s.report.report_data == REPORT_DATA and s.report.cpu_svn == platform.cpusvn


def test_quote_arguments_are_checked(platform: SimPlatform) -> None:
    bad_calls: list[Callable[[], object]] = [
        lambda: platform.tdx_quote(mrtd=bytes(47)),
        lambda: platform.tdx_quote(rtmrs=(bytes(48),) * 3),
        lambda: platform.tdx_quote(report_data=bytes(65)),
        lambda: platform.tdx_quote(version=3),
        lambda: platform.tdx_quote(version=4, body=BodyType.TD15),
        lambda: platform.tdx_quote(version=5, body=BodyType.SGX),
        lambda: platform.sgx_quote(enclave=ENCLAVE, version=4),
        lambda: SgxEnclaveIdentity(mrenclave=bytes(31), mrsigner=bytes(32)),
        lambda: SgxEnclaveIdentity(mrenclave=bytes(32), mrsigner=bytes(32), isvsvn=70000),
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()


# --- sealing keys --------------------------------------------------------------------------------


def test_sealing_key_behaves_like_egetkey(platform: SimPlatform, tmp_path: Path) -> None:
    from dataclasses import replace

    key = platform.sealing_key(ENCLAVE)
    assert len(key) == 16 and key == platform.sealing_key(ENCLAVE, "mrenclave")
    other_mrenclave = replace(ENCLAVE, mrenclave=bytes(32))
    assert platform.sealing_key(other_mrenclave) != key
    # MRSIGNER policy: same signer and product share the key, whatever the MRENCLAVE.
    signer_key = platform.sealing_key(ENCLAVE, "mrsigner")
    assert signer_key != key
    assert platform.sealing_key(other_mrenclave, "mrsigner") == signer_key
    assert platform.sealing_key(replace(ENCLAVE, isvprodid=8), "mrsigner") != signer_key
    assert platform.sealing_key(replace(ENCLAVE, mrsigner=bytes(32)), "mrsigner") != signer_key
    # ISVSVN, CONFIGSVN and the DEBUG attribute are bound under both policies.
    for changed in (
        replace(ENCLAVE, isvsvn=4),
        replace(ENCLAVE, configsvn=1),
        replace(ENCLAVE, attributes=DEBUG_SGX_ATTRIBUTES),
    ):
        assert platform.sealing_key(changed) != key
        assert platform.sealing_key(changed, "mrsigner") != signer_key
    # XFRM bits outside Gramine's default seal mask (AVX, 0x04) do not change the key.
    avx_toggled = bytearray(ENCLAVE.attributes)
    avx_toggled[8] ^= 0x04
    assert platform.sealing_key(replace(ENCLAVE, attributes=bytes(avx_toggled))) == key
    # Another machine, another key.
    assert SimPlatform.init(tmp_path).sealing_key(ENCLAVE) != key
    with pytest.raises(ValueError):
        platform.sealing_key(ENCLAVE, "mrenclave+mrsigner")


def test_sealing_key_survives_a_new_process(platform: SimPlatform) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from sealing_key_provider.sim import SimPlatform, SgxEnclaveIdentity as E;"
        "p = SimPlatform.load(sys.argv[1]);"
        "print(p.sealing_key(E(bytes(range(32)), bytes(range(32, 64)), isvprodid=7, isvsvn=3)).hex())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(platform.state_dir)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ},
    ).stdout.strip()
    assert out == platform.sealing_key(ENCLAVE).hex()


def test_the_secret_never_shows_in_reprs(platform: SimPlatform) -> None:
    secret_hex = json.loads((platform.state_dir / STATE_FILE).read_text())["platform_secret"]
    from sealing_key_provider.sim.state import read_state

    assert secret_hex not in repr(read_state(platform.state_dir))
    assert secret_hex not in repr(platform)
