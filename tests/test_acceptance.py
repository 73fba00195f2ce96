"""One acceptance rule: the provider's policy (about a TD's platform) and the client's trust (about the
provider's platform) judge TCB statuses, advisory IDs and debug mode with the same check, so they
agree on every input, including the spelling of advisory IDs."""

from __future__ import annotations

import pytest

from sealing_key_provider.acceptance import (
    DEFAULT_ACCEPTED_TCB_STATUSES,
    KNOWN_TCB_STATUSES,
    accepted_tcb_statuses,
    check_acceptable,
    denied_advisory_ids,
)
from sealing_key_provider.client.trust import ProviderTrust
from sealing_key_provider.client.verify import verify_provider_quote
from sealing_key_provider.collateral.source import for_quote
from sealing_key_provider.dcap import TcbStatus, Verifier, parse_quote
from sealing_key_provider.errors import ConfigError, ProviderError, TdDebug
from sealing_key_provider.policy import Policy
from sealing_key_provider.sim import Scenario, SimPlatform, SimSgxPlatform

from .client_helpers import SimSource, SimTd

NOW = 1_780_000_000


def _check(status: str, advisories: tuple[str, ...] = (), debug: bool = False, **kw: object) -> None:
    args: dict[str, object] = {
        "accepted": DEFAULT_ACCEPTED_TCB_STATUSES,
        "denied": frozenset(),
        "allow_debug": False,
        "subject": "platform",
        "debug_refused": lambda: TdDebug("debug"),
    }
    args.update(kw)
    check_acceptable(status=status, advisory_ids=advisories, debug=debug, **args)  # type: ignore[arg-type]


def test_statuses_are_one_enum_with_intels_wire_strings() -> None:
    assert {str(s) for s in KNOWN_TCB_STATUSES} == {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    }
    assert accepted_tcb_statuses(["UpToDate", "OutOfDate"]) == {TcbStatus.UP_TO_DATE, TcbStatus.OUT_OF_DATE}
    assert all(type(s) is TcbStatus for s in accepted_tcb_statuses(["UpToDate"]))
    assert TcbStatus.REVOKED not in DEFAULT_ACCEPTED_TCB_STATUSES


