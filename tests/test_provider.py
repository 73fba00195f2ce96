"""The request flow in-process on the simulated platform: keys, bindings, refusals and the audit log."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import nacl.public
import pytest

from sealing_key_provider.binding import RequestContext, report_data_v1
from sealing_key_provider.dcap import Collateral, Verifier, parse_quote
from sealing_key_provider.errors import PlatformError, ProviderError
from sealing_key_provider.keys import build_registry, legacy_kdf
from sealing_key_provider.policy import Policy
from sealing_key_provider.provider import UNVERIFIED, KeyRequest, Provider
from sealing_key_provider.sim import Scenario, SgxEnclaveIdentity, SimPlatform, SimSgxPlatform

NOW = 1_780_000_000  # a fixed time: tests never read the clock


class SimSource:
    """Collateral straight from the simulated platform, with a scenario to choose."""

    def __init__(self, platform: SimPlatform, scenario: Scenario = Scenario.UP_TO_DATE) -> None:
        self.platform = platform
        self.scenario = scenario
        self._cache: dict[tuple[str, Scenario], Collateral] = {}

    def get(self, tee: str, fmspc: bytes, ca: str) -> Collateral:
        key = (tee, self.scenario)
        if key not in self._cache:
            self._cache[key] = self.platform.collateral(tee, now=NOW, scenario=self.scenario)
        return self._cache[key]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("platform-a"))


@pytest.fixture(scope="module")
def other_sim(sim: SimPlatform, tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("platform-b"), share_ca_with=sim)


def make_provider(sim: SimPlatform, policy: Policy | None = None, **kwargs: object) -> Provider:
    source = kwargs.pop("source", SimSource(sim))
    return Provider(
        SimSgxPlatform.load(sim.state_dir, dev_mode=bool(kwargs.get("dev_mode", False))),
        source,  # type: ignore[arg-type]
        Verifier(trust_anchor=sim.root_certificate),
        policy or Policy(),
        build_registry(),
        clock=lambda: float(NOW),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def provider(sim: SimPlatform) -> Provider:
    return make_provider(sim)


class Td:
    """A simulated TD with its own X25519 key pair."""

    def __init__(
        self, sim: SimPlatform, mrtd: bytes = b"\x11" * 48, rtmrs: tuple[bytes, ...] = (bytes(48),) * 4
    ):
        self.sim, self.mrtd, self.rtmrs = sim, mrtd, rtmrs
        self.sk = nacl.public.PrivateKey.generate()

    def quote(self, rd_tail: bytes = bytes(32), **kw: object) -> bytes:
        return self.sim.tdx_quote(
            report_data=bytes(self.sk.public_key) + rd_tail,
            mrtd=self.mrtd,
            rtmrs=self.rtmrs,
            **kw,  # type: ignore[arg-type]
        )

    def open(self, encrypted: bytes) -> bytes:
        return nacl.public.SealedBox(self.sk).decrypt(encrypted)


def get_key(provider: Provider, td: Td, **kw: object) -> bytes:
    resp = provider.handle(KeyRequest(quote=td.quote(), **kw))  # type: ignore[arg-type]
    return td.open(resp.encrypted_key)


def test_td_gets_a_stable_32_byte_key(provider: Provider, sim: SimPlatform) -> None:
    td = Td(sim)
    k1 = get_key(provider, td)
    k2 = get_key(provider, Td(sim))  # same image, new key pair and quote
    assert len(k1) == 32 and k1 == k2


def test_key_survives_provider_restart(provider: Provider, sim: SimPlatform) -> None:
    restarted = make_provider(SimPlatform.load(sim.state_dir))
    assert get_key(provider, Td(sim)) == get_key(restarted, Td(sim))


def test_inputs_that_change_the_key(provider: Provider, sim: SimPlatform) -> None:
    base = get_key(provider, Td(sim))
    r = [bytes(48)] * 4
    variants = {
        "mrtd": get_key(provider, Td(sim, mrtd=b"\x12" * 48)),
        "rtmr0": get_key(provider, Td(sim, rtmrs=(b"\x01" * 48, *r[1:]))),
        "rtmr2": get_key(provider, Td(sim, rtmrs=(*r[:2], b"\x01" * 48, r[3]))),
        "name": get_key(provider, Td(sim), key_name="app/db"),
        "version": get_key(provider, Td(sim), key_version=2),
        "scheme": get_key(provider, Td(sim), scheme="legacy-sha256"),
    }
    assert len({base, *variants.values()}) == len(variants) + 1
    # RTMR3 is not bound by the default hkdf selection (the guest extends it at run time) ...
    assert get_key(provider, Td(sim, rtmrs=(*r[:3], b"\x01" * 48))) == base
    # ... but the legacy scheme binds it, as the original did.
    legacy = get_key(provider, Td(sim), legacy=True)
    assert get_key(provider, Td(sim, rtmrs=(*r[:3], b"\x01" * 48)), legacy=True) != legacy


def test_legacy_key_is_the_original_algorithm(provider: Provider, sim: SimPlatform) -> None:
    td = Td(sim)
    resp = provider.handle(KeyRequest(quote=td.quote(), legacy=True))
    sealing = SimSgxPlatform.load(sim.state_dir).sealing_key()
    expected = legacy_kdf(sealing, td.mrtd + b"".join(td.rtmrs))
    assert (
        td.open(resp.encrypted_key)
        == expected
        == hashlib.sha256(sealing + td.mrtd + b"".join(td.rtmrs)).digest()
    )
    pq = resp.provider_quote
    assert pq[368:400] == hashlib.sha256(resp.encrypted_key).digest() and pq[400:432] == bytes(32)
    assert resp.scheme == "legacy-sha256" and len(resp.encrypted_key) == 80


def test_v1_response_binds_request_context(provider: Provider, sim: SimPlatform) -> None:
    td = Td(sim)
    quote = td.quote()
    resp = provider.handle(KeyRequest(quote=quote, key_name="app/x", key_version=3))
    ctx = RequestContext.for_quote(
        quote,
        scheme=resp.scheme,
        key_name="app/x",
        key_version=3,
        policy_digest=provider.policy_digest,
        measurements=resp.measurements,
        tcb_status=resp.tcb_status,
        advisory_ids=resp.advisory_ids,
        dev_mode=False,
    )
    pq = parse_quote(resp.provider_quote)
    assert pq.report_data == report_data_v1(resp.encrypted_key, ctx)
    assert pq.enclave_report.mrenclave == provider.identity.mrenclave
    assert resp.tcb_status == "UpToDate" and resp.measurements == ("mrtd", "rtmr0", "rtmr1", "rtmr2")
    sgx = Verifier(trust_anchor=sim.root_certificate).verify(
        resp.provider_quote, sim.collateral("sgx", now=NOW), NOW
    )
    assert sgx.pck.ppid == sim.ppid


def _code(provider: Provider, request: KeyRequest) -> str:
    with pytest.raises(ProviderError) as err:
        provider.handle(request)
    return err.value.code


def test_foreign_platform_is_refused(provider: Provider, other_sim: SimPlatform) -> None:
    assert _code(provider, KeyRequest(quote=Td(other_sim).quote())) == "PLATFORM_MISMATCH"


def test_tampered_quote_is_refused(provider: Provider, sim: SimPlatform) -> None:
    q = bytearray(Td(sim).quote())
    q[200] ^= 1  # inside MRTD
    assert _code(provider, KeyRequest(quote=bytes(q))) == "QUOTE_SIGNATURE_INVALID"


@pytest.mark.parametrize(
    ("scenario", "code"),
    [
        (Scenario.EXPIRED, "COLLATERAL_EXPIRED"),
        (Scenario.REVOKED_PCK, "PCK_REVOKED"),
        (Scenario.OUT_OF_DATE, "TCB_STATUS_REJECTED"),
        (Scenario.REVOKED_TCB, "TCB_STATUS_REJECTED"),
        (Scenario.TCB_LEVEL_NOT_FOUND, "TCB_LEVEL_NOT_FOUND"),
    ],
)
def test_collateral_scenarios_are_refused(sim: SimPlatform, scenario: Scenario, code: str) -> None:
    p = make_provider(sim, source=SimSource(sim, scenario))
    assert _code(p, KeyRequest(quote=Td(sim).quote())) == code


def test_debug_td_and_policy_denials(provider: Provider, sim: SimPlatform) -> None:
    assert _code(provider, KeyRequest(quote=Td(sim).quote(debug=True))) == "TD_DEBUG"
    strict = make_provider(sim, Policy(allowed_mrtd=frozenset({"22" * 48})))
    assert _code(strict, KeyRequest(quote=Td(sim).quote())) == "POLICY_DENIED"
    names = make_provider(sim, Policy.from_mapping({"key_names": {"*": ["app/*"]}}))
    assert _code(names, KeyRequest(quote=Td(sim).quote(), key_name="other")) == "POLICY_DENIED"
    assert len(get_key(names, Td(sim), key_name="app/db")) == 32
    status = make_provider(sim, Policy(accepted_tcb_statuses=frozenset({"OutOfDate"})))
    assert _code(status, KeyRequest(quote=Td(sim).quote())) == "TCB_STATUS_REJECTED"


def test_bound_service_td_is_refused(provider: Provider, sim: SimPlatform) -> None:
    q = Td(sim).quote(version=5, mrservicetd=b"\x01" * 48)
    assert _code(provider, KeyRequest(quote=q)) == "POLICY_DENIED"


def test_zero_and_small_order_public_keys_are_refused(provider: Provider, sim: SimPlatform) -> None:
    zero = sim.tdx_quote(report_data=bytes(64), mrtd=b"\x11" * 48)
    assert _code(provider, KeyRequest(quote=zero)) == "PUBLIC_KEY_INVALID"
    one = sim.tdx_quote(report_data=b"\x01" + bytes(63), mrtd=b"\x11" * 48)
    assert _code(provider, KeyRequest(quote=one)) == "PUBLIC_KEY_INVALID"


def test_sgx_quote_and_garbage_are_refused(provider: Provider, sim: SimPlatform) -> None:
    assert _code(provider, KeyRequest(quote=sim.sgx_quote(bytes(64), enclave=provider_enclave(sim)))) == (
        "UNSUPPORTED_QUOTE"
    )
    assert _code(provider, KeyRequest(quote=b"\x04\x00")) == "QUOTE_MALFORMED"
    assert _code(provider, KeyRequest(quote=bytes(70 * 1024))) == "REQUEST_TOO_LARGE"
    assert _code(provider, KeyRequest(quote=Td(sim).quote(), scheme="md5")) == "UNKNOWN_SCHEME"
    assert _code(provider, KeyRequest(quote=Td(sim).quote(), key_name="../x")) == "BAD_REQUEST"


def provider_enclave(sim: SimPlatform) -> SgxEnclaveIdentity:
    return SimSgxPlatform.load(sim.state_dir).enclave


def test_freshness_required(sim: SimPlatform) -> None:
    p = make_provider(sim, Policy(freshness_required=True))
    td = Td(sim)
    assert _code(p, KeyRequest(quote=td.quote())) == "FRESHNESS_INVALID"
    nonce, expires = p.issue_nonce()
    assert expires == NOW + p.policy.freshness_window_seconds
    bound = td.quote(rd_tail=hashlib.sha256(nonce).digest())
    assert len(td.open(p.handle(KeyRequest(quote=bound, nonce=nonce)).encrypted_key)) == 32
    assert _code(p, KeyRequest(quote=td.quote(), nonce=nonce)) == "FRESHNESS_INVALID"  # not bound
    forged = bytearray(nonce)
    forged[-1] ^= 1
    assert _code(p, KeyRequest(quote=bound, nonce=bytes(forged))) == "FRESHNESS_INVALID"


def test_dev_mode_serves_unverified_quotes_and_says_so(
    sim: SimPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    class Down:
        def get(self, tee: str, fmspc: bytes, ca: str) -> Collateral:
            raise AssertionError("dev mode must not fetch collateral")

    with caplog.at_level(logging.WARNING):
        dev = make_provider(sim, dev_mode=True, source=Down())
        td = Td(sim)
        bad = bytearray(td.quote())
        bad[640] ^= 1  # quote signature: dev mode does not look
        resp = dev.handle(KeyRequest(quote=bytes(bad)))
    assert resp.dev_mode and resp.tcb_status == UNVERIFIED
    assert len(td.open(resp.encrypted_key)) == 32
    assert "DEVELOPMENT MODE" in caplog.text
    # A dev build is another enclave: its keys differ from production's for the same TD.
    assert get_key(dev, Td(sim)) != get_key(make_provider(sim), Td(sim))


def test_info_reports_identity(provider: Provider, sim: SimPlatform) -> None:
    info = provider.info()
    assert info["ppid"] == sim.ppid.hex() and info["fmspc"] == sim.fmspc.hex().upper()
    assert info["policy_digest"] == provider.policy_digest.hex()
    assert info["schemes"] == ["hkdf-sha256-v1", "legacy-sha256"]
    assert provider.readiness()["collateral"] == "ok"


def test_audit_log_has_decisions_and_no_secrets(
    provider: Provider, sim: SimPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    td = Td(sim)
    with caplog.at_level(logging.DEBUG):
        resp = provider.handle(KeyRequest(quote=td.quote(), key_name="app/a", peer="127.0.0.1"))
        with pytest.raises(ProviderError):
            provider.handle(KeyRequest(quote=Td(sim).quote(debug=True)))
    key = td.open(resp.encrypted_key)
    sealing = SimSgxPlatform.load(sim.state_dir).sealing_key()
    text = caplog.text
    assert "granted" in text and "denied code=TD_DEBUG" in text and "key_name='app/a'" in text
    for secret in (key, sealing, bytes(td.sk)):
        for form in (secret.hex(), secret.hex().upper(), repr(secret), secret.decode("latin-1")):
            assert form not in text
    assert key.hex() not in repr(resp) and repr(key) not in repr(resp)


def test_foreign_fmspc_is_refused_before_any_collateral_fetch(sim: SimPlatform, tmp_path: Path) -> None:
    other = SimPlatform.init(
        tmp_path / "other-family", share_ca_with=sim, fmspc=bytes.fromhex("00806F050000")
    )

    asked: list[bytes] = []

    class Recording(SimSource):
        def get(self, tee: str, fmspc: bytes, ca: str) -> Collateral:
            asked.append(fmspc)
            return super().get(tee, fmspc, ca)

    p = make_provider(sim, source=Recording(sim))
    assert _code(p, KeyRequest(quote=Td(other).quote())) == "PLATFORM_MISMATCH"
    assert all(f == sim.fmspc for f in asked)


def test_platform_is_checked_before_policy(provider: Provider, other_sim: SimPlatform) -> None:
    """A TD of another machine learns nothing about this provider's policy and never reaches it."""
    strict = make_provider(
        SimPlatform.load(provider_state_dir(provider)), Policy.from_mapping({"key_names": {"*": ["app/*"]}})
    )
    assert _code(strict, KeyRequest(quote=Td(other_sim).quote(), key_name="denied")) == "PLATFORM_MISMATCH"


