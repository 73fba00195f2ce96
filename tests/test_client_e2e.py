"""The SDK against a real ``sealing-key-provider serve`` on loopback (simulated platform, production
mode), over both protocols; every refusal is produced by a real server plus, where the server would
never misbehave on its own, a man in the middle on real sockets or in the HTTP client."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import nacl.public
import pytest

from sealing_key_provider.client.errors import ProviderRefused
from sealing_key_provider.client.quote_source import QuoteSource
from sealing_key_provider.client.sdk import KeyClient
from sealing_key_provider.client.transport import HttpTransport, LegacyTransport, Transport
from sealing_key_provider.client.trust import ProviderTrust
from sealing_key_provider.collateral import FileSource
from sealing_key_provider.dcap import Verifier, parse_quote
from sealing_key_provider.errors import ProviderError, TransportError
from sealing_key_provider.sim import Scenario, SimPlatform

from .client_helpers import (
    LegacyMitm,
    ServedProvider,
    SimTd,
    flip_signature_byte,
    free_port,
    start_provider,
    write_collateral_bundle,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProvider]:
    server = start_provider(tmp_path_factory.mktemp("served"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def trust(served: ServedProvider) -> ProviderTrust:
    return ProviderTrust.from_hex(mrenclave=served.mrenclave, mrsigner=str(served.info["mrsigner"]))


@pytest.fixture(scope="module")
def platform_b(served: ServedProvider, tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("platform-b"), share_ca_with=served.sim)


def make_client(
    served: ServedProvider,
    trust: ProviderTrust,
    transport: Transport,
    *,
    td: QuoteSource | None = None,
    collateral: Path | None = None,
) -> KeyClient:
    return KeyClient(
        transport,
        trust,
        Verifier(trust_anchor=served.sim.root_certificate),
        FileSource(collateral or served.collateral),
        td or SimTd(served.sim),
        allow_unbound_legacy=transport.protocol == "legacy",
    )


def http(served: ServedProvider, trust: ProviderTrust, **kw: object) -> KeyClient:
    return make_client(served, trust, HttpTransport(served.http_url, timeout=10), **kw)  # type: ignore[arg-type]


def legacy(
    served: ServedProvider, trust: ProviderTrust, address: str | None = None, **kw: object
) -> KeyClient:
    return make_client(served, trust, LegacyTransport(address or served.legacy_address, timeout=10), **kw)  # type: ignore[arg-type]


Edit = Callable[[dict[str, object], bytes], None]


def mitm_http(served: ServedProvider, trust: ProviderTrust, edit: Edit) -> KeyClient:
    """A v1 client whose HTTP layer forwards to the real server and lets ``edit(response_json,
    td_quote)`` change the key response before the SDK sees it."""

    def handler(request: httpx.Request) -> httpx.Response:
        with httpx.Client(timeout=10, trust_env=False) as upstream:
            real = upstream.send(
                httpx.Request(request.method, request.url, headers=request.headers, content=request.content)
            )
        if request.url.path != "/v1/keys" or real.status_code != 200:
            return httpx.Response(
                real.status_code, content=real.content, headers={"content-type": "application/json"}
            )
        body = real.json()
        edit(body, base64.b64decode(json.loads(request.content)["quote"]))
        return httpx.Response(200, json=body)

    transport = HttpTransport(served.http_url, client=httpx.Client(transport=httpx.MockTransport(handler)))
    return make_client(served, trust, transport)


def code(e: pytest.ExceptionInfo[ProviderError]) -> str:
    return e.value.code


# --- success ---------------------------------------------------------------------------------------------


def test_both_protocols_give_stable_and_distinct_keys(served: ServedProvider, trust: ProviderTrust) -> None:
    with http(served, trust) as c:
        v1 = c.fetch()
        assert c.get_key() == v1.key
        assert c.get_key(freshness=True) == v1.key
    with legacy(served, trust) as c:
        old = c.fetch()
        assert c.get_key() == old.key
    assert len(v1.key) == len(old.key) == 32
    assert v1.scheme == "hkdf-sha256-v1" and old.scheme == "legacy-sha256"
    assert v1.key != old.key  # different schemes
    assert v1.policy_digest == bytes.fromhex(str(served.info["policy_digest"]))
    assert v1.provider_ppid.hex() == served.info["ppid"]
    # The v1 API can ask for the legacy scheme: the same key as the legacy protocol.
    with http(served, trust) as c:
        assert c.get_key(scheme="legacy-sha256") == old.key
        assert c.get_key("app/db", 2) not in (v1.key, old.key)


def test_pinned_policy_digest(served: ServedProvider, trust: ProviderTrust) -> None:
    pinned = replace(trust, expected_policy_digest=bytes.fromhex(str(served.info["policy_digest"])))
    with http(served, pinned) as c:
        assert len(c.get_key()) == 32


# --- identity, TCB ------------------------------------------------------------------------------------------


def test_wrong_expected_mrenclave(served: ServedProvider) -> None:
    wrong = ProviderTrust(mrenclave=b"\x5a" * 32)
    for make in (http, legacy):
        with make(served, wrong) as c, pytest.raises(ProviderError) as e:
            c.get_key()
        assert code(e) == "PROVIDER_IDENTITY_MISMATCH"
        assert f"provider MRENCLAVE {served.mrenclave} is not the expected {'5a' * 32}" in e.value.message


def test_low_tcb_status_under_the_client_policy(
    served: ServedProvider, trust: ProviderTrust, tmp_path: Path
) -> None:

    out_of_date = write_collateral_bundle(
        served.sim, tmp_path / "ood.json", int(time.time()), Scenario.OUT_OF_DATE
    )
    for make in (http, legacy):
        with make(served, trust, collateral=out_of_date) as c, pytest.raises(ProviderError) as e:
            c.get_key()
        assert code(e) == "TCB_STATUS_REJECTED" and "OutOfDate" in e.value.message
    strict = replace(trust, accepted_tcb_statuses=frozenset({"SWHardeningNeeded"}))
    with http(served, strict) as c, pytest.raises(ProviderError) as e:
        c.get_key()
    assert code(e) == "TCB_STATUS_REJECTED" and "UpToDate" in e.value.message


# --- tampering in transit --------------------------------------------------------------------------------------


def _box_for(td_quote_pk: bytes) -> bytes:
    return nacl.public.SealedBox(nacl.public.PublicKey(td_quote_pk)).encrypt(b"\x42" * 32)


def test_swapped_encrypted_key_v1(served: ServedProvider, trust: ProviderTrust) -> None:
    """The MITM seals a key of its own to the TD's public key (it can read it from the TD quote)."""

    def swap(body: dict[str, object], td_quote: bytes) -> None:
        pk = parse_quote(td_quote).td_report.report_data[:32]
        body["encrypted_key"] = base64.b64encode(_box_for(pk)).decode()

    with mitm_http(served, trust, swap) as c, pytest.raises(ProviderError) as e:
        c.get_key()
    assert code(e) == "RESPONSE_BINDING_INVALID"


