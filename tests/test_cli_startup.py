"""What each command loads, the client-only install, and the simulator's first-try path.

Import sets are read from ``sys.modules`` in a fresh interpreter. A client-only installation (no
``[server]`` extra) is imitated by an import hook that refuses the provider's web stack, so the same
checks hold for ``pip install gramine-sealing-key-provider`` without the extra.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from sealing_key_provider.sim import SimPlatform

from .client_helpers import ServedProvider, start_provider, write_collateral_bundle

ROOT = Path(__file__).resolve().parent.parent
SERVER_STACK = ("fastapi", "uvicorn", "starlette", "prometheus_client")

#: Runs the CLI with argv from the command line in a fresh interpreter, then prints its exit status and
#: the top-level names of every module loaded. With BLOCK set, the server stack cannot be imported, as
#: in a client-only installation.
PROBE = """
import importlib.abc, json, os, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in os.environ.get("BLOCK", "").split(","):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
from sealing_key_provider.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.__stdout__)
"""


def probe(*argv: str, block: bool = False) -> tuple[int, list[str], str]:
    env = {**os.environ, "BLOCK": ",".join(SERVER_STACK) if block else ""}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return int(report["code"]), list(report["modules"]), proc.stderr


def test_version_and_help_import_no_command() -> None:
    for argv in (["--version"], ["--help"]):
        code, modules, _ = probe(*argv)
        assert code == 0
        loaded_commands = [m for m in modules if m.startswith("sealing_key_provider.cli.")]
        assert set(loaded_commands) <= {
            "sealing_key_provider.cli.common",
            "sealing_key_provider.cli.dispatch",
        }
        for heavy in ("cryptography", "httpx", "nacl", *SERVER_STACK):
            assert heavy not in modules, (argv, heavy)


def test_quote_inspect_loads_no_network_client() -> None:
    quote = ROOT / "tests" / "data" / "dcap" / "tdx-v4-phala-1" / "quote.bin"
    code, modules, _ = probe("quote", "inspect", str(quote))
    assert code == 0
    assert "httpx" not in modules and not set(SERVER_STACK) & set(modules)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProvider]:
    server = start_provider(tmp_path_factory.mktemp("served-startup"))
    try:
        yield server
    finally:
        server.stop()


def test_get_key_imports_no_server_code_and_runs_without_the_server_extra(
    served: ServedProvider, tmp_path: Path
) -> None:
    out = tmp_path / "key.bin"
    argv = [
        "get-key",
        "--provider",
        served.http_url,
        "--collateral",
        str(served.collateral),
        "--trust-anchor",
        str(served.sim.root_ca_pem_path),
        "--quote-source",
        "sim",
        "--sim-state-dir",
        str(served.sim.state_dir),
        "--expect-mrenclave",
        served.mrenclave,
        "--out",
        str(out),
    ]
    code, modules, err = probe(*argv, block=True)
    assert code == 0, err
    assert len(out.read_bytes()) == 32
    for name in SERVER_STACK:
        assert name not in modules
    assert not [
        m for m in modules if m.startswith(("sealing_key_provider.server", "sealing_key_provider.provider"))
    ]


def test_serve_without_the_server_extra_says_which_extra(tmp_path: Path) -> None:
    code, _, err = probe("serve", "--platform", "sim", "--state-dir", str(tmp_path / "s"), block=True)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 2, err
    assert lines[0].startswith("sealing-key-provider serve: error: serve needs ")
    assert "pip install 'gramine-sealing-key-provider[server]'" in lines[0]
    assert not (tmp_path / "s").exists()


def test_the_plain_install_is_the_td_side() -> None:
    """``pip install gramine-sealing-key-provider`` brings the TD side's dependencies only."""
    requires = metadata.requires("gramine-sealing-key-provider") or []
    plain = {r.split("=")[0].split(";")[0].strip().lower() for r in requires if "extra ==" not in r}
    server = {r.split("=")[0].strip().lower() for r in requires if 'extra == "server"' in r}
    assert plain == {"cryptography", "pynacl", "httpx"}
    assert server == {"fastapi", "uvicorn", "prometheus-client"}


# --- serve on port 0 and the printed get-key command --------------------------------------------------


def _read_announcement(proc: subprocess.Popen[str], deadline: float) -> list[str]:
    """stdout lines up to and including the get-key command (serve prints them once it is ready)."""
    assert proc.stdout is not None
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("  sealing-key-provider get-key "):
            return lines
    raise AssertionError(f"serve printed {lines!r} and then stopped")


def test_serve_on_port_0_prints_its_ports_and_a_get_key_command_that_works_first_time(tmp_path: Path) -> None:
    sim = SimPlatform.init(tmp_path / "state")
    collateral = write_collateral_bundle(sim, tmp_path / "collateral.json", int(time.time()))
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sealing_key_provider.cli",
            "serve",
            "--platform",
            "sim",
            "--state-dir",
            str(sim.state_dir),
            "--collateral",
            str(collateral),
            "--trust-anchor",
            str(sim.root_ca_pem_path),
            "--http-listen",
            "127.0.0.1:0",
            "--legacy-listen",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        lines = _read_announcement(proc, time.monotonic() + 60)
        legacy = next(line for line in lines if line.startswith("listening legacy "))
        http = next(line for line in lines if line.startswith("listening http "))
        assert not legacy.endswith(":0") and not http.endswith(":0")
        command = shlex.split(lines[-1])
        assert command[:2] == ["sealing-key-provider", "get-key"]
        assert command[command.index("--provider") + 1] == http.removeprefix("listening http ")
        assert command[command.index("--sim-state-dir") + 1] == str(sim.state_dir)
        assert command[command.index("--trust-anchor") + 1] == str(sim.root_ca_pem_path)
        out = tmp_path / "key.bin"
        command[command.index("--out") + 1] = str(out)
        got = subprocess.run(
            [sys.executable, "-m", "sealing_key_provider.cli", *command[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert got.returncode == 0, got.stderr
        assert len(out.read_bytes()) == 32
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "listening on http://127.0.0.1:" in text and "listening on http://127.0.0.1:0 " not in text


def test_plain_http_clients_load_no_ca_bundle_and_trust_nothing() -> None:
    """get-key's two plain-HTTP clients skip reading the CA bundle; TLS asked of them would fail closed."""
    import ssl

    from sealing_key_provider.collateral.pccs_client import tls_setting

    context = tls_setting("http://127.0.0.1:8081", True)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] == 0
    assert tls_setting("https://pccs.example", True) is True
    assert tls_setting("http://127.0.0.1:8081", False) is False
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    assert tls_setting("http://127.0.0.1:8081", bundle) == bundle


def test_make_run_provider_uses_the_default_simulator_state(tmp_path: Path) -> None:
    """`make run-provider` and `get-key --quote-source sim` without --sim-state-dir meet in one simulator."""
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path), "PY": sys.executable}
    env.pop("SIM_STATE", None)
    dry = subprocess.run(
        ["make", "-s", "-n", "run-provider", f"PY={sys.executable}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    state = tmp_path / "sealing-key-provider" / "sim"
    assert f"serve --platform sim --state-dir {state} " in dry.stdout
    assert f"--trust-anchor {state}/root-ca.pem" in dry.stdout
    assert not state.exists()