def provider_state_dir(provider: Provider) -> Path:
    platform = provider._platform
    assert isinstance(platform, SimSgxPlatform)
    return platform.platform.state_dir


class _LyingHost:
    """The untrusted side of Gramine's quote path: it may answer the provider's quote request with a
    quote of its own choosing (the enclave's sealing key stays the real platform's)."""

    def __init__(self, real: SimSgxPlatform, answer: object) -> None:
        self.real = real
        self.answer = answer

    def report(self, report_data: bytes) -> bytes:
        return self.real.report(report_data)  # made inside the enclave: the host cannot touch it

    def quote(self, report_data: bytes) -> bytes:
        return self.answer(report_data)  # type: ignore[operator,no-any-return]

    def sealing_key(self) -> bytes:
        return self.real.sealing_key()


def test_own_quote_must_carry_the_start_up_nonce(sim: SimPlatform) -> None:
    """A quote made earlier (here over zeros) cannot be replayed as the provider's identity."""
    real = SimSgxPlatform.load(sim.state_dir)
    host = _LyingHost(real, lambda rd: real.quote(bytes(64)))
    with pytest.raises(PlatformError, match="own report in report_data"):
        Provider(
            host, SimSource(sim), Verifier(trust_anchor=sim.root_certificate), Policy(), build_registry()
        )


