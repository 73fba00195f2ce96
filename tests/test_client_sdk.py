"""The TD-side SDK in-process against the real provider flow on the simulated platform: every check
of the client is made to fail on its own, and only a fully checked answer yields a key."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace

import nacl.public
import pytest

from sealing_key_provider.binding import RequestContext, report_data_v1
from sealing_key_provider.client.errors import ProviderRefused, TdQuoteInvalid
from sealing_key_provider.client.quote_source import QuoteSource
from sealing_key_provider.client.sdk import KeyClient
from sealing_key_provider.client.transport import ProviderAnswer
from sealing_key_provider.client.trust import ProviderTrust
from sealing_key_provider.dcap import Verifier, parse_quote
from sealing_key_provider.errors import ProviderError
from sealing_key_provider.keys import build_registry, seal
from sealing_key_provider.policy import Policy
from sealing_key_provider.provider import Provider
from sealing_key_provider.sim import (
    DEBUG_SGX_ATTRIBUTES,
    DEFAULT_SIM_DEV_MRENCLAVE,
    Scenario,
    SgxEnclaveIdentity,
    SimPlatform,
    SimSgxPlatform,
)
from sealing_key_provider.wire import KeyResponseV1

from .client_helpers import (
    InProcessTransport,
    SimSource,
    SimTd,
    Tamper,
    flip_signature_byte,
    with_encrypted_key,
    with_quote,
)

NOW = 1_780_000_000


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("client-a"))


@pytest.fixture(scope="module")
def other_sim(sim: SimPlatform, tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("client-b"), share_ca_with=sim)


def make_provider(sim: SimPlatform, *, dev_mode: bool = False) -> Provider:
    return Provider(
        SimSgxPlatform.load(sim.state_dir, dev_mode=dev_mode),
        SimSource(sim, NOW),
        Verifier(trust_anchor=sim.root_certificate),
        Policy(),
        build_registry(),
        clock=lambda: float(NOW),
        dev_mode=dev_mode,
    )


@pytest.fixture(scope="module")
def provider(sim: SimPlatform) -> Provider:
    return make_provider(sim)


@pytest.fixture(scope="module")
def trust(provider: Provider) -> ProviderTrust:
    return ProviderTrust(mrenclave=provider.identity.mrenclave, mrsigner=provider.identity.mrsigner)


def client(
    provider: Provider,
    sim: SimPlatform,
    trust: ProviderTrust,
    *,
    legacy: bool = False,
    tamper: Tamper | None = None,
    td: QuoteSource | None = None,
    scenario: Scenario = Scenario.UP_TO_DATE,
    now: int = NOW,
) -> KeyClient:
    return KeyClient(
        InProcessTransport(provider, legacy=legacy, tamper=tamper),
        trust,
        Verifier(trust_anchor=sim.root_certificate),
        SimSource(sim, now, scenario),
        td or SimTd(sim),
        clock=lambda: float(now),
        allow_unbound_legacy=legacy,
    )


def code_of(excinfo: pytest.ExceptionInfo[ProviderError]) -> str:
    return excinfo.value.code


# --- success ------------------------------------------------------------------------------------------


def test_v1_key_is_stable_and_matches_what_the_provider_sealed(
    provider: Provider, sim: SimPlatform, trust: ProviderTrust
) -> None:
    c = client(provider, sim, trust)
    result = c.fetch()
    assert len(result.key) == 32
    assert c.get_key() == result.key  # new key pair, new quote, same key
    assert result.scheme == "hkdf-sha256-v1" and result.key_name == "default" and result.key_version == 1
    assert result.provider_mrenclave == provider.identity.mrenclave
    assert result.provider_ppid == sim.ppid
    assert result.provider_tcb_status == "UpToDate" and result.td_tcb_status == "UpToDate"
    assert result.policy_digest == provider.policy_digest
    assert "key" not in repr(result).replace("key_name", "").replace("key_version", "")


def test_every_request_uses_a_fresh_key_pair(
    provider: Provider, sim: SimPlatform, trust: ProviderTrust
) -> None:
    seen: list[bytes] = []

    def record(td_quote: bytes, answer: ProviderAnswer) -> ProviderAnswer:
        seen.append(parse_quote(td_quote).td_report.report_data)
        return answer

    c = client(provider, sim, trust, tamper=record)
    c.get_key()
    c.get_key()
    c.get_key(freshness=True)
    assert len({rd[:32] for rd in seen}) == 3
    assert seen[0][32:] == seen[1][32:] == bytes(32) and seen[2][32:] != bytes(32)


def test_legacy_key_is_stable_and_differs_from_v1(
    provider: Provider, sim: SimPlatform, trust: ProviderTrust
) -> None:
    legacy = client(provider, sim, trust, legacy=True)
    k1 = legacy.fetch()
    assert k1.scheme == "legacy-sha256" and k1.td_tcb_status is None and k1.policy_digest is None
    assert legacy.get_key() == k1.key
    assert k1.key != client(provider, sim, trust).get_key()


def test_names_versions_schemes_and_freshness(
    provider: Provider, sim: SimPlatform, trust: ProviderTrust
) -> None:
    c = client(provider, sim, trust)
    base = c.get_key()
    assert c.get_key(freshness=True) == base
    assert c.get_key("app/db") != base
    assert c.get_key(key_version=2) != base
    legacy_via_v1 = c.fetch(scheme="legacy-sha256")
    assert legacy_via_v1.scheme == "legacy-sha256"
    assert legacy_via_v1.key == client(provider, sim, trust, legacy=True).get_key()


def test_mrsigner_alone_is_enough(provider: Provider, sim: SimPlatform) -> None:
    trust = ProviderTrust(mrsigner=provider.identity.mrsigner, isvprodid=0, min_isvsvn=0)
    assert len(client(provider, sim, trust).get_key()) == 32


# --- the provider's identity ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"mrenclave": b"\x01" * 32},
        {"mrsigner": b"\x02" * 32},
        {"isvprodid": 7},
        {"min_isvsvn": 1},
    ],
)
def test_wrong_provider_identity_is_refused(
    provider: Provider, sim: SimPlatform, trust: ProviderTrust, change: dict[str, object]
) -> None:
    wrong = replace(trust, **change)  # type: ignore[arg-type]
    for legacy in (False, True):
        with pytest.raises(ProviderError) as e:
            client(provider, sim, wrong, legacy=legacy).get_key()
        assert code_of(e) == "PROVIDER_IDENTITY_MISMATCH"
    if "mrenclave" in change:
        assert (
            f"provider MRENCLAVE {provider.identity.mrenclave.hex()} is not the expected {'01' * 32}"
            in str(e.value)
        )


def test_debug_provider_enclave_is_refused_unless_allowed(
    provider: Provider, sim: SimPlatform, trust: ProviderTrust
) -> None:
    debug_enclave = SgxEnclaveIdentity(
        mrenclave=provider.identity.mrenclave,
        mrsigner=provider.identity.mrsigner,
        attributes=DEBUG_SGX_ATTRIBUTES,
    )

    def as_debug(td_quote: bytes, answer: ProviderAnswer) -> ProviderAnswer:
        rd = parse_quote(answer.provider_quote).report_data
        return with_quote(answer, sim.sgx_quote(rd, enclave=debug_enclave))

    with pytest.raises(ProviderError) as e:
        client(provider, sim, trust, tamper=as_debug).get_key()
    assert code_of(e) == "PROVIDER_IDENTITY_MISMATCH" and "DEBUG" in e.value.message
    allowed = replace(trust, allow_debug_provider=True)
    assert len(client(provider, sim, allowed, tamper=as_debug).get_key()) == 32


def test_dev_mode_provider_is_refused_unless_allowed(sim: SimPlatform) -> None:
    dev = make_provider(sim, dev_mode=True)
    trust = ProviderTrust(mrenclave=DEFAULT_SIM_DEV_MRENCLAVE)
    with pytest.raises(ProviderError) as e:
        client(dev, sim, trust).get_key()
    assert code_of(e) == "PROVIDER_IDENTITY_MISMATCH" and "development mode" in e.value.message
    assert len(client(dev, sim, replace(trust, allow_dev_mode_provider=True)).get_key()) == 32


def test_expected_policy_digest(provider: Provider, sim: SimPlatform, trust: ProviderTrust) -> None:
    pinned = replace(trust, expected_policy_digest=provider.policy_digest)
    assert len(client(provider, sim, pinned).get_key()) == 32
    with pytest.raises(ProviderError) as e:
        client(provider, sim, replace(trust, expected_policy_digest=b"\x00" * 32)).get_key()
    assert code_of(e) == "PROVIDER_IDENTITY_MISMATCH" and "policy digest" in e.value.message


# --- DCAP on the provider quote ---------------------------------------------------------------------


def test_provider_quote_with_bad_signature(
    provider: Provider, sim: SimPlatform, trust: ProviderTrust
) -> None:
    def flip(td_quote: bytes, answer: ProviderAnswer) -> ProviderAnswer:
        return with_quote(answer, flip_signature_byte(answer.provider_quote))

    for legacy in (False, True):
        with pytest.raises(ProviderError) as e:
            client(provider, sim, trust, legacy=legacy, tamper=flip).get_key()
        assert code_of(e) == "QUOTE_SIGNATURE_INVALID" and e.value.message.startswith("provider quote: ")


def test_provider_answering_with_a_tdx_quote(
    provider: Provider, sim: SimPlatform, trust: ProviderTrust
) -> None:
    def tdx(td_quote: bytes, answer: ProviderAnswer) -> ProviderAnswer:
        return with_quote(answer, td_quote)

    with pytest.raises(ProviderError) as e:
        client(provider, sim, trust, tamper=tdx).get_key()
    assert code_of(e) == "UNSUPPORTED_QUOTE"


def test_provider_quote_from_an_untrusted_root(
    provider: Provider, sim: SimPlatform, trust: ProviderTrust, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A provider quote made under another root (same MRENCLAVE, its own PKI) is refused."""
    foreign = SimSgxPlatform.load(SimPlatform.init(tmp_path_factory.mktemp("other-root")).state_dir)

    def other_root(td_quote: bytes, answer: ProviderAnswer) -> ProviderAnswer:
        return with_quote(answer, foreign.quote(parse_quote(answer.provider_quote).report_data))

    with pytest.raises(ProviderError) as e:
        client(provider, sim, trust, tamper=other_root).get_key()
    assert code_of(e) == "PCK_CHAIN_INVALID"


