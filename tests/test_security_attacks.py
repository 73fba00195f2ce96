"""The key-substitution attacks of the security review (issue 15), each performed on the simulated
platform through a public interface (HTTP, legacy socket, SDK, configuration) and refused with its code.

The host is the attacker throughout: it relays, rewrites and swaps every message and quote, boots any
TD image it likes (also as a debug TD), and sets the clock.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.requests import Request

from sealing_key_provider.cli import main as cli_main
from sealing_key_provider.cli.serve import open_platform
from sealing_key_provider.client import KeyClient, ProviderTrust
from sealing_key_provider.client.tdx_guest import qgs_port_from_conf
from sealing_key_provider.client.transport import HttpTransport, ProviderAnswer
from sealing_key_provider.collateral.rawjson import split_signed_document
from sealing_key_provider.config import Config, PlatformConfig, parse_override
from sealing_key_provider.dcap import Collateral, Verifier, parse_quote
from sealing_key_provider.errors import (
    ClockBehindFloor,
    ConfigError,
    LegacyNotAllowed,
    PlatformError,
    ProviderError,
    ResponseBindingInvalid,
)
from sealing_key_provider.keys import DEFAULT_SCHEME, HKDF_SCHEME, LEGACY_SCHEME, HkdfSha256V1
from sealing_key_provider.platform import DEV_MODE_ISVPRODID, PRODUCTION_ISVPRODID
from sealing_key_provider.policy import Policy
from sealing_key_provider.provider import KeyRequest
from sealing_key_provider.server import ServerThread
from sealing_key_provider.server.http_api import read_body
from sealing_key_provider.sim import (
    DEFAULT_SIM_MRENCLAVE,
    Scenario,
    SgxEnclaveIdentity,
    SimPlatform,
    SimSgxPlatform,
)
from sealing_key_provider.sim.pccs_server import parse_listen as sim_pccs_listen
from sealing_key_provider.timefloor import BUILD_TIME, TimeFloor
from sealing_key_provider.wire import decode_legacy_response

from .client_helpers import SimSource as FixedTimeSource
from .client_helpers import SimTd
from .test_server_support import (
    Td,
    b64,
    error_code,
    http_client,
    in_process,
    key_of,
    legacy_address,
    legacy_exchange,
    make_provider,
    post_key,
)

VICTIM = b"\x11" * 48
ATTACKER = b"\xaa" * 48
DAY = 86400


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("machine-a"))


@pytest.fixture(scope="module")
def other_sim(sim: SimPlatform, tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("machine-b"), share_ca_with=sim)


@pytest.fixture(scope="module")
def server(sim: SimPlatform) -> Iterator[ServerThread]:
    """A production provider on loopback that allows debug TDs (the configuration item 1 attacks)."""
    with in_process(make_provider(sim, policy=Policy(allow_debug_td=True))) as thread:
        yield thread


def sdk(thread: ServerThread, sim: SimPlatform, transport: object | None = None, **kw: object) -> KeyClient:
    provider = thread.server.provider
    address = thread.server.http_address
    assert address is not None
    return KeyClient(
        transport or HttpTransport(f"http://{address[0]}:{address[1]}", timeout=10),  # type: ignore[arg-type]
        ProviderTrust(mrenclave=provider.identity.mrenclave),
        Verifier(trust_anchor=sim.root_certificate),
        FixedTimeSource(sim, int(time.time())),
        SimTd(sim, mrtd=VICTIM),
        **kw,  # type: ignore[arg-type]
    )


# --- 1. a debug TD never gets the production key --------------------------------------------------


def test_debug_td_of_the_victims_image_gets_another_key_over_http(
    server: ServerThread, sim: SimPlatform
) -> None:
    """The host boots the victim's image as a debug TD (same MRTD and RTMRs) and asks for its key: with
    debug TDs allowed it gets a key, but never the production one it could read from debug memory."""
    victim, debug_twin = Td(sim, VICTIM), Td(sim, VICTIM)
    with http_client(server) as c:
        production = key_of(victim, post_key(c, victim.quote()))
        debug = key_of(debug_twin, post_key(c, debug_twin.quote(debug=True)))
        assert debug != production
        # Under the legacy scheme, which cannot separate them, a debug TD is refused whatever the policy.
        r = post_key(c, debug_twin.quote(debug=True), scheme=LEGACY_SCHEME)
        assert (r.status_code, error_code(r)) == (403, "TD_DEBUG")
        assert len(key_of(victim, post_key(c, victim.quote(), scheme=LEGACY_SCHEME))) == 32


def test_debug_td_is_refused_on_the_legacy_socket(
    server: ServerThread, sim: SimPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    victim = Td(sim, VICTIM)
    with caplog.at_level(logging.INFO, logger="sealing_key_provider"):
        assert legacy_exchange(legacy_address(server), victim.quote(debug=True)) is None
        assert legacy_exchange(legacy_address(server), victim.quote()) is not None
    assert "refused protocol=legacy code=TD_DEBUG" in caplog.text


def test_debug_and_dev_mode_labels_keep_the_production_vectors(sim: SimPlatform) -> None:
    """The four (debug, dev) combinations give four keys; the production one is the frozen scheme's."""
    td = parse_quote(Td(sim, VICTIM).quote()).td_report
    debug_td = parse_quote(Td(sim, VICTIM).quote(debug=True)).td_report
    scheme, sealing = HkdfSha256V1(), bytes(range(16))
    keys = {
        scheme.derive(sealing, t, "default", 1, dev_mode=d).key for t in (td, debug_td) for d in (False, True)
    }
    assert len(keys) == 4
    assert (
        scheme.derive(sealing, td, "default", 1).key
        == scheme.derive(sealing, td, "default", 1, dev_mode=False).key
    )


