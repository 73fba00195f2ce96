"""The SDK's attested-key path in-process: /v1/attestation verified once and cached, re-fetched when
the provider renews, and every way an attestation or a signed answer can be wrong refused."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sealing_key_provider.attestation import AttestationDocument
from sealing_key_provider.client.sdk import KeyClient
from sealing_key_provider.client.transport import ProviderAnswer
from sealing_key_provider.client.trust import ProviderTrust
from sealing_key_provider.dcap import Verifier
from sealing_key_provider.errors import ProviderError
from sealing_key_provider.keys import build_registry
from sealing_key_provider.policy import Policy
from sealing_key_provider.provider import Provider
from sealing_key_provider.sim import SimPlatform, SimSgxPlatform

from .client_helpers import InProcessTransport, SimSource, SimTd

NOW = 1_780_000_000
LIFETIME = 3600


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("attested-client"))


def setup(sim: SimPlatform) -> tuple[Provider, Clock]:
    clock = Clock()
    provider = Provider(
        SimSgxPlatform.load(sim.state_dir),
        SimSource(sim, NOW),
        Verifier(trust_anchor=sim.root_certificate),
        Policy(),
        build_registry(),
        clock=clock,
        attestation_lifetime=LIFETIME,
    )
    return provider, clock


class Transport(InProcessTransport):
    """Answers signed by default; ``document`` may replace what /v1/attestation returns."""

    def __init__(self, provider: Provider, **kw: object) -> None:
        super().__init__(provider, default_evidence=None, **kw)  # type: ignore[arg-type]
        self.document: AttestationDocument | None = None

    def attestation(self) -> AttestationDocument:
        real = super().attestation()
        return self.document if self.document is not None else real


def client(
    provider: Provider, sim: SimPlatform, transport: Transport, clock: Clock, **trust: object
) -> KeyClient:
    pins = ProviderTrust(mrenclave=provider.identity.mrenclave, **trust)  # type: ignore[arg-type]
    return KeyClient(
        transport,
        pins,
        Verifier(trust_anchor=sim.root_certificate),
        SimSource(sim, NOW),
        SimTd(sim),
        clock=clock,
    )


def code(e: pytest.ExceptionInfo[ProviderError]) -> str:
    return e.value.code


def test_verified_once_cached_and_refetched_after_renewal(sim: SimPlatform) -> None:
    provider, clock = setup(sim)
    transport = Transport(provider)
    c = client(provider, sim, transport, clock)
    first = c.fetch()
    assert c.get_key() == first.key and transport.attestation_fetches == 1
    assert first.provider_mrenclave == provider.identity.mrenclave
    assert all(a.v1 is not None and a.v1.evidence == "signature" for a in transport.answers)
    # The provider renews (half its lifetime later): the next answer names a new attestation, which the
    # client fetches and verifies once, then uses.
    clock.now += LIFETIME / 2
    assert provider.maintain()
    assert c.get_key() == first.key and transport.attestation_fetches == 2
    assert c.get_key() == first.key and transport.attestation_fetches == 2
    # Past the cached attestation's end the client fetches again rather than trusting it.
    clock.now += LIFETIME / 2 + 1
    assert provider.maintain()
    assert c.get_key() == first.key and transport.attestation_fetches == 3


def test_bad_attestations_are_refused(sim: SimPlatform) -> None:
    provider, clock = setup(sim)
    genuine = AttestationDocument.from_json(provider.attestation())
    other, _ = setup(sim)  # another attestation by the same enclave, of another key
    foreign = AttestationDocument.from_json(other.attestation())
    cases: list[tuple[AttestationDocument, dict[str, object], str]] = [
        # The statement names another key than the quote binds.
        (replace(genuine, quote=foreign.quote), {}, "RESPONSE_BINDING_INVALID"),
        # A genuine attestation, but of a key that did not sign the answer.
        (foreign, {}, "PROVIDER_IDENTITY_MISMATCH"),
        # The pinned policy digest differs.
        (genuine, {"expected_policy_digest": b"\x01" * 32}, "PROVIDER_IDENTITY_MISMATCH"),
        # The pinned identity differs.
        (genuine, {"mrsigner": b"\x02" * 32}, "PROVIDER_IDENTITY_MISMATCH"),
    ]
    for document, trust, expected in cases:
        transport = Transport(provider)
        transport.document = document
        with pytest.raises(ProviderError) as e:
            client(provider, sim, transport, clock, **trust).get_key()
        assert code(e) == expected, (expected, trust)


def test_expired_attestation_is_never_used(sim: SimPlatform) -> None:
    provider, provider_clock = setup(sim)
    client_clock = Clock()
    c = client(provider, sim, Transport(provider), client_clock)
    c.get_key()
    # The client's clock passes the attestation's end (the provider's has not: it still signs with it):
    # the client fetches again, finds the same, expired attestation and refuses it.
    client_clock.now = NOW + LIFETIME + 10
    with pytest.raises(ProviderError) as e:
        c.get_key()
    assert code(e) == "PROVIDER_IDENTITY_MISMATCH" and "not valid now" in e.value.message
    # The provider's side: with its own clock past the end and no renewal, it neither signs nor is ready.
    provider_clock.now = NOW + LIFETIME + 10
    with pytest.raises(ProviderError) as e2:
        client(provider, sim, Transport(provider), provider_clock).get_key()
    assert code(e2) == "PLATFORM_ERROR"
    with pytest.raises(ProviderError) as e3:
        provider.readiness()
    assert code(e3) == "PLATFORM_ERROR"


def test_signatures_cannot_be_moved_between_answers(sim: SimPlatform) -> None:
    provider, clock = setup(sim)
    kept: list[ProviderAnswer] = []

    def swap(td_quote: bytes, answer: ProviderAnswer) -> ProviderAnswer:
        kept.append(answer)
        if len(kept) == 1:
            return answer
        assert answer.v1 is not None and kept[0].v1 is not None
        v1 = replace(answer.v1, signature=kept[0].v1.signature)
        return ProviderAnswer(answer.encrypted_key, answer.provider_quote, v1)

    c = client(provider, sim, Transport(provider, tamper=swap), clock)
    c.get_key()
    with pytest.raises(ProviderError) as e:
        c.get_key()
    assert code(e) == "RESPONSE_BINDING_INVALID"


def test_a_verified_attestation_is_not_kept_past_its_collateral(sim: SimPlatform) -> None:
    """The provider chooses its attestation's lifetime; the client keeps a verification no longer than
    the collateral and certificates it was made with, then verifies again (here: and refuses, since the
    collateral has expired by then)."""
    clock = Clock()
    provider = Provider(
        SimSgxPlatform.load(sim.state_dir),
        SimSource(sim, NOW),
        Verifier(trust_anchor=sim.root_certificate),
        Policy(),
        build_registry(),
        clock=clock,
        attestation_lifetime=400 * 24 * 3600.0,  # longer than any collateral is valid
    )
    transport = Transport(provider)
    client_clock = Clock()
    c = client(provider, sim, transport, client_clock)
    c.get_key()
    assert c.attestations is not None
    expiry = c.attestations.current(NOW).verified.collateral_expiry
    assert expiry < NOW + 400 * 24 * 3600
    client_clock.now = expiry - 1
    c.get_key()
    assert transport.attestation_fetches == 1  # still cached
    client_clock.now = expiry + 1
    with pytest.raises(ProviderError):
        c.get_key()
    assert transport.attestation_fetches == 2  # fetched and verified again, not trusted from the cache