class SwappedChainTd:
    """A TD whose host replaced the PCK chain in its quote with another machine's genuine chain."""

    def __init__(self, sim: SimPlatform, other: SimPlatform) -> None:
        self.td, self.chain = SimTd(sim), other.pck_chain_pem

    def quote(self, report_data: bytes) -> bytes:
        q = self.td.quote(report_data)
        parsed = parse_quote(q)
        start = q.index(parsed.pck_chain_pem)
        delta = len(self.chain) - int.from_bytes(q[start - 4 : start], "little")
        out = bytearray(q[:start] + self.chain)
        # Fix the three enclosing lengths of a v4 quote: signature data, type-6 data, type-5 data.
        for offset, size in ((632, 4), (766, 4), (start - 4, 4)):
            value = int.from_bytes(out[offset : offset + size], "little") + delta
            out[offset : offset + size] = value.to_bytes(size, "little")
        out[start - 4 : start] = len(self.chain).to_bytes(4, "little")
        return bytes(out)


def test_td_quote_with_a_swapped_pck_chain_is_refused_before_sending(
    provider: Provider, sim: SimPlatform, other_sim: SimPlatform, trust: ProviderTrust
) -> None:
    """The TD's own platform comes from its quote's proven signature chain, not the attached certificate."""
    td = SwappedChainTd(sim, other_sim)
    assert parse_quote(td.quote(bytes(64))).pck_chain_pem == other_sim.pck_chain_pem.rstrip(b"\x00")
    with pytest.raises(TdQuoteInvalid) as e:
        client(provider, sim, trust, td=td).get_key()
    assert "QE_REPORT_SIGNATURE_INVALID" in e.value.message