# --- 2. a development build never gets the production sealing key or production keys ---------------


def test_dev_mode_with_the_mrsigner_key_is_refused_at_configuration(tmp_path: Path, sim: SimPlatform) -> None:
    path = tmp_path / "dev.toml"
    path.write_text(
        'dev_mode = true\n[platform]\nkind = "sim"\nsealing_key_policy = "mrsigner"\n'
        f'sim_state_dir = "{sim.state_dir}"\n[collateral]\nfile = "c.json"\n'
    )
    with pytest.raises(ConfigError) as err:
        Config.load(path)
    assert err.value.code == "CONFIG_INVALID"
    assert "dev_mode" in err.value.message and "platform.sealing_key_policy" in err.value.message
    # The same through a command-line override onto a production file.
    path.write_text(path.read_text().replace("dev_mode = true", "dev_mode = false"))
    assert Config.load(path).platform.sealing_key_policy == "mrsigner"
    with pytest.raises(ConfigError):
        Config.load(path, {"dev_mode": True})


def test_dev_build_never_meets_the_production_key(sim: SimPlatform) -> None:
    """Even with the configuration check removed: a development build has its own ISVPRODID (another
    MRSIGNER sealing key), a provider refuses dev mode over the MRSIGNER key, and the v1 keys of a
    development provider are derived under their own label."""
    prod = SimSgxPlatform.load(sim.state_dir, key_policy="mrsigner")
    dev = SimSgxPlatform.load(sim.state_dir, key_policy="mrsigner", dev_mode=True)
    assert (prod.enclave.isvprodid, dev.enclave.isvprodid) == (PRODUCTION_ISVPRODID, DEV_MODE_ISVPRODID)
    assert prod.sealing_key() != dev.sealing_key()
    with pytest.raises(PlatformError):
        make_provider(sim, platform=dev, dev_mode=True)
    # A development provider forced onto the production enclave's sealing key (same MRENCLAVE): the
    # forged quote of the victim's image still gets another key than the production provider gives.
    forced = SimSgxPlatform.load(sim.state_dir, mrenclave=DEFAULT_SIM_MRENCLAVE)
    production, development = make_provider(sim), make_provider(sim, platform=forced, dev_mode=True)
    assert production._sealing_key == development._sealing_key
    victim = Td(sim, VICTIM)
    k_prod = victim.open(production.handle(KeyRequest(quote=victim.quote())).encrypted_key)
    k_dev = victim.open(development.handle(KeyRequest(quote=victim.quote())).encrypted_key)
    assert k_prod != k_dev


