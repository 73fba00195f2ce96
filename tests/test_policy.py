"""Release policy: construction from configuration, digest stability, and every check."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealing_key_provider.dcap.abi import (
    INTEL_QE_VENDOR_ID,
    BodyType,
    Quote,
    QuoteHeader,
    TeeType,
    parse_enclave_report,
    parse_td_report,
)
from sealing_key_provider.dcap.verify import TcbStatus, VerifiedQuote, Verifier
from sealing_key_provider.errors import (
    AdvisoryDenied,
    ConfigError,
    PolicyDenied,
    ProviderError,
    TcbStatusRejected,
    TdDebug,
    UnsupportedQuote,
)
from sealing_key_provider.policy import (
    ALLOWLIST_FIELDS,
    DEFAULT_ACCEPTED_TCB_STATUSES,
    Policy,
    VerifiedTdQuote,
    key_name_matches,
    validate_key_pattern,
)
from sealing_key_provider.sim import Scenario, SimPlatform

OFFSETS = {
    "mrtd": 136,
    "rtmr0": 328,
    "rtmr1": 376,
    "rtmr2": 424,
    "rtmr3": 472,
    "mrconfigid": 184,
    "mrowner": 232,
}


def m(tag: str) -> bytes:
    """A 48-byte measurement value."""
    return hashlib.sha384(tag.encode()).digest()


def make_quote(*, debug: bool = False, **values: bytes) -> Quote:
    raw = bytearray(584)
    for name, off in OFFSETS.items():
        raw[off : off + 48] = values.get(name, m(name))
    if debug:
        raw[120] |= 0x01
    td = parse_td_report(bytes(raw))
    header = QuoteHeader(
        version=4,
        att_key_type=2,
        tee_type=TeeType.TDX,
        qe_svn=0,
        pce_svn=0,
        qe_vendor_id=INTEL_QE_VENDOR_ID,
        user_data=bytes(20),
    )
    return Quote(
        header=header,
        body_type=BodyType.TD10,
        body=td,
        signature=bytes(64),
        attestation_key=bytes(64),
        qe_report=parse_enclave_report(bytes(384)),
        qe_report_signature=bytes(64),
        qe_auth_data=b"",
        pck_chain_pem=b"",
        signed_data=b"",
        size=0,
    )


@dataclass(frozen=True)
class Verified:
    quote: Quote
    status: str = "UpToDate"
    advisory_ids: tuple[str, ...] = ()


def verified(**kw: object) -> Verified:
    status = kw.pop("status", "UpToDate")
    advisories = kw.pop("advisory_ids", ())
    return Verified(make_quote(**kw), status, advisories)  # type: ignore[arg-type]


def _verifier_result_fits(v: VerifiedQuote) -> VerifiedTdQuote:
    """Static check (mypy): the DCAP verifier's result satisfies the policy's protocol."""
    return v


# --- defaults and checks ------------------------------------------------------------------------


def test_defaults() -> None:
    p = Policy()
    assert p.accepted_tcb_statuses == {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
    }
    assert not p.allow_debug_td and not p.freshness_required
    assert p.freshness_window_seconds == 300
    assert p.key_patterns_for(m("mrtd").hex()) is None
    p.check(verified(), "any/name")


@pytest.mark.parametrize("status", sorted(DEFAULT_ACCEPTED_TCB_STATUSES))
def test_accepted_statuses(status: str) -> None:
    Policy().check(verified(status=status), "k")


@pytest.mark.parametrize("status", ["OutOfDate", "OutOfDateConfigurationNeeded", "Revoked", "Bogus"])
def test_rejected_statuses(status: str) -> None:
    with pytest.raises(TcbStatusRejected, match=status) as info:
        Policy().check(verified(status=status), "k")
    assert info.value.code == "TCB_STATUS_REJECTED"


def test_strenum_status_from_verifier() -> None:
    Policy().check(Verified(make_quote(), TcbStatus.UP_TO_DATE), "k")
    with pytest.raises(TcbStatusRejected, match="'OutOfDate'"):
        Policy().check(Verified(make_quote(), TcbStatus.OUT_OF_DATE), "k")


def test_out_of_date_can_be_accepted() -> None:
    p = Policy.from_mapping({"accepted_tcb_statuses": ["UpToDate", "OutOfDate"]})
    p.check(verified(status="OutOfDate"), "k")
    with pytest.raises(TcbStatusRejected):
        p.check(verified(status="SWHardeningNeeded"), "k")


def test_denied_advisories() -> None:
    p = Policy.from_mapping({"denied_advisory_ids": ["intel-sa-00837", "INTEL-SA-00615"]})
    p.check(verified(advisory_ids=("INTEL-SA-00289",)), "k")
    with pytest.raises(AdvisoryDenied, match="INTEL-SA-00837") as info:
        p.check(verified(advisory_ids=("INTEL-SA-00289", "INTEL-SA-00837")), "k")
    assert info.value.code == "ADVISORY_DENIED"
    with pytest.raises(AdvisoryDenied):
        p.check(verified(advisory_ids=("intel-sa-00615",)), "k")


def test_debug_td() -> None:
    with pytest.raises(TdDebug) as info:
        Policy().check(verified(debug=True), "k")
    assert info.value.code == "TD_DEBUG"
    Policy(allow_debug_td=True).check(verified(debug=True), "k")


def test_order_of_checks() -> None:
    bad = verified(status="OutOfDate", advisory_ids=("INTEL-SA-1",), debug=True)
    p = Policy.from_mapping({"denied_advisory_ids": ["INTEL-SA-1"], "allowed_mrtd": ["00" * 48]})
    with pytest.raises(TcbStatusRejected):
        p.check(bad, "k")
    with pytest.raises(AdvisoryDenied):
        p.check(verified(advisory_ids=("INTEL-SA-1",), debug=True), "k")
    with pytest.raises(TdDebug):
        p.check(verified(debug=True), "k")
    with pytest.raises(PolicyDenied, match="MRTD"):
        p.check(verified(), "k")


@pytest.mark.parametrize("field", ALLOWLIST_FIELDS)
def test_measurement_allowlists(field: str) -> None:
    good, other = m(field), m("something else")
    p = Policy.from_mapping({f"allowed_{field}": [other.hex(), good.hex().upper()]})
    p.check(verified(), "k")
    with pytest.raises(PolicyDenied, match=field.upper()) as info:
        p.check(verified(**{field: m("intruder")}), "k")
    assert m("intruder").hex() in info.value.message
    assert info.value.code == "POLICY_DENIED"


def test_non_tdx_quote_refused() -> None:
    q = make_quote()
    sgx = Quote(
        header=q.header,
        body_type=BodyType.SGX,
        body=parse_enclave_report(bytes(384)),
        signature=q.signature,
        attestation_key=q.attestation_key,
        qe_report=q.qe_report,
        qe_report_signature=q.qe_report_signature,
        qe_auth_data=b"",
        pck_chain_pem=b"",
        signed_data=b"",
        size=0,
    )
    with pytest.raises(UnsupportedQuote):
        Policy().check(Verified(sgx), "k")


# --- key names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("app", "app", True),
        ("app", "app/db", False),
        ("app/*", "app/db", True),
        ("app/*", "app/db/wal", False),
        ("app/*", "app", False),
        ("app/**", "app", True),
        ("app/**", "app/db/wal", True),
        ("app/**", "application", False),
        ("**", "anything/at/all", True),
        ("**/wal", "app/db/wal", True),
        ("**/wal", "wal", True),
        ("**/wal", "app/wal2", False),
        ("a/**/z", "a/z", True),
        ("a/**/z", "a/b/c/z", True),
        ("db-?", "db-1", True),
        ("db-?", "db-10", False),
        ("db-*", "db-10", True),
        ("*", "x/y", False),
    ],
)
def test_key_name_matching(pattern: str, name: str, expected: bool) -> None:
    assert key_name_matches(validate_key_pattern(pattern), name) is expected


@pytest.mark.parametrize("pattern", ["", "a//b", "/a", "a/", "a/../b", "a/[ab]", "a/x**", "a b", "x" * 256])
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(ValueError):
        validate_key_pattern(pattern)
    with pytest.raises(ConfigError, match=re.escape("policy.key_names")):
        Policy.from_mapping({"key_names": {"*": [pattern]}})


def test_key_names_per_td() -> None:
    mine = m("mrtd").hex()
    p = Policy.from_mapping({"key_names": {mine.upper(): ["app/**"], "*": ["shared/*"]}})
    assert p.key_patterns_for(mine) == ("app/**", "shared/*")
    p.check(verified(), "app/db")
    p.check(verified(), "shared/x")
    with pytest.raises(PolicyDenied, match="key name 'other'") as info:
        p.check(verified(), "other")
    assert mine in info.value.message
    stranger = verified(mrtd=m("stranger"))
    p.check(stranger, "shared/x")
    with pytest.raises(PolicyDenied):
        p.check(stranger, "app/db")


def test_key_names_without_wildcard_entry_denies_unknown_tds() -> None:
    p = Policy.from_mapping({"key_names": {m("mrtd").hex(): ["**"]}})
    p.check(verified(), "x")
    with pytest.raises(PolicyDenied):
        p.check(verified(mrtd=m("stranger")), "x")


# --- configuration errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"alow_debug_td": True}, "policy.alow_debug_td"),
        ({"accepted_tcb_statuses": ["UpToDate", "Revoked"]}, "accepted_tcb_statuses"),
        ({"accepted_tcb_statuses": ["Fine"]}, "accepted_tcb_statuses"),
        ({"accepted_tcb_statuses": []}, "accepted_tcb_statuses"),
        ({"accepted_tcb_statuses": "UpToDate"}, "accepted_tcb_statuses"),
        ({"denied_advisory_ids": ["INTEL SA"]}, "denied_advisory_ids"),
        ({"denied_advisory_ids": [1]}, "denied_advisory_ids"),
        ({"allow_debug_td": 1}, "allow_debug_td"),
        ({"freshness_required": "yes"}, "freshness_required"),
        ({"freshness_window_seconds": 0}, "freshness_window_seconds"),
        ({"freshness_window_seconds": True}, "freshness_window_seconds"),
        ({"freshness_window_seconds": 1.5}, "freshness_window_seconds"),
        ({"allowed_mrtd": ["abcd"]}, "allowed_mrtd"),
        ({"allowed_rtmr0": ["zz" * 48]}, "allowed_rtmr0"),
        ({"allowed_mrownerconfig": []}, "allowed_mrownerconfig"),
        ({"key_names": ["app"]}, "key_names"),
        ({"key_names": {"abcd": ["app"]}}, "key_names.abcd"),
        ({"key_names": {"*": "app"}}, "key_names.*"),
        ({"key_names": {"AA" * 48: ["a"], "aa" * 48: ["b"]}}, "key_names"),
    ],
)
def test_config_errors_name_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)) as info:
        Policy.from_mapping(data)
    assert info.value.code == "CONFIG_INVALID"


def test_direct_construction_validated() -> None:
    with pytest.raises(ConfigError):
        Policy(accepted_tcb_statuses=frozenset({"Revoked"}))
    with pytest.raises(ConfigError):
        Policy(allowed_mrtd=frozenset({"AB" * 48}))
    with pytest.raises(ConfigError):
        Policy(key_names=(("*", ("a//b",)),))
    with pytest.raises(ConfigError):
        Policy(freshness_window_seconds=0)


def test_custom_prefix_in_messages() -> None:
    with pytest.raises(ConfigError, match=re.escape("tenants.a.allowed_mrtd")):
        Policy.from_mapping({"allowed_mrtd": ["x"]}, prefix="tenants.a")


# --- digest ---------------------------------------------------------------------------------------


def test_default_digest_frozen() -> None:
    """The default policy's digest is published by /v1/info; clients may pin it."""
    assert Policy().digest().hex() == "9522c9f06e20140373458fc00bb7256383e52dbc84c9421de3e9b490536e69e4"
    assert Policy().canonical() == (
        b"gramine-sealing-key-provider/policy-v1\n"
        b'{"accepted_tcb_statuses":["ConfigurationAndSWHardeningNeeded","ConfigurationNeeded",'
        b'"SWHardeningNeeded","UpToDate"],"allow_debug_td":false,"allowed_mrconfigid":[],'
        b'"allowed_mrowner":[],"allowed_mrtd":[],"allowed_rtmr0":[],"allowed_rtmr1":[],'
        b'"allowed_rtmr2":[],"allowed_rtmr3":[],"denied_advisory_ids":[],"freshness_required":false,'
        b'"freshness_window_seconds":300,"key_names":{}}'
    )


