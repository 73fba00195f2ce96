"""Verifier semantics beyond the corpus: caching never weakens checks, statuses merge as Intel's QVL."""

from __future__ import annotations

import pytest

from sealing_key_provider.dcap import TcbStatus, Verifier
from sealing_key_provider.dcap.verify import _converge
from sealing_key_provider.errors import ProviderError

from .corpus import case

S = TcbStatus


@pytest.mark.parametrize(
    ("platform", "other", "expected"),
    [
        (S.UP_TO_DATE, S.UP_TO_DATE, S.UP_TO_DATE),
        (S.UP_TO_DATE, S.OUT_OF_DATE, S.OUT_OF_DATE),
        (S.SW_HARDENING_NEEDED, S.OUT_OF_DATE, S.OUT_OF_DATE),
        (S.CONFIGURATION_NEEDED, S.OUT_OF_DATE, S.OUT_OF_DATE_CONFIGURATION_NEEDED),
        (S.CONFIGURATION_AND_SW_HARDENING_NEEDED, S.OUT_OF_DATE, S.OUT_OF_DATE_CONFIGURATION_NEEDED),
        (S.OUT_OF_DATE, S.OUT_OF_DATE, S.OUT_OF_DATE),
        (S.CONFIGURATION_NEEDED, S.REVOKED, S.REVOKED),
        (S.SW_HARDENING_NEEDED, S.UP_TO_DATE, S.SW_HARDENING_NEEDED),
        (S.OUT_OF_DATE, None, S.OUT_OF_DATE),
    ],
)
def test_status_convergence_follows_qvl(platform: S, other: S | None, expected: S) -> None:
    assert _converge(platform, other) is expected


def test_warm_verifier_rechecks_time_on_every_call() -> None:
    c = case("tdx-v4-phala-1")
    v = Verifier()
    ok = v.verify(c.quote, c.collateral, c.now)
    with pytest.raises(ProviderError) as err:
        v.verify(c.quote, c.collateral, ok.collateral_expiry + 1)
    assert err.value.code == "COLLATERAL_EXPIRED"
    with pytest.raises(ProviderError) as err:
        v.verify(c.quote, c.collateral, c.now - 40 * 86400)
    assert err.value.code == "COLLATERAL_NOT_YET_VALID"
    assert v.verify(c.quote, c.collateral, c.now).status == ok.status


def test_warm_result_equals_cold_result() -> None:
    c = case("tdx-v5-gotdx-1")
    v = Verifier()
    first = v.verify(c.quote, c.collateral, c.now)
    second = v.verify(c.quote, c.collateral, c.now)
    cold = Verifier().verify(c.quote, c.collateral, c.now)
    assert first.to_dict() == second.to_dict() == cold.to_dict()


def test_failures_are_not_cached_as_success() -> None:
    good = case("tdx-v4-phala-1")
    v = Verifier()
    bad = bytearray(good.quote)
    bad[1157] ^= 1  # QE report signature
    for _ in range(2):
        with pytest.raises(ProviderError) as err:
            v.verify(bytes(bad), good.collateral, good.now)
        assert err.value.code == "QE_REPORT_SIGNATURE_INVALID"
    assert v.verify(good.quote, good.collateral, good.now).status == "UpToDate"


def test_result_carries_pck_identity_and_expiry() -> None:
    c = case("tdx-v4-phala-1")
    r = Verifier().verify(c.quote, c.collateral, c.now)
    assert r.pck.ppid.hex() == "811dca2a26b952e85bb6448b097ba4fd"
    assert r.pck.fmspc.hex().upper() == "B0C06F000000"
    assert r.collateral_expiry <= 1752920163  # the earliest nextUpdate in this collateral, or earlier
    assert r.tdx_module_status is not None


def test_trust_anchor_argument_accepts_pem_and_der() -> None:
    from cryptography.hazmat.primitives import serialization

    from sealing_key_provider.dcap import INTEL_SGX_ROOT_CA_PEM, intel_sgx_root_ca

    der = intel_sgx_root_ca().public_bytes(serialization.Encoding.DER)
    c = case("sgx-v3-phala-1")
    for anchor in (INTEL_SGX_ROOT_CA_PEM, der):
        assert (
            Verifier(trust_anchor=anchor).verify(c.quote, c.collateral, c.now).status == c.expected["status"]
        )
    with pytest.raises(ProviderError):
        Verifier(trust_anchor=b"not a certificate")


def test_collateral_issued_is_the_latest_issue_date_cold_and_warm() -> None:
    """Computed once per collateral (the warm path reads no CRL dates), and equal to what the
    documents and CRLs say, read independently with cryptography."""
    from cryptography import x509

    from sealing_key_provider.dcap.collateral import parse_enclave_identity, parse_tcb_info

    from .corpus import cases

    def this_update(data: bytes) -> int:
        crl = x509.load_pem_x509_crl(data) if data.startswith(b"-----BEGIN") else x509.load_der_x509_crl(data)
        return int(crl.last_update_utc.timestamp())

    checked = 0
    for c in cases():
        col = c.collateral
        expected = max(
            parse_tcb_info(col.tcb_info).issue_date,
            parse_enclave_identity(col.qe_identity).issue_date,
            this_update(col.root_ca_crl),
            this_update(col.pck_crl),
        )
        v = Verifier()
        try:
            cold = v.verify(c.quote, col, c.now)
        except ProviderError:
            continue  # a corpus case that does not verify (no TCB level) has no result
        warm = v.verify(c.quote, col, c.now)
        assert cold.collateral_issued == warm.collateral_issued == expected
        checked += 1
    # Every corpus case that verifies at all (all but the two without a matching TCB level).
    assert checked == len(cases()) - 2