# --- 3. legacy answers are not bound: the client refuses them unless asked; allowed_mrtd closes it -------


def test_sdk_and_get_key_refuse_a_legacy_provider_unless_asked(
    server: ServerThread, sim: SimPlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    host, port = legacy_address(server)
    provider = server.server.provider
    with pytest.raises(LegacyNotAllowed) as err:
        KeyClient.legacy(
            f"{host}:{port}",
            ProviderTrust(mrenclave=provider.identity.mrenclave),
            Verifier(trust_anchor=sim.root_certificate),
            FixedTimeSource(sim, int(time.time())),
            SimTd(sim, mrtd=VICTIM),
        )
    assert err.value.code == "LEGACY_NOT_ALLOWED"
    args = [
        "get-key",
        "--provider",
        f"{host}:{port}",
        "--expect-mrenclave",
        provider.identity.mrenclave.hex(),
        "--trust-anchor",
        str(sim.root_ca_pem_path),
        "--quote-source",
        "sim",
        "--sim-state-dir",
        str(sim.state_dir),
        "--pccs-url",
        "http://127.0.0.1:9",
        "--hex",
    ]
    assert cli_main(args) == 1
    err_text = capsys.readouterr().err
    assert "LEGACY_NOT_ALLOWED" in err_text and "--legacy" in err_text


def test_swapped_quote_on_the_legacy_socket_is_refused_by_allowed_mrtd(sim: SimPlatform) -> None:
    """The host replaces the victim's quote with one of its own image on this machine that carries the
    victim's public key. Without an MRTD allow-list the provider (honestly) seals the attacker image's
    key to the victim; with ``policy.allowed_mrtd`` naming the operator's images it refuses."""
    victim = Td(sim, VICTIM)
    swapped = sim.tdx_quote(report_data=bytes(victim.sk.public_key) + bytes(32), mrtd=ATTACKER)
    attacker_own = Td(sim, ATTACKER)
    with in_process(make_provider(sim)) as open_thread:
        body = legacy_exchange(legacy_address(open_thread), swapped)
        assert body is not None  # the inherent weakness of the original protocol
        got = victim.open(decode_legacy_response(body)[0])
        theirs = legacy_exchange(legacy_address(open_thread), attacker_own.quote())
        assert theirs is not None
        assert got == attacker_own.open(decode_legacy_response(theirs)[0])
    policy = Policy(allowed_mrtd=frozenset({VICTIM.hex()}))
    with in_process(make_provider(sim, policy=policy)) as thread:
        assert legacy_exchange(legacy_address(thread), swapped) is None
        assert legacy_exchange(legacy_address(thread), victim.quote()) is not None
        with http_client(thread) as c:
            r = post_key(c, swapped, scheme=LEGACY_SCHEME)
            assert (r.status_code, error_code(r)) == (403, "POLICY_DENIED")


# --- 4. a scheme switch in transit ------------------------------------------------------------------


class SchemeRewriter(HttpTransport):
    """The host in the middle: rewrites the request's scheme to legacy-sha256."""

    sent: list[str | None]

    def request(
        self, td_quote: bytes, *, key_name: str, key_version: int, scheme: str | None, nonce: bytes | None
    ) -> ProviderAnswer:
        self.sent.append(scheme)
        return super().request(
            td_quote, key_name=key_name, key_version=key_version, scheme=LEGACY_SCHEME, nonce=nonce
        )


def test_scheme_rewritten_in_transit_is_refused_by_the_sdk(server: ServerThread, sim: SimPlatform) -> None:
    address = server.server.http_address
    assert address is not None
    rewriter = SchemeRewriter(f"http://{address[0]}:{address[1]}", timeout=10)
    rewriter.sent = []
    with sdk(server, sim, rewriter) as client, pytest.raises(ResponseBindingInvalid) as err:
        client.get_key()
    assert err.value.code == "RESPONSE_BINDING_INVALID"
    assert (
        rewriter.sent == [DEFAULT_SCHEME] == [HKDF_SCHEME]
    )  # the SDK named its scheme although the caller did not
    with sdk(server, sim) as client:
        assert client.fetch().scheme == HKDF_SCHEME


# --- 5. the start-up identity cannot be relayed from another machine -----------------------------------


class RelayingHost:
    """Gramine's quote path under a hostile host: the enclave's own report is made inside the enclave
    (on this machine), but the quote comes from an enclave of the host's own on another machine, over
    the same report data (the nonce travels in the clear)."""

    def __init__(self, real: SimSgxPlatform, other: SimPlatform, *, relay_from_start: bool = True) -> None:
        self.real, self.other, self.relaying = real, other, relay_from_start
        self.hosts_enclave = SgxEnclaveIdentity(
            mrenclave=hashlib.sha256(b"host's own").digest(), mrsigner=bytes(32)
        )

    def report(self, report_data: bytes) -> bytes:
        return self.real.report(report_data)

    def quote(self, report_data: bytes) -> bytes:
        if self.relaying:
            return self.other.sgx_quote(report_data, enclave=self.hosts_enclave)
        return self.real.quote(report_data)

    def sealing_key(self) -> bytes:
        return self.real.sealing_key()


def test_start_up_quote_relayed_from_another_machine_is_refused(
    sim: SimPlatform, other_sim: SimPlatform
) -> None:
    host = RelayingHost(SimSgxPlatform.load(sim.state_dir), other_sim)
    with pytest.raises(PlatformError) as err:
        make_provider(sim, platform=host)
    assert err.value.code == "PLATFORM_ERROR" and "mrenclave" in err.value.message
    # Development mode does not verify the platform, yet it does not adopt a relayed identity either.
    with pytest.raises(PlatformError):
        make_provider(sim, platform=host, dev_mode=True)


def test_per_request_quote_relayed_from_another_machine_is_refused_over_http(
    sim: SimPlatform, other_sim: SimPlatform
) -> None:
    host = RelayingHost(SimSgxPlatform.load(sim.state_dir), other_sim, relay_from_start=False)
    provider = make_provider(sim, platform=host)
    assert provider.identity.pck.ppid == sim.ppid
    host.relaying = True
    with in_process(provider) as thread, http_client(thread) as c:
        r = post_key(c, Td(sim, VICTIM).quote())
        assert (r.status_code, error_code(r)) == (503, "PLATFORM_ERROR")
        assert "not of this enclave" in r.json()["error"]["message"]


# --- 6. a clock set back -------------------------------------------------------------------------------


class HostCollateral:
    """The host's collateral source: serves whatever collateral it chooses (here: fresh or old)."""

    def __init__(self, sim: SimPlatform) -> None:
        self.sim = sim
        self.issued_at = int(time.time())
        self.scenario = Scenario.UP_TO_DATE

    def get(self, tee: str, fmspc: bytes, ca: str) -> Collateral:
        return self.sim.collateral(tee, now=self.issued_at, scenario=self.scenario)


def test_clock_set_back_to_revive_old_collateral_is_refused(sim: SimPlatform) -> None:
    """Collateral fetched a month ago has expired; the PCK has since been revoked. The host serves the
    old collateral (no revocation) and sets the clock back into its validity: refused."""
    now = [float(int(time.time()))]
    source = HostCollateral(sim)
    provider = make_provider(sim, source=source, clock=lambda: now[0])
    month_ago = int(now[0]) - 31 * DAY
    with in_process(provider) as thread, http_client(thread) as c:
        td = Td(sim, VICTIM)
        assert len(key_of(td, post_key(c, td.quote()))) == 32  # fresh collateral accepted now
        source.scenario = Scenario.REVOKED_PCK
        r = post_key(c, td.quote())
        assert (r.status_code, error_code(r)) == (400, "PCK_REVOKED")
        source.issued_at, source.scenario = month_ago, Scenario.UP_TO_DATE
        r = post_key(c, td.quote())
        assert (r.status_code, error_code(r)) == (400, "COLLATERAL_EXPIRED")
        now[0] = month_ago + DAY  # the host sets the clock back into the old collateral's validity
        r = post_key(c, td.quote())
        assert (r.status_code, error_code(r)) == (503, "CLOCK_BEHIND_FLOOR")
        assert c.get("/v1/nonce").status_code == 503


def test_clock_set_back_to_keep_a_freshness_token_valid_is_refused(sim: SimPlatform) -> None:
    now = [float(int(time.time()))]
    provider = make_provider(sim, policy=Policy(freshness_required=True), clock=lambda: now[0])
    with in_process(provider) as thread, http_client(thread) as c:
        td = Td(sim, VICTIM)
        token = c.get("/v1/nonce").json()["nonce"]
        bound = td.quote(rd_tail=hashlib.sha256(base64.b64decode(token)).digest())
        assert len(key_of(td, post_key(c, bound, nonce=token))) == 32
        now[0] += 3600  # an hour later the token has expired ...
        r = post_key(c, bound, nonce=token)
        assert (r.status_code, error_code(r)) == (403, "FRESHNESS_INVALID")
        now[0] -= 3590  # ... and the host sets the clock back to revive it
        r = post_key(c, bound, nonce=token)
        assert (r.status_code, error_code(r)) == (503, "CLOCK_BEHIND_FLOOR")


def test_clock_before_the_build_time_and_collateral_before_a_tcb_recovery(sim: SimPlatform) -> None:
    provider = make_provider(sim, clock=lambda: float(BUILD_TIME - 1))
    with in_process(provider) as thread, http_client(thread) as c:
        r = post_key(c, Td(sim, VICTIM).quote())
        assert (r.status_code, error_code(r)) == (503, "CLOCK_BEHIND_FLOOR")
    strict = make_provider(sim, policy=Policy(min_tcb_evaluation_data_number=18))  # the simulator's is 17
    with in_process(strict) as thread, http_client(thread) as c:
        r = post_key(c, Td(sim, VICTIM).quote())
        assert (r.status_code, error_code(r)) == (503, "COLLATERAL_OUTDATED")
    assert Policy.from_mapping({"min_tcb_evaluation_data_number": 17}).digest() != Policy().digest()


def test_time_floor_rises_with_collateral_and_tolerates_a_small_step_back() -> None:
    floor = TimeFloor(1000)
    assert floor.check(2000) == 2000
    assert floor.check(1996) == 1996  # NTP may step back a few seconds
    with pytest.raises(ClockBehindFloor):
        floor.check(1990)
    floor.raise_to(5000)
    with pytest.raises(ClockBehindFloor) as err:
        floor.check(4999)
    assert err.value.code == "CLOCK_BEHIND_FLOOR" and floor.value == 5000


# --- 8. hostile input gets its error code --------------------------------------------------------------


def test_key_name_with_a_lone_surrogate_is_bad_request(server: ServerThread, sim: SimPlatform) -> None:
    with http_client(server) as c:
        body = json.dumps({"quote": b64(Td(sim, VICTIM).quote()), "key_name": "\ud800"})  # "\\ud800"
        r = c.post("/v1/keys", content=body.encode(), headers={"Content-Type": "application/json"})
        assert (r.status_code, error_code(r)) == (400, "BAD_REQUEST")


@pytest.mark.parametrize(("length", "code"), [("²", "BAD_REQUEST"), ("9" * 5000, "REQUEST_TOO_LARGE")])
def test_content_length_that_isdigit_accepts_but_int_refuses(length: str, code: str) -> None:
    """h11 already refuses these on the wire; ``read_body`` must not rely on it (other servers)."""

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = {"type": "http", "method": "POST", "headers": [(b"content-length", length.encode("latin-1"))]}
    with pytest.raises(ProviderError) as err:
        asyncio.run(read_body(Request(scope, receive), 1024, 5.0))
    assert err.value.code == code


def deep(n: int) -> str:
    return "[" * n + "]" * n


def test_hostile_collateral_is_collateral_malformed(sim: SimPlatform) -> None:
    good = sim.collateral("tdx", now=int(time.time()))
    for text in (
        deep(100_000),
        good.to_json().replace('"pck_crl_issuer_chain": "', '"pck_crl_issuer_chain": "\\ud800', 1),
    ):
        with pytest.raises(ProviderError) as err:
            Collateral.from_json(text)
        assert err.value.code == "COLLATERAL_MALFORMED"
    # The PCCS client's reader of signed documents (it keeps Intel's exact bytes) holds too.
    body = b'{"tcbInfo":' + deep(100_000).encode() + b',"signature":"00"}'
    with pytest.raises(ProviderError) as err:
        split_signed_document(body, "tcbInfo")
    assert err.value.code == "COLLATERAL_MALFORMED"

    class HostilePccs:
        def get(self, tee: str, fmspc: bytes, ca: str) -> Collateral:
            c = sim.collateral(tee, now=int(time.time()))
            return Collateral(
                **{**vars_of(c), "tcb_info": ('{"a":' * 100_000 + "1" + "}" * 100_000).encode()}
            )

    with in_process(make_provider(sim, source=HostilePccs())) as thread, http_client(thread) as c:
        r = post_key(c, Td(sim, VICTIM).quote())
        assert (r.status_code, error_code(r)) == (400, "COLLATERAL_MALFORMED")


def vars_of(c: Collateral) -> dict[str, bytes]:
    return {name: getattr(c, name) for name in Collateral.__dataclass_fields__}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (b"dev_mode = \xff\n", "UTF-8"),
        (f"[server]\nmax_connections = {deep(5000)}\n".encode(), "deeply"),
        (f"[server]\nmax_connections = {'9' * 5000}\n".encode(), "unreadable"),
        (b'[server]\nhttp_listen = "127.0.0.1:\xc2\xb2"\n', "host:port"),
        (f'[server]\nhttp_listen = "127.0.0.1:{"1" * 5000}"\n'.encode(), "host:port"),
        (b"[server]\nio_timeout = nan\n", "finite"),
        (b"[server]\nio_timeout = inf\n", "finite"),
        (b"[server]\nrate_limit_per_second = -inf\n", "finite"),
    ],
)
def test_hostile_configuration_is_config_invalid(tmp_path: Path, text: bytes, needle: str) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(text + b'[collateral]\nfile = "c.json"\n')
    with pytest.raises(ConfigError) as err:
        Config.load(path)
    assert err.value.code == "CONFIG_INVALID" and needle in err.value.message