def test_digest_independent_of_order() -> None:
    a = Policy.from_mapping(
        {
            "accepted_tcb_statuses": ["UpToDate", "SWHardeningNeeded"],
            "denied_advisory_ids": ["INTEL-SA-1", "INTEL-SA-2"],
            "allowed_mrtd": [m("a").hex(), m("b").hex()],
            "key_names": {"*": ["x", "y/**"], m("a").hex(): ["z"]},
        }
    )
    b = Policy.from_mapping(
        {
            "key_names": {m("a").hex().upper(): ["z"], "*": ["y/**", "x", "x"]},
            "allowed_mrtd": [m("b").hex(), m("a").hex().upper()],
            "denied_advisory_ids": ["intel-sa-2", "INTEL-SA-1"],
            "accepted_tcb_statuses": ["SWHardeningNeeded", "UpToDate"],
        }
    )
    assert a == b
    assert a.digest() == b.digest()
    assert a.digest() != Policy().digest()


@pytest.mark.parametrize(
    "change",
    [
        {"accepted_tcb_statuses": ["UpToDate"]},
        {"denied_advisory_ids": ["INTEL-SA-00837"]},
        {"allow_debug_td": True},
        {"allowed_rtmr3": ["00" * 48]},
        {"key_names": {"*": ["**"]}},
        {"freshness_required": True},
        {"freshness_window_seconds": 60},
    ],
)
def test_every_setting_changes_the_digest(change: dict[str, object]) -> None:
    assert Policy.from_mapping(change).digest() != Policy().digest()