@pytest.mark.parametrize(
    ("scenario", "accepted", "code"),
    [
        (Scenario.OUT_OF_DATE, None, "TCB_STATUS_REJECTED"),
        (Scenario.SW_HARDENING_NEEDED, frozenset({"UpToDate"}), "TCB_STATUS_REJECTED"),
        (Scenario.EXPIRED, None, "COLLATERAL_EXPIRED"),
        (Scenario.REVOKED_PCK, None, "PCK_REVOKED"),
    ],
)
def test_provider_platform_status(
    provider: Provider,
    sim: SimPlatform,
    trust: ProviderTrust,
    scenario: Scenario,
    accepted: frozenset[str] | None,
    code: str,
) -> None:
    t = trust if accepted is None else replace(trust, accepted_tcb_statuses=accepted)
    with pytest.raises(ProviderError) as e:
        client(provider, sim, t, scenario=scenario).get_key()
    assert code_of(e) == code


def test_denied_advisory(provider: Provider, sim: SimPlatform, trust: ProviderTrust) -> None:
    t = replace(trust, denied_advisory_ids=frozenset({"INTEL-SA-00615"}))
    with pytest.raises(ProviderError) as e:
        client(provider, sim, t, scenario=Scenario.SW_HARDENING_NEEDED).get_key()
    assert code_of(e) == "ADVISORY_DENIED"
    assert len(client(provider, sim, t).get_key()) == 32  # UpToDate has no advisories


