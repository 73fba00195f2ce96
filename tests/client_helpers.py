"""Shared pieces of the client tests: a simulated TD, collateral from the simulator, and transports
that hand requests to an in-process provider (optionally tampering with the answer)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from sealing_key_provider.client.errors import ProviderRefused
from sealing_key_provider.client.transport import PROTOCOL_LEGACY, PROTOCOL_V1, ProviderAnswer, Transport
from sealing_key_provider.dcap import Collateral
from sealing_key_provider.errors import ProviderError
from sealing_key_provider.provider import KeyRequest, Provider
from sealing_key_provider.sim import Scenario, SimPlatform
from sealing_key_provider.wire import KeyResponseV1

MRTD = b"\x11" * 48
RTMRS = (b"\x21" * 48, b"\x22" * 48, b"\x23" * 48, bytes(48))


class SimTd:
    """A simulated TD image on a simulated platform: quotes over whatever report data it is given."""

    def __init__(self, sim: SimPlatform, mrtd: bytes = MRTD, **kw: object) -> None:
        self.sim, self.mrtd, self.kw = sim, mrtd, kw
        self.calls = 0

    def quote(self, report_data: bytes) -> bytes:
        self.calls += 1
        return self.sim.tdx_quote(report_data=report_data, mrtd=self.mrtd, rtmrs=RTMRS, **self.kw)  # type: ignore[arg-type]


class SimSource:
    """Collateral straight from the simulated platform at a fixed time, with a scenario to choose."""

    def __init__(self, sim: SimPlatform, now: int, scenario: Scenario = Scenario.UP_TO_DATE) -> None:
        self.sim, self.now, self.scenario = sim, now, scenario
        self._cache: dict[str, Collateral] = {}

    def get(self, tee: str, fmspc: bytes, ca: str) -> Collateral:
        if tee not in self._cache:
            self._cache[tee] = self.sim.collateral(tee, now=self.now, scenario=self.scenario)
        return self._cache[tee]


Tamper = Callable[[bytes, ProviderAnswer], ProviderAnswer]


class InProcessTransport:
    """A transport that calls :meth:`Provider.handle` directly (v1 answers go through their JSON form),
    with an optional ``tamper(td_quote, answer)`` playing the man in the middle."""

    def __init__(self, provider: Provider, *, legacy: bool = False, tamper: Tamper | None = None) -> None:
        self.provider, self.legacy, self.tamper = provider, legacy, tamper
        self.answers: list[ProviderAnswer] = []

    @property
    def protocol(self) -> str:
        return PROTOCOL_LEGACY if self.legacy else PROTOCOL_V1

    def close(self) -> None:
        pass

    def nonce(self) -> bytes:
        return self.provider.issue_nonce()[0]

    def request(
        self, td_quote: bytes, *, key_name: str, key_version: int, scheme: str | None, nonce: bytes | None
    ) -> ProviderAnswer:
        try:
            r = self.provider.handle(
                KeyRequest(
                    quote=td_quote,
                    scheme=scheme,
                    key_name=key_name,
                    key_version=key_version,
                    nonce=nonce,
                    legacy=self.legacy,
                )
            )
        except ProviderError as e:
            raise ProviderRefused(e.code, e.message) from None
        if self.legacy:
            answer = ProviderAnswer(r.encrypted_key, r.provider_quote, None)
        else:
            v1 = KeyResponseV1(
                encrypted_key=r.encrypted_key,
                provider_quote=r.provider_quote,
                scheme=r.scheme,
                measurements=r.measurements,
                key_name=r.key_name,
                key_version=r.key_version,
                tcb_status=r.tcb_status,
                advisory_ids=r.advisory_ids,
                policy_digest=self.provider.policy_digest,
                dev_mode=r.dev_mode,
            )
            v1 = KeyResponseV1.from_json(v1.to_json())
            answer = ProviderAnswer(v1.encrypted_key, v1.provider_quote, v1)
        self.answers.append(answer)
        return self.tamper(td_quote, answer) if self.tamper else answer


def with_quote(answer: ProviderAnswer, provider_quote: bytes) -> ProviderAnswer:
    """The same answer carrying another provider quote (in the v1 body too)."""
    v1 = replace(answer.v1, provider_quote=provider_quote) if answer.v1 is not None else None
    return ProviderAnswer(answer.encrypted_key, provider_quote, v1)


def with_encrypted_key(answer: ProviderAnswer, encrypted_key: bytes) -> ProviderAnswer:
    v1 = replace(answer.v1, encrypted_key=encrypted_key) if answer.v1 is not None else None
    return ProviderAnswer(encrypted_key, answer.provider_quote, v1)


def flip_signature_byte(provider_quote: bytes) -> bytes:
    """Flip one bit inside the ECDSA signature of a v3 SGX quote (header 48 + body 384 + length 4)."""
    q = bytearray(provider_quote)
    q[48 + 384 + 4 + 10] ^= 0x01
    return bytes(q)


_: type[Transport] = InProcessTransport  # the test transport satisfies the protocol