def test_hostile_overrides_are_config_invalid() -> None:
    for text in (f"server.max_connections={'9' * 5000}", f"server.max_connections={deep(5000)}"):
        with pytest.raises(ConfigError):
            parse_override(text)


def test_open_platform_refuses_dev_mode_with_the_mrsigner_key(sim: SimPlatform) -> None:
    """Behind the configuration check: the platform layer does not open that key in dev mode either."""
    config = PlatformConfig(kind="sim", sealing_key_policy="mrsigner", sim_state_dir=str(sim.state_dir))
    assert (
        open_platform(config).sealing_key()
        == SimSgxPlatform.load(sim.state_dir, key_policy="mrsigner").sealing_key()
    )
    with pytest.raises(PlatformError):
        open_platform(config, dev_mode=True)


@pytest.mark.parametrize("value", ["²", "٣", "9" * 5000])
def test_numbers_that_isdigit_accepts_but_int_refuses_are_typed_errors(value: str) -> None:
    """Every ``isdigit()`` before ``int()`` in the project takes ASCII digits of bounded length only."""
    with pytest.raises(ConfigError):
        qgs_port_from_conf(f"port = {value}\n")
    with pytest.raises(ConfigError):
        sim_pccs_listen(f"127.0.0.1:{value}")
    with pytest.raises(ConfigError):
        Config.from_mapping({"server": {"http_listen": f"127.0.0.1:{value}"}, "collateral": {"file": "c"}})