@pytest.mark.parametrize(
    ("values", "message"),
    [([], "at least one"), (["Revoked"], "Revoked"), (["uptodate"], "unknown TCB status 'uptodate'")],
)
def test_status_lists_are_refused_alike_by_policy_and_trust(values: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        accepted_tcb_statuses(values)
    with pytest.raises(ConfigError, match=message):
        Policy.from_mapping({"accepted_tcb_statuses": values})
    with pytest.raises(ValueError, match=message):
        ProviderTrust.from_hex(mrenclave="00" * 32, accepted_tcb_statuses=values)


@pytest.mark.parametrize("bad", ["INTEL SA", "", "x" * 65, "INTEL_SA_1"])
def test_advisory_lists_are_refused_alike_by_policy_and_trust(bad: str) -> None:
    with pytest.raises(ValueError, match="not an advisory ID"):
        denied_advisory_ids([bad])
    with pytest.raises(ConfigError, match="not an advisory ID"):
        Policy.from_mapping({"denied_advisory_ids": [bad]})
    with pytest.raises(ValueError, match="not an advisory ID"):
        ProviderTrust.from_hex(mrenclave="00" * 32, denied_advisory_ids=[bad])
    with pytest.raises(ConfigError):
        Policy(denied_advisory_ids=frozenset({bad}))


def test_a_single_string_is_not_a_list() -> None:
    with pytest.raises(ValueError, match="list"):
        accepted_tcb_statuses("UpToDate")
    with pytest.raises(ValueError, match="list"):
        denied_advisory_ids("INTEL-SA-00615")
    with pytest.raises(ValueError, match="list"):
        ProviderTrust.from_hex(mrenclave="00" * 32, denied_advisory_ids="INTEL-SA-00615")


def test_advisory_ids_match_case_insensitively() -> None:
    denied = denied_advisory_ids(["intel-sa-00615", "INTEL-SA-00289"])
    assert denied == {"INTEL-SA-00615", "INTEL-SA-00289"}
    for reported in ("INTEL-SA-00615", "intel-sa-00615", "Intel-Sa-00615"):
        with pytest.raises(ProviderError) as e:
            _check("UpToDate", ("INTEL-SA-00001", reported), denied=denied)
        assert e.value.code == "ADVISORY_DENIED"
        assert "INTEL-SA-00615" in e.value.message
    _check("UpToDate", ("INTEL-SA-00616", "INTEL-SA-0061"), denied=denied)


def test_check_order_and_codes() -> None:
    with pytest.raises(ProviderError) as e:  # status before advisories before debug
        _check("OutOfDate", ("INTEL-SA-1",), True, denied=frozenset({"INTEL-SA-1"}))
    assert e.value.code == "TCB_STATUS_REJECTED" and "'OutOfDate'" in e.value.message
    with pytest.raises(ProviderError) as e:
        _check("UpToDate", ("INTEL-SA-1",), True, denied=frozenset({"INTEL-SA-1"}))
    assert e.value.code == "ADVISORY_DENIED"
    with pytest.raises(TdDebug):
        _check("UpToDate", ("INTEL-SA-1",), True)
    _check("UpToDate", ("INTEL-SA-1",), True, allow_debug=True)
    _check(TcbStatus.SW_HARDENING_NEEDED)


# --- both sides, on real verified quotes -----------------------------------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("acceptance"))


def _policy_code(sim: SimPlatform, policy: Policy, scenario: Scenario) -> str | None:
    """What the provider's policy says of a TD on ``sim`` whose platform is in ``scenario``."""
    verifier = Verifier(trust_anchor=sim.root_certificate)
    quote = parse_quote(SimTd(sim).quote(bytes(64)))
    verified = verifier.verify(quote, SimSource(sim, NOW, scenario).get(*for_quote(quote)), NOW)
    try:
        policy.check(verified, "k")
    except ProviderError as e:
        return e.code
    return None


def _trust_code(sim: SimPlatform, trust: ProviderTrust, scenario: Scenario) -> str | None:
    """What the client's trust says of a provider on ``sim`` whose platform is in ``scenario``."""
    provider_quote = SimSgxPlatform.load(sim.state_dir).quote(bytes(64))
    try:
        verify_provider_quote(
            provider_quote,
            trust=trust,
            verifier=Verifier(trust_anchor=sim.root_certificate),
            collateral=SimSource(sim, NOW, scenario),
            now=NOW,
        )
    except ProviderError as e:
        return e.code
    return None


@pytest.mark.parametrize("spelling", ["INTEL-SA-00615", "intel-sa-00615", "Intel-SA-00615"])
@pytest.mark.parametrize(
    ("scenario", "statuses", "expected"),
    [
        (Scenario.SW_HARDENING_NEEDED, None, "ADVISORY_DENIED"),  # carries INTEL-SA-00615
        (Scenario.UP_TO_DATE, None, None),  # no advisories
        (Scenario.OUT_OF_DATE, None, "TCB_STATUS_REJECTED"),  # status refused first
        (Scenario.OUT_OF_DATE, ["OutOfDate"], "ADVISORY_DENIED"),  # also carries INTEL-SA-00615
        (Scenario.SW_HARDENING_NEEDED, ["UpToDate"], "TCB_STATUS_REJECTED"),
    ],
)
def test_policy_and_trust_judge_alike(
    sim: SimPlatform, spelling: str, scenario: Scenario, statuses: list[str] | None, expected: str | None
) -> None:
    provider_quote = SimSgxPlatform.load(sim.state_dir).quote(bytes(64))
    mrenclave = parse_quote(provider_quote).enclave_report.mrenclave
    accepted = accepted_tcb_statuses(statuses) if statuses else DEFAULT_ACCEPTED_TCB_STATUSES
    policy = Policy(accepted_tcb_statuses=accepted, denied_advisory_ids=frozenset({spelling}))
    trust = ProviderTrust(
        mrenclave=mrenclave, accepted_tcb_statuses=accepted, denied_advisory_ids=frozenset({spelling})
    )
    assert _policy_code(sim, policy, scenario) == expected
    assert _trust_code(sim, trust, scenario) == expected
