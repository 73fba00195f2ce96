"""Simulated quotes and collateral through the production verifier and, independently, dcap-qvl.

Every kind of simulated quote must verify UpToDate under the simulator's root, every scenario must give
the outcome it promises (``Scenario.expected``), and nothing simulated may verify under Intel's root.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import dcap_qvl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from sealing_key_provider.dcap.abi import BodyType
from sealing_key_provider.dcap.collateral import Collateral, TcbLevel, parse_enclave_identity, parse_tcb_info
from sealing_key_provider.dcap.verify import Verifier
from sealing_key_provider.errors import ProviderError
from sealing_key_provider.sim import Scenario, SgxEnclaveIdentity, SimPlatform

#: 2026-05-28T20:26:40Z: a fixed "now", so runs are reproducible.
NOW = 1_780_000_000
ENCLAVE = SgxEnclaveIdentity(mrenclave=b"\xaa" * 32, mrsigner=b"\xbb" * 32, isvprodid=1, isvsvn=2)

QuoteMaker = Callable[[SimPlatform], bytes]
KINDS: dict[str, tuple[str, QuoteMaker]] = {
    "sgx-v3": ("sgx", lambda p: p.sgx_quote(b"sgx", enclave=ENCLAVE)),
    "sgx-v5": ("sgx", lambda p: p.sgx_quote(b"sgx", enclave=ENCLAVE, version=5)),
    "tdx-v4": ("tdx", lambda p: p.tdx_quote(report_data=b"td", mrtd=b"\x01" * 48)),
    "tdx-v5-td10": ("tdx", lambda p: p.tdx_quote(report_data=b"td", version=5, body=BodyType.TD10)),
    "tdx-v5-td15": ("tdx", lambda p: p.tdx_quote(report_data=b"td", version=5)),
}
#: dcap-qvl insists SGX quotes are v3 (reference 1.1), so it is not asked about SGX v5.
QVL_KINDS = ("sgx-v3", "tdx-v4", "tdx-v5-td10", "tdx-v5-td15")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("sim-verify"))


@pytest.fixture(scope="module")
def verifier(platform: SimPlatform) -> Verifier:
    return Verifier(trust_anchor=platform.root_certificate)


@pytest.fixture(scope="module")
def quotes(platform: SimPlatform) -> dict[str, bytes]:
    return {name: make(platform) for name, (_, make) in KINDS.items()}


def _qvl(platform: SimPlatform, quote: bytes, collateral: Collateral) -> tuple[str, set[str]]:
    r = dcap_qvl.verify_with_root_ca(
        quote,
        dcap_qvl.QuoteCollateralV3.from_json(collateral.to_json()),
        platform.root_certificate.public_bytes(Encoding.DER),
        NOW,
    )
    return r.status, set(r.advisory_ids)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_verifies_up_to_date(
    platform: SimPlatform, verifier: Verifier, quotes: dict[str, bytes], kind: str
) -> None:
    tee, _ = KINDS[kind]
    collateral = platform.collateral(tee, now=NOW)
    r = verifier.verify(quotes[kind], collateral, now=NOW)
    assert r.status == "UpToDate" and r.advisory_ids == ()
    assert r.pck.ppid == platform.ppid and r.pck.fmspc == platform.fmspc
    assert r.quote.header.qe_id == platform.qe_id
    assert r.quote.report_data[:3] == (b"sgx" if tee == "sgx" else b"td\x00")
    assert NOW < r.collateral_expiry <= NOW + 30 * 86400
    if tee == "tdx":
        assert r.tdx_module_status == "UpToDate"
    if kind in QVL_KINDS:
        assert _qvl(platform, quotes[kind], collateral) == ("UpToDate", set())


@pytest.mark.parametrize("kind", list(KINDS))
def test_intel_root_rejects_every_simulated_quote(
    platform: SimPlatform, quotes: dict[str, bytes], kind: str
) -> None:
    with pytest.raises(ProviderError) as e:
        Verifier().verify(quotes[kind], platform.collateral(KINDS[kind][0], now=NOW), now=NOW)
    assert e.value.code == "PCK_CHAIN_INVALID"


SCENARIO_CASES = [
    (kind, scenario)
    for kind in KINDS
    for scenario in Scenario
    if not (scenario.tdx_only and KINDS[kind][0] != "tdx")
]


@pytest.mark.parametrize(
    ("kind", "scenario"), SCENARIO_CASES, ids=[f"{k}-{s.value}" for k, s in SCENARIO_CASES]
)
def test_every_scenario_gives_its_expected_outcome(
    platform: SimPlatform, verifier: Verifier, quotes: dict[str, bytes], kind: str, scenario: Scenario
) -> None:
    tee, _ = KINDS[kind]
    collateral = platform.collateral(tee, now=NOW, scenario=scenario)
    expected = scenario.expected
    if expected.code is not None:
        with pytest.raises(ProviderError) as e:
            verifier.verify(quotes[kind], collateral, now=NOW)
        assert e.value.code == expected.code
    else:
        r = verifier.verify(quotes[kind], collateral, now=NOW)
        assert (r.status, set(r.advisory_ids)) == (expected.status, set(expected.advisory_ids))
    if kind not in QVL_KINDS:
        return
    # dcap-qvl agrees: same status and advisories, or it refuses too (it treats Revoked as an error).
    if expected.code is None and expected.status != "Revoked":
        assert _qvl(platform, quotes[kind], collateral) == (expected.status, set(expected.advisory_ids))
    else:
        with pytest.raises(ValueError):
            _qvl(platform, quotes[kind], collateral)


def test_debug_td_verifies_and_says_so(platform: SimPlatform, verifier: Verifier) -> None:
    for version in (4, 5):
        r = verifier.verify(
            platform.tdx_quote(debug=True, version=version), platform.collateral("tdx", now=NOW), NOW
        )
        assert r.status == "UpToDate" and r.quote.td_report.debug


@pytest.mark.parametrize("tee", ["tdx", "sgx"])
def test_rogue_qe_is_a_qe_identity_mismatch(platform: SimPlatform, verifier: Verifier, tee: str) -> None:
    quote = (
        platform.tdx_quote(rogue_qe=True)
        if tee == "tdx"
        else platform.sgx_quote(enclave=ENCLAVE, rogue_qe=True)
    )
    with pytest.raises(ProviderError) as e:
        verifier.verify(quote, platform.collateral(tee, now=NOW), NOW)
    assert e.value.code == "QE_IDENTITY_MISMATCH"


def test_second_platform_under_the_same_ca(tmp_path: Path, platform: SimPlatform, verifier: Verifier) -> None:
    twin = SimPlatform.init(tmp_path / "same-fmspc", share_ca_with=platform)
    other = SimPlatform.init(
        tmp_path / "other-fmspc", share_ca_with=platform, fmspc=bytes.fromhex("00806F050000")
    )
    assert twin.root_certificate == platform.root_certificate
    assert len({platform.ppid, twin.ppid, other.ppid}) == 3
    assert len({platform.qe_id, twin.qe_id, other.qe_id}) == 3
    enclave_keys = {p.sealing_key(ENCLAVE) for p in (platform, twin, other)}
    assert len(enclave_keys) == 3
    # Same FMSPC: the first platform's collateral serves the twin; the verifier tells them apart by PPID.
    r = verifier.verify(twin.tdx_quote(), platform.collateral("tdx", now=NOW), NOW)
    assert r.status == "UpToDate" and r.pck.ppid == twin.ppid != platform.ppid
    # Other FMSPC: needs its own collateral; the first platform's is refused.
    assert verifier.verify(other.tdx_quote(), other.collateral("tdx", now=NOW), NOW).pck.fmspc == other.fmspc
    with pytest.raises(ProviderError) as e:
        verifier.verify(other.tdx_quote(), platform.collateral("tdx", now=NOW), NOW)
    assert e.value.code == "FMSPC_MISMATCH"
    # Revoking the twin's PCK certificate does not revoke the first platform's.
    revoked_twin = twin.collateral("tdx", now=NOW, scenario=Scenario.REVOKED_PCK)
    assert verifier.verify(platform.tdx_quote(), revoked_twin, NOW).status == "UpToDate"


def test_independent_platform_is_not_trusted_by_another_root(tmp_path: Path, verifier: Verifier) -> None:
    stranger = SimPlatform.init(tmp_path)
    with pytest.raises(ProviderError) as e:
        verifier.verify(stranger.tdx_quote(), stranger.collateral("tdx", now=NOW), NOW)
    assert e.value.code == "PCK_CHAIN_INVALID"


def test_tdx_module_3_uses_its_module_identity(tmp_path: Path) -> None:
    p = SimPlatform.init(tmp_path, tdx_module_major=3)
    v = Verifier(trust_anchor=p.root_certificate)
    for scenario in (Scenario.UP_TO_DATE, Scenario.TDX_MODULE_OUT_OF_DATE):
        for version in (4, 5):
            r = v.verify(p.tdx_quote(version=version), p.collateral("tdx", now=NOW, scenario=scenario), NOW)
            assert r.status == scenario.expected.status
            assert r.tdx_module_status == ("UpToDate" if scenario is Scenario.UP_TO_DATE else "OutOfDate")


def test_collateral_expiry_is_relative_to_now(platform: SimPlatform, verifier: Verifier) -> None:
    quote = platform.tdx_quote()
    collateral = platform.collateral("tdx", now=NOW)
    verifier.verify(quote, collateral, NOW + 29 * 86400)
    with pytest.raises(ProviderError) as e:
        verifier.verify(quote, collateral, NOW + 31 * 86400)
    assert e.value.code == "COLLATERAL_EXPIRED"
    with pytest.raises(ProviderError) as e:
        verifier.verify(quote, collateral, NOW - 2 * 3600)
    assert e.value.code == "COLLATERAL_NOT_YET_VALID"


# --- the collateral documents themselves ---------------------------------------------------------


def _verify_raw(cert: x509.Certificate, sig: bytes, data: bytes) -> None:
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    key.verify(der, data, ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("tee", ["tdx", "sgx"])
def test_collateral_documents_are_shaped_and_signed_like_intels(platform: SimPlatform, tee: str) -> None:
    c = platform.collateral(tee, now=NOW)
    assert Collateral.from_json(c.to_json()) == c
    signing, root = x509.load_pem_x509_certificates(c.tcb_info_issuer_chain)
    assert c.qe_identity_issuer_chain == c.tcb_info_issuer_chain
    assert root == platform.root_certificate and signing == platform.tcb_signing_certificate
    _verify_raw(signing, c.tcb_info_signature, c.tcb_info)
    _verify_raw(signing, c.qe_identity_signature, c.qe_identity)
    info = parse_tcb_info(c.tcb_info)
    assert info.id == tee.upper() and info.version == 3 and info.fmspc == platform.fmspc
    assert info.pce_id == platform.pce_id
    assert info.issue_date == NOW - 3600 and info.next_update == NOW - 3600 + 30 * 86400
    assert json.loads(c.tcb_info)["issueDate"] == "2026-05-28T19:26:40Z"
    assert c.tcb_info == json.dumps(json.loads(c.tcb_info), separators=(",", ":")).encode()
    if tee == "tdx":
        assert [m.id for m in info.tdx_module_identities] == ["TDX_03", "TDX_01"]
        assert info.tdx_module is not None and info.tdx_module.mrsigner == bytes(48)
        assert all(lvl.tdx_components is not None for lvl in info.tcb_levels)
    else:
        assert info.tdx_module is None and "tdxModule" not in json.loads(c.tcb_info)
    ident = parse_enclave_identity(c.qe_identity)
    assert ident.id == ("TD_QE" if tee == "tdx" else "QE") and ident.version == 2
    assert ident.isvprodid == (2 if tee == "tdx" else 1)
    # CRLs: DER, issued and signed by the right CA, with CRL Number and AKI, valid around now.
    ca, root2 = x509.load_pem_x509_certificates(c.pck_crl_issuer_chain)
    assert ca == platform.platform_ca_certificate and root2 == root
    for data, issuer in ((c.root_ca_crl, root), (c.pck_crl, ca)):
        crl = x509.load_der_x509_crl(data)
        assert crl.issuer == issuer.subject and crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
        crl.extensions.get_extension_for_class(x509.CRLNumber)
        crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        assert crl.next_update_utc is not None
        assert crl.last_update_utc.timestamp() <= NOW < crl.next_update_utc.timestamp()
    pck_crl = x509.load_der_x509_crl(c.pck_crl)
    assert pck_crl.get_revoked_certificate_by_serial_number(platform.pck_certificate.serial_number) is None
    assert len(list(pck_crl)) == 2  # decoys: a PCK CRL is never trivially empty
    revoked = x509.load_der_x509_crl(platform.collateral(tee, now=NOW, scenario="revoked-pck").pck_crl)
    assert (
        revoked.get_revoked_certificate_by_serial_number(platform.pck_certificate.serial_number) is not None
    )


def _dominates(a: TcbLevel, b: TcbLevel) -> bool:
    """``a`` is at least ``b`` in every SVN (so a platform matching ``b`` would also match ``a``)."""
    tdx_a, tdx_b = a.tdx_components or (), b.tdx_components or ()
    return (
        all(x >= y for x, y in zip(a.sgx_components, b.sgx_components, strict=True))
        and a.pcesvn >= b.pcesvn
        and all(x >= y for x, y in zip(tdx_a, tdx_b, strict=True))
    )


def test_tcb_levels_are_in_descending_order(platform: SimPlatform) -> None:
    """Verifiers take the first matching level; a later level must never dominate an earlier one."""
    for tee in ("sgx", "tdx"):
        for scenario in Scenario:
            if scenario.tdx_only and tee == "sgx":
                continue
            levels = parse_tcb_info(platform.collateral(tee, now=NOW, scenario=scenario).tcb_info).tcb_levels
            assert len(levels) >= 2
            for i, earlier in enumerate(levels):
                for later in levels[i + 1 :]:
                    assert not _dominates(later, earlier), (tee, scenario)


def test_scenario_names_and_misuse(platform: SimPlatform) -> None:
    assert Scenario("out-of-date") is Scenario.OUT_OF_DATE
    assert parse_tcb_info(platform.collateral("tdx", now=NOW, scenario="expired").tcb_info).next_update < NOW
    with pytest.raises(ValueError):
        platform.collateral("tdx", now=NOW, scenario="no-such-scenario")
    with pytest.raises(ValueError):
        platform.collateral("sgx", now=NOW, scenario=Scenario.TDX_MODULE_OUT_OF_DATE)
    with pytest.raises(ValueError):
        platform.collateral("sev", now=NOW)
    for scenario in Scenario:
        e = scenario.expected
        assert (e.status is None) != (e.code is None)


def test_another_simulators_root_is_named_as_such(
    platform: SimPlatform, quotes: dict[str, bytes], tmp_path: Path
) -> None:
    """Two simulated platforms have roots with the same name: the error must not read 'ends in X,
    not the trusted root X'."""
    other = SimPlatform.init(tmp_path / "other")
    with pytest.raises(ProviderError) as err:
        Verifier(trust_anchor=other.root_certificate).verify(
            quotes["tdx-v4"], platform.collateral("tdx", now=NOW), NOW
        )
    assert err.value.code == "PCK_CHAIN_INVALID"
    assert "named 'C=US" in err.value.message and "but it is another certificate" in err.value.message