# --- binding --------------------------------------------------------------------------------------------


def _attacker_box(td_quote: bytes) -> bytes:
    """What a man in the middle can do: seal a key of its choice to the TD's public key."""
    pk = parse_quote(td_quote).td_report.report_data[:32]
    return nacl.public.SealedBox(nacl.public.PublicKey(pk)).encrypt(b"\x42" * 32)


def test_swapped_encrypted_key_is_refused(provider: Provider, sim: SimPlatform, trust: ProviderTrust) -> None:
    def swap(td_quote: bytes, answer: ProviderAnswer) -> ProviderAnswer:
        return with_encrypted_key(answer, _attacker_box(td_quote))

    for legacy in (False, True):
        with pytest.raises(ProviderError) as e:
            client(provider, sim, trust, legacy=legacy, tamper=swap).get_key()
        assert code_of(e) == "RESPONSE_BINDING_INVALID"


def test_replayed_v1_response_is_refused(provider: Provider, sim: SimPlatform, trust: ProviderTrust) -> None:
    old: list[ProviderAnswer] = []

    def replay(td_quote: bytes, answer: ProviderAnswer) -> ProviderAnswer:
        if not old:
            old.append(answer)
            return answer
        return old[0]

    c = client(provider, sim, trust, tamper=replay)
    c.get_key()
    with pytest.raises(ProviderError) as e:
        c.get_key()
    assert code_of(e) == "RESPONSE_BINDING_INVALID" and "does not bind this request" in e.value.message


def test_replayed_legacy_response_cannot_be_opened(
    provider: Provider, sim: SimPlatform, trust: ProviderTrust
) -> None:
    """The legacy binding covers only the ciphertext, so a replay passes it; the new key pair cannot
    open the old box."""
    old: list[ProviderAnswer] = []

    def replay(td_quote: bytes, answer: ProviderAnswer) -> ProviderAnswer:
        if not old:
            old.append(answer)
        return old[0]

    c = client(provider, sim, trust, legacy=True, tamper=replay)
    c.get_key()
    with pytest.raises(ProviderError) as e:
        c.get_key()
    assert code_of(e) == "DECRYPTION_FAILED"


@pytest.mark.parametrize(
    "field_change",
    [
        {"key_name": "other"},
        {"key_version": 9},
        {"scheme": "legacy-sha256"},
        {"policy_digest": b"\x07" * 32},
        {"measurements": ("mrtd",)},
        {"tcb_status": "SWHardeningNeeded"},
        {"advisory_ids": ("INTEL-SA-00615",)},
    ],
)
def test_v1_response_fields_are_bound(
    provider: Provider, sim: SimPlatform, trust: ProviderTrust, field_change: dict[str, object]
) -> None:
    def change(td_quote: bytes, answer: ProviderAnswer) -> ProviderAnswer:
        assert answer.v1 is not None
        return ProviderAnswer(answer.encrypted_key, answer.provider_quote, replace(answer.v1, **field_change))  # type: ignore[arg-type]

    with pytest.raises(ProviderError) as e:
        client(provider, sim, trust, tamper=change).get_key()
    assert code_of(e) == "RESPONSE_BINDING_INVALID"