def test_roundtrip() -> None:
    p = Policy.from_mapping(
        {
            "accepted_tcb_statuses": ["UpToDate"],
            "denied_advisory_ids": ["INTEL-SA-1"],
            "allowed_mrowner": [m("o").hex()],
            "key_names": {"*": ["a/**"]},
            "freshness_required": True,
            "freshness_window_seconds": 30,
        }
    )
    assert Policy.from_mapping(p.to_mapping()) == p


@given(
    st.sets(st.sampled_from(sorted(DEFAULT_ACCEPTED_TCB_STATUSES | {"OutOfDate"})), min_size=1),
    st.sets(st.from_regex(r"INTEL-SA-[0-9]{5}", fullmatch=True), max_size=4),
    st.booleans(),
)
def test_digest_deterministic_and_roundtrips(statuses: set[str], advisories: set[str], debug: bool) -> None:
    data = {
        "accepted_tcb_statuses": list(statuses),
        "denied_advisory_ids": list(advisories),
        "allow_debug_td": debug,
    }
    p = Policy.from_mapping(data)
    q = Policy.from_mapping({**data, "accepted_tcb_statuses": list(reversed(list(statuses)))})
    assert p.digest() == q.digest() == Policy.from_mapping(p.to_mapping()).digest()


# --- properties of key-name matching ------------------------------------------------------------

