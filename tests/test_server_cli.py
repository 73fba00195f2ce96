"""`serve`: flags as dotted overrides, platform auto-detection, start-up failures (exit 1 with the code),
and RestartRequired ending the process with status 1 (at start-up, and during a request in a real
server process: the original's "exit so the supervisor restarts the enclave")."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from sealing_key_provider.cli import build_parser, main
from sealing_key_provider.cli import serve as serve_cli
from sealing_key_provider.config import Config
from sealing_key_provider.errors import PlatformError, RestartRequired
from sealing_key_provider.sim import SimPlatform, default_state_dir
from tests.test_server_support import (
    ROOT,
    Td,
    b64,
    free_port,
    legacy_exchange,
    serve_config,
    write_collateral,
)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("platform"))


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_flags_become_dotted_overrides() -> None:
    args = parse(
        "--platform=sim",
        "--state-dir=/s",
        "--legacy-listen=",
        "--http-listen=0.0.0.0:9000",
        "--collateral=/c.json",
        "--trust-anchor=/r.pem",
        "--dev-mode",
        "--log-format=json",
        "--log-level=debug",
    )
    assert serve_cli.overrides_from_args(args) == {
        "platform.kind": "sim",
        "platform.sim_state_dir": "/s",
        "server.legacy_listen": "",
        "server.http_listen": "0.0.0.0:9000",
        "collateral.file": "/c.json",
        "collateral.pccs_url": None,
        "collateral.trust_anchor": "/r.pem",
        "dev_mode": True,
        "logging.format": "json",
        "logging.level": "debug",
    }
    config, _ = serve_cli.load_config(args)
    assert config.server.legacy_listen == "" and config.collateral.file == "/c.json" and config.dev_mode
    assert config.collateral.pccs_url is None and config.logging.format == "json"
    with pytest.raises(SystemExit):
        parse("--pccs-url=https://pccs", "--collateral=/c.json")  # one source only


def test_flags_override_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nhttp_listen = "127.0.0.1:1"\n[collateral]\nfile = "/f.json"\n')
    monkeypatch.setattr(serve_cli, "GRAMINE_QUOTE_FILE", tmp_path / "absent")
    config, note = serve_cli.load_config(
        parse("--config", str(path), "--pccs-url", "https://pccs.local:8081", "--platform", "sim")
    )
    assert config.collateral.pccs_url == "https://pccs.local:8081" and config.collateral.file is None
    assert config.server.http_listen == "127.0.0.1:1"
    assert config.platform.kind == "sim" and config.platform.sim_state_dir == str(default_state_dir())
    assert note is None


def test_no_platform_outside_an_enclave_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`serve` with no arguments on a machine without Gramine creates nothing and names both choices."""
    monkeypatch.setattr(serve_cli, "GRAMINE_QUOTE_FILE", tmp_path / "absent")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert main(["serve"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("sealing-key-provider serve: error: no platform chosen")
    assert "--platform sim" in lines[0] and "Gramine" in lines[0] and "--help" in lines[1]
    assert not (tmp_path / "data").exists()


def test_platform_auto_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quote = tmp_path / "quote"
    quote.write_bytes(b"")
    monkeypatch.setattr(serve_cli, "GRAMINE_QUOTE_FILE", quote)
    config, note = serve_cli.load_config(parse("--collateral=/c.json"))
    assert config.platform.kind == "gramine" and note is not None and "exists" in note
    path = tmp_path / "c.toml"
    path.write_text('[platform]\nkind = "sim"\nsim_state_dir = "/x"\n[collateral]\nfile = "/f"\n')
    config, note = serve_cli.load_config(parse("--config", str(path)))
    assert config.platform.kind == "sim" and note is None  # the file decides


def test_startup_errors_exit_1_with_the_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    assert serve_cli.run(parse("--config", str(tmp_path / "missing.toml"), "--platform=sim")) == 1
    assert capsys.readouterr().err.startswith("CONFIG_INVALID: configuration file")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nio_timout = 1\n")
    assert serve_cli.run(parse("--config", str(bad), "--platform=sim")) == 1
    assert capsys.readouterr().err.startswith("CONFIG_INVALID: unknown key server.io_timout")
    # A platform that cannot attest: Gramine's files are absent here.
    assert serve_cli.run(parse("--platform=gramine", f"--collateral={bad}")) == 1
    err = capsys.readouterr().err
    assert "start-up failed code=" in err


def test_restart_required_at_startup_exits_1(
    sim: SimPlatform,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    def denied(config: Config, platform: object, **kw: object) -> None:
        raise RestartRequired("permission denied on /dev/attestation/quote (Permission denied)")

    monkeypatch.setattr(serve_cli, "build_provider", denied)
    collateral = write_collateral(sim, tmp_path / "c.json")
    code = serve_cli.run(
        parse("--platform=sim", f"--state-dir={sim.state_dir}", f"--collateral={collateral}")
    )
    assert code == 1
    assert "permission denied; exiting so the supervisor restarts the enclave code=RESTART_REQUIRED" in (
        capsys.readouterr().err
    )


#: A server process whose platform refuses attestation once requests arrive (a stub platform standing in
#: for Gramine's EACCES, which root cannot provoke with chmod).
RESTART_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from sealing_key_provider.collateral import FileSource
    from sealing_key_provider.config import Config
    from sealing_key_provider.errors import RestartRequired
    from sealing_key_provider.sim import SimSgxPlatform
    from sealing_key_provider.server import ProviderServer
    from sealing_key_provider.server.logs import configure_logging
    from sealing_key_provider.sim import SimPlatform
    from tests.test_server_support import make_provider

    class Denied:
        def __init__(self, inner):
            self.inner = inner
            self.started = False
        def report(self, report_data):
            return self.inner.report(report_data)
        def quote(self, report_data):
            # The start-up quote (over a nonce) and readiness quotes (over zeros) pass; requests
            # (bound to a hash of their answer) are refused.
            if self.started and any(report_data):
                raise RestartRequired("permission denied on /dev/attestation/quote (Permission denied)")
            self.started = True
            return self.inner.quote(report_data)
        def sealing_key(self):
            return self.inner.sealing_key()

    config = Config.load(sys.argv[1])
    configure_logging(config.logging)
    sim = SimPlatform.load(config.platform.sim_state_dir)
    platform = Denied(SimSgxPlatform.load(sim.state_dir))
    provider = make_provider(sim, platform=platform, source=FileSource(config.collateral.file))
    sys.exit(asyncio.run(ProviderServer(provider, config).serve()))
    """
)


@pytest.mark.parametrize("protocol", ["legacy", "http"])
def test_restart_required_during_a_request_exits_1(sim: SimPlatform, tmp_path: Path, protocol: str) -> None:
    collateral = write_collateral(sim, tmp_path / "c.json")
    config, legacy, http = serve_config(tmp_path, sim, collateral)
    script = tmp_path / "restart.py"
    script.write_text(RESTART_SCRIPT)
    log_path = tmp_path / "restart.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(config)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://{http[0]}:{http[1]}"
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
            quote = Td(sim).quote()
            if protocol == "legacy":
                assert legacy_exchange(legacy, quote) is None
            else:
                r = httpx.post(url + "/v1/keys", json={"quote": b64(quote)})
                assert r.status_code == 503 and r.json()["error"]["code"] == "RESTART_REQUIRED"
            assert proc.wait(30) == 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log_path.read_text()
    assert "permission denied; exiting so the supervisor restarts the enclave code=RESTART_REQUIRED" in text


def test_sim_state_is_created_on_first_use(tmp_path: Path, restore_logging: None) -> None:
    """`serve` on a fresh machine: the simulated platform is initialised in the state directory."""
    from sealing_key_provider.server.assembly import build_provider

    state = tmp_path / "fresh"
    collateral = tmp_path / "c.json"
    args = parse(
        "--platform=sim",
        f"--state-dir={state}",
        f"--collateral={collateral}",
        f"--http-listen=127.0.0.1:{free_port()}",
        f"--trust-anchor={state / 'root-ca.pem'}",
    )
    config, _ = serve_cli.load_config(args)
    sim = SimPlatform.init(tmp_path / "other")  # collateral for the file source (not verified here)
    write_collateral(sim, collateral)
    provider = build_provider(config, serve_cli.open_configured_platform(config))
    assert (state / "root-ca.pem").exists()
    assert json.loads(json.dumps(provider.info()))["ppid"] == SimPlatform.load(state).ppid.hex()


def test_a_trust_anchor_of_another_platform_stops_start_up(sim: SimPlatform, tmp_path: Path) -> None:
    """The provider proves its own platform at start-up: the wrong root (here: the Intel root for a
    simulated platform, or another state directory's) fails there, not at the first TD request."""
    from sealing_key_provider.server.assembly import build_provider

    collateral = write_collateral(sim, tmp_path / "c.json")
    other = SimPlatform.init(tmp_path / "other")
    for anchor in (None, other.root_ca_pem_path):
        flags = ["--platform=sim", f"--state-dir={sim.state_dir}", f"--collateral={collateral}"]
        if anchor is not None:
            flags.append(f"--trust-anchor={anchor}")
        config, _ = serve_cli.load_config(parse(*flags))
        with pytest.raises(PlatformError, match="own quote does not prove its platform") as err:
            build_provider(config, serve_cli.open_configured_platform(config))
        assert "PCK_CHAIN_INVALID" in err.value.message and "root-ca.pem of the same state directory" in (
            err.value.message
        )