def test_requested_scheme_must_be_the_one_answered(
    provider: Provider, sim: SimPlatform, trust: ProviderTrust
) -> None:
    """A provider quote that honestly binds another scheme than the one asked for is still refused."""
    platform = SimSgxPlatform.load(sim.state_dir)

    def other_scheme(td_quote: bytes, answer: ProviderAnswer) -> ProviderAnswer:
        assert answer.v1 is not None
        ctx = RequestContext.for_quote(
            td_quote,
            scheme="legacy-sha256",
            key_name="default",
            key_version=1,
            policy_digest=provider.policy_digest,
            measurements=answer.v1.measurements,
            tcb_status=answer.v1.tcb_status,
            advisory_ids=answer.v1.advisory_ids,
            dev_mode=answer.v1.dev_mode,
        )
        q = platform.quote(report_data_v1(answer.encrypted_key, ctx))
        return ProviderAnswer(
            answer.encrypted_key, q, replace(answer.v1, scheme="legacy-sha256", provider_quote=q)
        )

    with pytest.raises(ProviderError) as e:
        client(provider, sim, trust, tamper=other_scheme).get_key(scheme="hkdf-sha256-v1")
    assert code_of(e) == "RESPONSE_BINDING_INVALID" and "scheme" in e.value.message


# --- same platform ---------------------------------------------------------------------------------------


def test_provider_on_another_platform_is_refused(
    sim: SimPlatform, other_sim: SimPlatform, provider: Provider
) -> None:
    """The TD runs on platform B. A genuine provider enclave (pinned identity) on platform A answers
    with a correctly bound response, as a provider that skipped its own same-platform check would:
    only the client's PPID comparison stands in the way."""
    platform_a = SimSgxPlatform.load(sim.state_dir)
    td_b = SimTd(other_sim)
    trust = ProviderTrust(mrenclave=provider.identity.mrenclave)

    class ForeignProvider(InProcessTransport):
        def request(
            self, td_quote: bytes, *, key_name: str, key_version: int, scheme: str | None, nonce: bytes | None
        ) -> ProviderAnswer:
            ek = seal(b"\x33" * 32, parse_quote(td_quote).td_report.report_data[:32])
            ctx = RequestContext.for_quote(
                td_quote,
                scheme="hkdf-sha256-v1",
                key_name=key_name,
                key_version=key_version,
                policy_digest=provider.policy_digest,
                measurements=("mrtd",),
                tcb_status="UpToDate",
                advisory_ids=(),
                dev_mode=False,
            )
            q = platform_a.quote(report_data_v1(ek, ctx))
            v1 = KeyResponseV1(
                encrypted_key=ek,
                provider_quote=q,
                scheme="hkdf-sha256-v1",
                measurements=("mrtd",),
                key_name=key_name,
                key_version=key_version,
                tcb_status="UpToDate",
                advisory_ids=(),
                policy_digest=provider.policy_digest,
                dev_mode=False,
            )
            return ProviderAnswer(ek, q, v1)

    c = KeyClient(
        ForeignProvider(provider),
        trust,
        Verifier(trust_anchor=sim.root_certificate),
        SimSource(sim, NOW),
        td_b,
        clock=lambda: float(NOW),
    )
    with pytest.raises(ProviderError) as e:
        c.get_key()
    assert code_of(e) == "PLATFORM_MISMATCH"
    assert sim.ppid.hex() in e.value.message and other_sim.ppid.hex() in e.value.message


def test_provider_refuses_a_td_from_another_platform(
    provider: Provider, sim: SimPlatform, other_sim: SimPlatform, trust: ProviderTrust
) -> None:
    with pytest.raises(ProviderRefused) as e:
        client(provider, sim, trust, td=SimTd(other_sim)).get_key()
    assert e.value.code == "PLATFORM_MISMATCH" and e.value.message.startswith("provider refused: ")


# --- refusals, quote source, arguments -----------------------------------------------------------------------


def test_provider_refusal_keeps_the_provider_code(
    provider: Provider, sim: SimPlatform, trust: ProviderTrust
) -> None:
    with pytest.raises(ProviderRefused) as e:
        client(provider, sim, trust, td=SimTd(sim, debug=True)).get_key()
    assert e.value.code == "TD_DEBUG" and str(e.value).startswith("TD_DEBUG: provider refused: ")