_SEG = st.text(alphabet="ab.-_09", min_size=1, max_size=4).filter(lambda s: s not in (".", ".."))
_NAME = st.lists(_SEG, min_size=1, max_size=5).map("/".join)


@given(_NAME)
def test_name_matches_itself_and_globstar(name: str) -> None:
    assert key_name_matches(name, name)
    assert key_name_matches("**", name)
    assert key_name_matches("/".join("*" for _ in name.split("/")), name)


@given(_NAME, _NAME)
def test_prefix_globstar(prefix: str, rest: str) -> None:
    assert key_name_matches(prefix + "/**", prefix + "/" + rest)
    assert key_name_matches(prefix + "/**", prefix)
    assert not key_name_matches(prefix + "/*", prefix)
    assert not key_name_matches(prefix, prefix + "/" + rest)


# --- with the real verifier on the simulated platform --------------------------------------------

SIM_NOW = 1_780_000_000


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("policy-sim"))


def sim_verified(sim: SimPlatform, scenario: Scenario = Scenario.UP_TO_DATE, **kw: object) -> VerifiedQuote:
    quote = sim.tdx_quote(report_data=bytes(64), mrtd=m("sim mrtd"), **kw)  # type: ignore[arg-type]
    collateral = sim.collateral("tdx", now=SIM_NOW, scenario=scenario)
    return Verifier(trust_anchor=sim.root_certificate).verify(quote, collateral, SIM_NOW)