def test_swapped_encrypted_key_legacy(served: ServedProvider, trust: ProviderTrust) -> None:
    seen: list[bytes] = []

    def remember(td_quote: bytes) -> bytes:
        seen.append(parse_quote(td_quote).td_report.report_data[:32])
        return td_quote

    with (
        LegacyMitm(
            served.legacy_address, quote=remember, answer=lambda ek, pq: (_box_for(seen[-1]), pq)
        ) as mitm,
        legacy(served, trust, mitm.address) as c,
        pytest.raises(ProviderError) as e,
    ):
        c.get_key()
    assert code(e) == "RESPONSE_BINDING_INVALID"


def test_replayed_v1_response(served: ServedProvider, trust: ProviderTrust) -> None:
    old: list[dict[str, object]] = []

    def replay(body: dict[str, object], td_quote: bytes) -> None:
        if not old:
            old.append(json.loads(json.dumps(body)))
        else:
            body.clear()
            body.update(old[0])

    with mitm_http(served, trust, replay) as c:
        c.get_key()
        with pytest.raises(ProviderError) as e:
            c.get_key()
    assert code(e) == "RESPONSE_BINDING_INVALID"


def test_provider_quote_with_a_flipped_signature_byte(served: ServedProvider, trust: ProviderTrust) -> None:
    def flip(body: dict[str, object], td_quote: bytes) -> None:
        pq = base64.b64decode(str(body["provider_quote"]))
        body["provider_quote"] = base64.b64encode(flip_signature_byte(pq)).decode()

    with mitm_http(served, trust, flip) as c, pytest.raises(ProviderError) as e:
        c.get_key()
    assert code(e) == "QUOTE_SIGNATURE_INVALID"
    with (
        LegacyMitm(served.legacy_address, answer=lambda ek, pq: (ek, flip_signature_byte(pq))) as mitm,
        legacy(served, trust, mitm.address) as c2,
        pytest.raises(ProviderError) as e2,
    ):
        c2.get_key()
    assert code(e2) == "QUOTE_SIGNATURE_INVALID"


# --- another platform ----------------------------------------------------------------------------------------------


def test_genuine_answer_from_a_provider_on_another_platform(
    served: ServedProvider, trust: ProviderTrust, platform_b: SimPlatform
) -> None:
    """The TD runs on platform B. A relay swaps its quote for a platform-A TD quote over the *same*
    report data (so the same public key) and forwards it to the real provider on A, which answers
    genuinely. The legacy binding does not cover the TD quote, so only the same-platform check catches
    it; in v1 the request-context binding already does."""
    td_b = SimTd(platform_b)

    def to_platform_a(td_quote: bytes) -> bytes:
        return SimTd(served.sim).quote(parse_quote(td_quote).td_report.report_data)

    with (
        LegacyMitm(served.legacy_address, quote=to_platform_a) as mitm,
        legacy(served, trust, mitm.address, td=td_b) as c,
        pytest.raises(ProviderError) as e,
    ):
        c.get_key()
    assert code(e) == "PLATFORM_MISMATCH"
    assert served.sim.ppid.hex() in e.value.message and platform_b.ppid.hex() in e.value.message


def test_the_provider_refuses_a_td_from_another_platform(
    served: ServedProvider, trust: ProviderTrust, platform_b: SimPlatform
) -> None:
    td_b = SimTd(platform_b)
    with http(served, trust, td=td_b) as c, pytest.raises(ProviderRefused) as e:
        c.get_key()
    assert code(e) == "PLATFORM_MISMATCH" and e.value.message.startswith("provider refused: ")
    with legacy(served, trust, td=td_b) as c2, pytest.raises(TransportError) as e2:
        c2.get_key()
    assert "closed the connection without answering" in e2.value.message


# --- transport failures --------------------------------------------------------------------------------------------


def test_nobody_listening(served: ServedProvider, trust: ProviderTrust) -> None:
    port = free_port()
    for c in (
        make_client(served, trust, HttpTransport(f"http://127.0.0.1:{port}", timeout=2)),
        make_client(served, trust, LegacyTransport(f"127.0.0.1:{port}", timeout=2)),
    ):
        with c, pytest.raises(TransportError) as e:
            c.get_key()
        assert code(e) == "TRANSPORT_ERROR"