def test_quote_source_with_other_report_data_is_caught_before_sending(
    provider: Provider, sim: SimPlatform, trust: ProviderTrust
) -> None:
    class Liar:
        def quote(self, report_data: bytes) -> bytes:
            return sim.tdx_quote(report_data=hashlib.sha512(report_data).digest())

    transport = InProcessTransport(provider)
    c = KeyClient(transport, trust, Verifier(trust_anchor=sim.root_certificate), SimSource(sim, NOW), Liar())
    with pytest.raises(TdQuoteInvalid) as e:
        c.get_key()
    assert e.value.code == "TD_QUOTE_INVALID" and transport.answers == []

    class Sgx:
        def quote(self, report_data: bytes) -> bytes:
            return SimSgxPlatform.load(sim.state_dir).quote(report_data)

    with pytest.raises(TdQuoteInvalid):
        KeyClient(
            transport, trust, Verifier(trust_anchor=sim.root_certificate), SimSource(sim, NOW), Sgx()
        ).get_key()


def test_legacy_protocol_limits(provider: Provider, sim: SimPlatform, trust: ProviderTrust) -> None:
    c = client(provider, sim, trust, legacy=True)
    for kwargs in (
        {"key_name": "app"},
        {"key_version": 2},
        {"scheme": "hkdf-sha256-v1"},
        {"freshness": True},
    ):
        with pytest.raises(ValueError, match="legacy"):
            c.get_key(**kwargs)
    assert len(c.get_key(scheme="legacy-sha256")) == 32


def test_bad_key_names_are_refused_locally(
    provider: Provider, sim: SimPlatform, trust: ProviderTrust
) -> None:
    with pytest.raises(ProviderError):
        client(provider, sim, trust).get_key("../etc")


# --- ProviderTrust ----------------------------------------------------------------------------------------


def test_trust_requires_a_pinned_identity() -> None:
    with pytest.raises(ValueError, match="no trust on first use"):
        ProviderTrust()
    with pytest.raises(ValueError, match="no trust on first use"):
        ProviderTrust.from_hex()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mrenclave": b"\x01" * 31},
        {"mrenclave": b"\x01" * 32, "accepted_tcb_statuses": frozenset({"Revoked"})},
        {"mrenclave": b"\x01" * 32, "accepted_tcb_statuses": frozenset({"Fine"})},
        {"mrenclave": b"\x01" * 32, "accepted_tcb_statuses": frozenset()},
        {"mrenclave": b"\x01" * 32, "isvprodid": 70000},
        {"mrenclave": b"\x01" * 32, "min_isvsvn": -1},
        {"mrenclave": b"\x01" * 32, "expected_policy_digest": b"\x00"},
    ],
)
def test_trust_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ProviderTrust(**kwargs)  # type: ignore[arg-type]


def test_trust_from_hex() -> None:
    t = ProviderTrust.from_hex(mrenclave="ab" * 32, accepted_tcb_statuses=["UpToDate"])
    assert t.mrenclave == b"\xab" * 32 and t.accepted_tcb_statuses == frozenset({"UpToDate"})
    with pytest.raises(ValueError, match="hex"):
        ProviderTrust.from_hex(mrenclave="zz" * 32)
    with pytest.raises(ValueError, match="32 bytes"):
        ProviderTrust.from_hex(mrsigner="ab" * 16)


def test_no_key_material_in_logs(
    provider: Provider, sim: SimPlatform, trust: ProviderTrust, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    result = client(provider, sim, trust).fetch()
    assert "key received" in caplog.text
    text = caplog.text.lower()
    assert result.key.hex() not in text and repr(result.key).lower() not in text
    assert result.key.hex() not in repr(result)


def test_log_names_the_legacy_key_without_a_name_or_version(
    provider: Provider, sim: SimPlatform, trust: ProviderTrust, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealing_key_provider.client")
    client(provider, sim, trust, legacy=True).fetch()
    (legacy_line,) = [r.getMessage() for r in caplog.records if "key received" in r.getMessage()]
    assert legacy_line.startswith(
        "key received: the legacy-sha256 key (no name or version) provider_mrenclave="
    )
    assert "'default'" not in legacy_line and "version=" not in legacy_line
    caplog.clear()
    client(provider, sim, trust).fetch("app/db", 7)
    (v1_line,) = [r.getMessage() for r in caplog.records if "key received" in r.getMessage()]
    assert v1_line.startswith(
        "key received: name='app/db' version=7 scheme=hkdf-sha256-v1 provider_mrenclave="
    )