def test_real_verifier_results(sim: SimPlatform) -> None:
    Policy().check(sim_verified(sim), "app")
    with pytest.raises(TcbStatusRejected, match="'OutOfDate'"):
        Policy().check(sim_verified(sim, Scenario.OUT_OF_DATE), "app")
    with pytest.raises(TdDebug):
        Policy().check(sim_verified(sim, debug=True), "app")
    Policy(allow_debug_td=True).check(sim_verified(sim, debug=True), "app")
    pinned = Policy.from_mapping({"allowed_mrtd": [m("sim mrtd").hex()], "key_names": {"*": ["app/**"]}})
    pinned.check(sim_verified(sim), "app/x")
    with pytest.raises(PolicyDenied):
        pinned.check(sim_verified(sim), "other")


def test_real_verifier_advisories(sim: SimPlatform) -> None:
    result = sim_verified(sim, Scenario.SW_HARDENING_NEEDED)
    assert result.advisory_ids
    Policy().check(result, "k")
    deny = Policy.from_mapping({"denied_advisory_ids": [result.advisory_ids[0]]})
    with pytest.raises(AdvisoryDenied, match=result.advisory_ids[0]):
        deny.check(result, "k")


def test_key_name_matching_is_not_exponential() -> None:
    """Many ``**`` against a long name must stay fast: the key name is chosen by the client."""
    import time

    name = "/".join(["a"] * 127)
    started = time.perf_counter()
    assert not key_name_matches("**/**/**/**/**/**/x", name)
    assert key_name_matches("**/**/**/**/**/**/a", name)
    assert time.perf_counter() - started < 0.5


def test_min_tcb_evaluation_data_number() -> None:
    """Refuses TCB info from before a chosen TCB recovery; absent from the digest while unset."""
    p = Policy.from_mapping({"min_tcb_evaluation_data_number": 17})
    p.check_collateral(17)
    with pytest.raises(ProviderError) as err:
        p.check_collateral(16)
    assert err.value.code == "COLLATERAL_OUTDATED"
    Policy().check_collateral(0)
    assert Policy.from_mapping(p.to_mapping()) == p
    assert "min_tcb_evaluation_data_number" not in Policy().to_mapping()
    for bad in (True, -1, 2**32, "17", 1.5):
        with pytest.raises(ConfigError):
            Policy.from_mapping({"min_tcb_evaluation_data_number": bad})
