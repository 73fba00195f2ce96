"""Command start-up: how long the ``sealing-key-provider`` script takes, end to end, as a user runs it.

Each figure is the median wall time of 10 runs (after one untimed run that warms the OS caches) of the
console script in a fresh process, installed as a TD installs it: ``pip install .`` without extras
(``make bench`` builds that in ``build/td-venv``; without it, the development venv is used and said so):

- ``--version``: the dispatcher alone (target < 100 ms);
- ``quote inspect`` of a real TDX quote from the corpus (target < 200 ms);
- ``get-key`` over HTTP v1 against a running local provider (``serve --platform sim`` on port 0, its
  bound port read from its stdout), a simulated TD, collateral from a file: the command a TD runs at
  boot, including verifying its own quote and the provider's (target < 350 ms).

Also shown: the same ``get-key`` with collateral from a local PCCS (the simulator's), which adds eight
collateral fetches, and the CPU time (user + system) of each command, which a loaded machine does not
inflate as it does wall time.
"""

from __future__ import annotations

import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sealing_key_provider.collateral.source import CollateralKey, bundle_json
from sealing_key_provider.sim import SimPlatform

ROOT = Path(__file__).resolve().parents[1]
#: The provider's side (serve, sim pccs) runs from the development venv, with the [server] extra.
SCRIPT = Path(sys.executable).parent / "sealing-key-provider"
RUNS = 10
TARGETS_MS = {"--version": 100.0, "quote inspect": 200.0, "get-key (HTTP v1, collateral file)": 350.0}


def _timed(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one run; the run must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed: {proc.stderr.decode(errors='replace')}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _medians(argv: list[str]) -> tuple[float, float]:
    _timed(argv)
    runs = [_timed(argv) for _ in range(RUNS)]
    return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


def write_bundle(sim: SimPlatform, path: Path) -> Path:
    """SGX (the provider's) and TDX (the TD's) collateral of ``sim`` in one bundle file."""
    now = int(time.time())
    ca = sim.pck_identity.ca_type
    path.write_text(
        bundle_json({CollateralKey(t, sim.fmspc, ca): sim.collateral(t, now=now) for t in ("sgx", "tdx")})
    )
    return path


def _serve(sim: SimPlatform, collateral: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    """``serve`` on the simulated platform on free ports; returns it with its HTTP URL (from stdout)."""
    argv = [str(SCRIPT), "serve", "--platform", "sim", "--state-dir", str(sim.state_dir)]
    argv += ["--collateral", str(collateral), "--trust-anchor", str(sim.root_ca_pem_path)]
    argv += ["--http-listen", "127.0.0.1:0", "--legacy-listen", ""]
    with log.open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("listening http "):
            return proc, line.split()[-1]
    proc.kill()
    raise RuntimeError(f"serve did not start:\n{log.read_text()}")


def _pccs(sim: SimPlatform, log: Path) -> tuple[subprocess.Popen[str], str]:
    argv = [str(SCRIPT), "sim", "pccs", "--state-dir", str(sim.state_dir), "--listen", "127.0.0.1:0"]
    with log.open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise RuntimeError(f"sim pccs did not start:\n{log.read_text()}")
    return proc, url


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _td_script() -> tuple[Path, str]:
    """The TD side's script: the client-only install if there is one, else the development venv's."""
    venv = os.environ.get("SKP_BENCH_TD_VENV")
    if venv:
        script = (ROOT / venv / "bin" / "sealing-key-provider").resolve()
        if script.exists():
            return script, f"client-only install {venv}"
    return SCRIPT, "development venv (with the [server] and test extras)"


def run() -> list[str]:
    quote = ROOT / "tests" / "data" / "dcap" / "tdx-v4-phala-1" / "quote.bin"
    td_script, installed = _td_script()
    results: dict[str, tuple[float, float]] = {
        "--version": _medians([str(td_script), "--version"]),
        "quote inspect": _medians([str(td_script), "quote", "inspect", str(quote)]),
    }
    with tempfile.TemporaryDirectory(prefix="cli-bench-") as tmp:
        work = Path(tmp)
        sim = SimPlatform.init(work / "state")
        collateral = write_bundle(sim, work / "collateral.json")
        server, url = _serve(sim, collateral, work / "serve.log")
        pccs, pccs_url = _pccs(sim, work / "pccs.log")
        try:
            mrenclave = _provider_mrenclave(work / "serve.log")
            get_key = [str(td_script), "get-key", "--provider", url, "--expect-mrenclave", mrenclave]
            get_key += ["--quote-source", "sim", "--sim-state-dir", str(sim.state_dir)]
            get_key += ["--trust-anchor", str(sim.root_ca_pem_path), "--hex"]
            results["get-key (HTTP v1, collateral file)"] = _medians(
                [*get_key, "--collateral", str(collateral)]
            )
            results["get-key (HTTP v1, local PCCS)"] = _medians([*get_key, "--pccs-url", pccs_url])
        finally:
            _stop(server)
            _stop(pccs)
    lines = [
        f"## Command start-up (median of {RUNS} runs, wall and CPU; {installed}; cores: {os.cpu_count()}, "
        f"load average {os.getloadavg()[0]:.2f})",
        "",
        "| command | wall median | CPU median | target |",
        "|---|---|---|---|",
    ]
    for name, (wall, cpu) in results.items():
        target = TARGETS_MS.get(name)
        verdict = (
            "" if target is None else f"< {target:.0f} ms: {'met' if wall * 1000 < target else 'MISSED'}"
        )
        lines.append(f"| `{name}` | {wall * 1000:.0f} ms | {cpu * 1000:.0f} ms | {verdict} |")
    return lines


def _provider_mrenclave(log: Path) -> str:
    """The MRENCLAVE the provider logged at start-up (what a TD pins)."""
    for line in log.read_text().splitlines():
        if "provider identity mrenclave=" in line:
            return line.split("mrenclave=", 1)[1].split()[0]
    raise RuntimeError(f"no provider identity in the log:\n{log.read_text()}")


if __name__ == "__main__":
    print("\n".join(run()))