def test_own_quote_from_another_platform_is_refused(sim: SimPlatform, tmp_path: Path) -> None:
    """A host that answers with a quote whose PCK chain is another machine's (same simulated Intel
    CAs, so the chain itself is valid) would make the provider admit that machine's TDs: the QE
    report signature, made by this machine's PCK key, does not verify under the other chain."""
    real = SimSgxPlatform.load(sim.state_dir)
    other = SimPlatform.init(tmp_path / "machine-b", share_ca_with=sim)
    other_chain = parse_quote(other.tdx_quote(report_data=bytes(64))).pck_chain_pem

    def swap_chain(rd: bytes) -> bytes:
        quote = real.quote(rd)
        chain = parse_quote(quote).pck_chain_pem
        # The chain is the last field of an SGX v3 quote (certification data type 5). Certificates
        # differ in length by their DER signatures, so the swap also rewrites the two sizes that
        # cover it: the certification data size just before it and the signature data length.
        start = len(quote) - len(chain)
        assert quote[start:] == chain
        delta = len(other_chain) - len(chain)
        cert_size = int.from_bytes(quote[start - 4 : start], "little") + delta
        sig_len = int.from_bytes(quote[432:436], "little") + delta
        return (
            quote[:432]
            + sig_len.to_bytes(4, "little")
            + quote[436 : start - 4]
            + cert_size.to_bytes(4, "little")
            + other_chain
        )

    host = _LyingHost(real, swap_chain)
    with pytest.raises(PlatformError, match="does not prove its platform") as err:
        Provider(
            host, SimSource(sim), Verifier(trust_anchor=sim.root_certificate), Policy(), build_registry()
        )
    assert "QE_REPORT_SIGNATURE_INVALID" in err.value.message
    # Development mode does not verify, as documented: it then believes the host.
    dev = Provider(
        _LyingHost(real, swap_chain),
        SimSource(sim),
        Verifier(trust_anchor=sim.root_certificate),
        Policy(),
        build_registry(),
        dev_mode=True,
    )
    assert dev.identity.pck.ppid == other.ppid
