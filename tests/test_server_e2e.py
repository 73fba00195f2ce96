"""`sealing-key-provider serve` end to end: a real subprocess on the simulated platform in PRODUCTION
mode, real loopback sockets, both protocols, collateral from a file, the simulator's root as anchor.
One server per module (plus one restart), shut down with SIGTERM at the end (exit status 0)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sealing_key_provider.binding import RequestContext, report_data_v1
from sealing_key_provider.dcap import Verifier, parse_quote
from sealing_key_provider.keys import legacy_kdf
from sealing_key_provider.sim import DEFAULT_SIM_MRENCLAVE, SimPlatform, SimSgxPlatform
from tests.test_server_support import (
    ServeProcess,
    Td,
    error_code,
    key_of,
    legacy_exchange,
    post_key,
    rtmrs_with,
    serve_config,
    write_collateral,
)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("platform-a"))


@pytest.fixture(scope="module")
def other_sim(sim: SimPlatform, tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    """A second machine under the same simulated Intel CAs: verifies, but other PPID and QE ID."""
    return SimPlatform.init(tmp_path_factory.mktemp("platform-b"), share_ca_with=sim)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def config_path(sim: SimPlatform, workdir: Path) -> tuple[Path, tuple[str, int], tuple[str, int]]:
    collateral = write_collateral(sim, workdir / "collateral.json")
    # DEBUG level: the final test checks that no secret reached the log at the most verbose level.
    # The rate limit is tested in-process; here one test address makes many requests quickly.
    return serve_config(
        workdir,
        sim,
        collateral,
        server={"rate_limit_per_second": 1000.0, "rate_limit_burst": 1000},
        logging={"level": "debug", "format": "json"},
    )


@pytest.fixture(scope="module")
def server(
    config_path: tuple[Path, tuple[str, int], tuple[str, int]], workdir: Path
) -> Iterator[ServeProcess]:
    path, legacy, http = config_path
    proc = ServeProcess(["--config", str(path)], workdir / "serve.log", legacy, http).wait_ready()
    yield proc
    assert proc.stop() == 0, proc.log_text()


@pytest.fixture(scope="module")
def client(server: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        yield c


#: Every secret the module saw, checked against the server's log at the end.
SECRETS: list[bytes] = []


def remember(td: Td, key: bytes) -> bytes:
    SECRETS.extend([key, bytes(td.sk)])
    return key


def test_listening_lines_and_platform_note(server: ServeProcess) -> None:
    text = server.log_text()
    assert f"listening on tcp://127.0.0.1:{server.legacy[1]}" in text
    assert f"listening on http://127.0.0.1:{server.http[1]}" in text
    # ... and printed on stdout for scripts, apart from the log.
    printed = server.stdout_text().splitlines()
    assert printed[:2] == [f"listening legacy 127.0.0.1:{server.legacy[1]}", f"listening http {server.url}"]
    # What a TD pins is logged at start-up (the simulator prints it nowhere else).
    assert f"provider identity mrenclave={DEFAULT_SIM_MRENCLAVE.hex()} mrsigner=" in text
    # Every log line is one JSON object (logging.format = "json"); serve's stdout (the bound addresses
    # and, on the simulator, a get-key command) shares the file here and is not log.
    stdout = (
        f"listening legacy 127.0.0.1:{server.legacy[1]}",
        f"listening http http://127.0.0.1:{server.http[1]}",
    )
    for line in text.splitlines():
        if line in stdout or line.startswith(("get a key for a simulated TD", "  ")):
            continue
        obj = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(obj)


def test_td_gets_a_stable_key_it_can_decrypt(client: httpx.Client, sim: SimPlatform) -> None:
    td = Td(sim)
    quote = td.quote()
    r = post_key(client, quote)
    k1 = remember(td, key_of(td, r))
    body = r.json()
    assert len(k1) == 32 and body["dev_mode"] is False and body["tcb_status"] == "UpToDate"
    assert body["scheme"] == "hkdf-sha256-v1"
    info = client.get("/v1/info").json()
    assert body["policy_digest"] == info["policy_digest"]
    # The provider quote binds SHA-256(encrypted key) || SHA-256(request context).
    pq = parse_quote(base64.b64decode(body["provider_quote"]))
    context = RequestContext.for_quote(
        quote,
        scheme=body["scheme"],
        key_name=body["key_name"],
        key_version=body["key_version"],
        policy_digest=bytes.fromhex(body["policy_digest"]),
        measurements=tuple(body["measurements"]),
        tcb_status=body["tcb_status"],
        advisory_ids=tuple(body["advisory_ids"]),
        dev_mode=body["dev_mode"],
    )
    assert pq.enclave_report.report_data == report_data_v1(base64.b64decode(body["encrypted_key"]), context)
    assert pq.enclave_report.mrenclave == DEFAULT_SIM_MRENCLAVE
    # Same image, new key pair and quote: the same key.
    td2 = Td(sim)
    assert remember(td2, key_of(td2, post_key(client, td2.quote()))) == k1


def test_inputs_that_change_the_key(client: httpx.Client, sim: SimPlatform) -> None:
    def get(td: Td, **fields: object) -> bytes:
        return remember(td, key_of(td, post_key(client, td.quote(), **fields)))

    base = get(Td(sim))
    variants = {
        "mrtd": get(Td(sim, mrtd=b"\x12" * 48)),
        "rtmr0": get(Td(sim, rtmrs=rtmrs_with(0))),
        "rtmr1": get(Td(sim, rtmrs=rtmrs_with(1))),
        "rtmr2": get(Td(sim, rtmrs=rtmrs_with(2))),
        "key_name": get(Td(sim), key_name="app/db"),
        "key_version": get(Td(sim), key_version=2),
        "scheme": get(Td(sim), scheme="legacy-sha256"),
    }
    assert len({base, *variants.values()}) == len(variants) + 1
    # RTMR3 is not in the default hkdf selection (the guest extends it at run time).
    assert get(Td(sim, rtmrs=rtmrs_with(3))) == base


def test_legacy_client_of_the_original(server: ServeProcess, sim: SimPlatform) -> None:
    td = Td(sim)
    body = legacy_exchange(server.legacy, td.quote())
    assert body is not None
    # Compact JSON, keys in this order, exactly as serde_json wrote it.
    obj = json.loads(body)
    assert list(obj) == ["encrypted_key", "provider_quote"]
    ek, pq = bytes(obj["encrypted_key"]), bytes(obj["provider_quote"])
    assert (
        body
        == json.dumps({"encrypted_key": list(ek), "provider_quote": list(pq)}, separators=(",", ":")).encode()
    )
    assert len(ek) == 80
    assert hashlib.sha256(ek).digest() == pq[368:400] and pq[400:432] == bytes(32)
    now = int(time.time())
    verified = Verifier(trust_anchor=sim.root_certificate).verify(pq, sim.collateral("sgx", now=now), now)
    assert verified.quote.enclave_report.mrenclave == DEFAULT_SIM_MRENCLAVE
    key = remember(td, td.open(ek))
    sealing = SimSgxPlatform.load(sim.state_dir).sealing_key()
    SECRETS.append(sealing)
    assert key == legacy_kdf(sealing, td.mrtd + b"".join(td.rtmrs))
    # The legacy scheme binds RTMR3, as the original did.
    td3 = Td(sim, rtmrs=rtmrs_with(3))
    body3 = legacy_exchange(server.legacy, td3.quote())
    assert body3 is not None
    assert remember(td3, td3.open(bytes(json.loads(body3)["encrypted_key"]))) != key


def test_refusals_over_both_protocols(
    client: httpx.Client, server: ServeProcess, sim: SimPlatform, other_sim: SimPlatform
) -> None:
    td = Td(sim)
    tampered = bytearray(td.quote())
    tampered[200] ^= 1  # inside MRTD: the signed body no longer matches its signature
    cases = {
        "QUOTE_SIGNATURE_INVALID": bytes(tampered),
        "TD_DEBUG": td.quote(debug=True),
        "PLATFORM_MISMATCH": Td(other_sim).quote(),
        "PUBLIC_KEY_INVALID": sim.tdx_quote(report_data=bytes(64), mrtd=b"\x11" * 48),
    }
    statuses = {
        "QUOTE_SIGNATURE_INVALID": 400,
        "TD_DEBUG": 403,
        "PLATFORM_MISMATCH": 403,
        "PUBLIC_KEY_INVALID": 400,
    }
    for code, quote in cases.items():
        r = post_key(client, quote)
        assert (r.status_code, error_code(r)) == (statuses[code], code), r.text
        assert legacy_exchange(server.legacy, quote) is None, code  # closed, nothing written
    log = server.log_text()
    for code in cases:
        assert re.search(rf'"protocol": "legacy", "code": "{code}"', log), code


def test_nonce_flow(client: httpx.Client, sim: SimPlatform) -> None:
    n = client.get("/v1/nonce").json()
    assert set(n) == {"nonce", "expires_at"} and n["expires_at"] > time.time()
    nonce = base64.b64decode(n["nonce"])
    td = Td(sim)
    bound = td.quote(rd_tail=hashlib.sha256(nonce).digest())
    remember(td, key_of(td, post_key(client, bound, nonce=n["nonce"])))
    forged = bytearray(nonce)
    forged[-1] ^= 1
    r = post_key(client, bound, nonce=base64.b64encode(bytes(forged)).decode())
    assert (r.status_code, error_code(r)) == (403, "FRESHNESS_INVALID")
    r = post_key(client, td.quote(), nonce=n["nonce"])  # a valid token not bound in the quote
    assert error_code(r) == "FRESHNESS_INVALID"


def test_metrics_info_openapi(client: httpx.Client) -> None:
    text = client.get("/metrics").text
    assert re.search(r'skp_requests_total\{code="OK",protocol="http"\} [1-9]', text)
    assert re.search(r'skp_requests_total\{code="PLATFORM_MISMATCH",protocol="legacy"\} 1\.0', text)
    assert "skp_quote_generation_seconds_count" in text and "skp_requests_in_flight" in text
    info = client.get("/v1/info").json()
    assert {"mrenclave", "mrsigner", "ppid", "fmspc", "policy_digest", "version"} <= set(info)
    spec = client.get("/openapi.json").json()
    assert {"/v1/keys", "/v1/info", "/v1/nonce", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    assert client.get("/healthz").json() == {"status": "ok"}


def test_same_key_after_restart(
    server: ServeProcess,
    client: httpx.Client,
    sim: SimPlatform,
    config_path: tuple[Path, tuple[str, int], tuple[str, int]],
    workdir: Path,
) -> None:
    td = Td(sim)
    before = remember(td, key_of(td, post_key(client, td.quote())))
    legacy_before = legacy_exchange(server.legacy, td.quote())
    assert legacy_before is not None
    assert server.stop() == 0  # SIGTERM: clean shutdown, exit 0
    assert "received SIGTERM" in server.log_text()
    _, legacy, http = config_path
    # The restarted provider is configured by flags alone (no file): the same state directory, so the
    # same simulated CPU and sealing key.
    flags = [
        "--platform=sim",
        f"--state-dir={sim.state_dir}",
        f"--collateral={workdir / 'collateral.json'}",
        f"--trust-anchor={sim.root_ca_pem_path}",
        f"--legacy-listen={legacy[0]}:{legacy[1]}",
        f"--http-listen={http[0]}:{http[1]}",
        "--log-format=json",
        "--log-level=debug",
    ]
    restarted = ServeProcess(flags, workdir / "serve.log", legacy, http).wait_ready()
    try:
        with httpx.Client(base_url=restarted.url, timeout=10.0) as c2:
            td2 = Td(sim)
            assert remember(td2, key_of(td2, post_key(c2, td2.quote()))) == before
        legacy_after = legacy_exchange(restarted.legacy, td.quote())
        assert legacy_after is not None
        k_before = td.open(bytes(json.loads(legacy_before)["encrypted_key"]))
        assert td.open(bytes(json.loads(legacy_after)["encrypted_key"])) == k_before
    finally:
        assert restarted.stop() == 0
    # The module fixture stops `server` again at teardown; point it at the restarted process's status.
    server.proc = restarted.proc


def test_no_secret_in_the_debug_log(server: ServeProcess) -> None:
    text = server.log_text()
    assert '"level": "debug"' in text and '"event": "granted"' in text
    assert SECRETS
    for secret in SECRETS:
        for form in forms(secret):
            assert form not in text


def forms(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        repr(secret),
        json.dumps(list(secret))[1:-1],
        json.dumps(list(secret), separators=(",", ":"))[1:-1],
    ]
