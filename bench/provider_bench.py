"""The provider over loopback: a real ``serve`` subprocess (simulated platform, PRODUCTION mode,
collateral from a file, audit log at INFO to a file), both protocols, 1 and 32 concurrent clients.

Clients are threads of this process with pre-generated TD quotes (one distinct quote per request), so
the server does the same work a stream of real TDs would cause. The crypto floor is measured in the
same run: a warm ``Verifier.verify`` of a TD quote (its signature checks), one sealed box, and one
simulated SGX quote generation (its signing). ``1 / floor`` is what one core could serve if a request
cost nothing but that crypto; the target is a throughput of at least half of it. The server's peak
RSS (VmHWM) is read from /proc after the run.

Also printed: the server's CPU time per request (from /proc/PID/stat) and ``floor / CPU``, the share of
its CPU spent on the unavoidable crypto. Clients share the machine's cores with the server, so the
throughput ratio understates what the server would do with a core of its own; ``floor / CPU`` does not.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import nacl.public

from sealing_key_provider.collateral import FileSource
from sealing_key_provider.dcap import Verifier
from sealing_key_provider.keys import build_registry, seal
from sealing_key_provider.platform.sim import SimSgxPlatform
from sealing_key_provider.policy import Policy
from sealing_key_provider.provider import KeyRequest, Provider
from sealing_key_provider.sim import SimPlatform

REQUESTS = 300
CONCURRENCY = (1, 32)
TARGET_FLOOR_RATIO = 0.5
TARGET_RSS_MB = 100.0
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _median_seconds(fn: Callable[[int], object], rounds: int) -> float:
    samples = []
    for i in range(rounds):
        t0 = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _crypto_floor(sim: SimPlatform, quotes: list[bytes], rounds: int = 200) -> tuple[float, dict[str, float]]:
    now = int(time.time())
    verifier = Verifier(trust_anchor=sim.root_certificate)
    collateral = sim.collateral("tdx", now=now)
    verifier.verify(quotes[0], collateral, now)  # warm: chain, collateral and QE caches filled
    platform = SimSgxPlatform.load(sim.state_dir)
    recipient = bytes(nacl.public.PrivateKey.generate().public_key)
    key = os.urandom(32)
    parts = {
        "verify (warm)": _median_seconds(
            lambda i: verifier.verify(quotes[i % len(quotes)], collateral, now), rounds
        ),
        "sealed box": _median_seconds(lambda i: seal(key, recipient), rounds),
        "sgx quote": _median_seconds(lambda i: platform.quote(i.to_bytes(64, "big")), rounds),
    }
    return sum(parts.values()), parts


def _handle_in_process(sim: SimPlatform, collateral: Path, quotes: list[bytes], legacy: bool) -> float:
    """Median seconds of ``Provider.handle`` alone (no sockets, no threads): the provider's own cost."""
    provider = Provider(
        SimSgxPlatform.load(sim.state_dir),
        FileSource(collateral),
        Verifier(trust_anchor=sim.root_certificate),
        Policy(),
        build_registry(),
    )
    for q in quotes[:20]:
        provider.handle(KeyRequest(quote=q, legacy=legacy))
    return _median_seconds(lambda i: provider.handle(KeyRequest(quote=quotes[i], legacy=legacy)), len(quotes))


def _legacy_frame(quote: bytes) -> bytes:
    """A request frame exactly as the original's clients build it (encoded before the clock starts)."""
    body = json.dumps({"quote": list(quote)}).encode()
    return struct.pack(">I", len(body)) + body


def _legacy_once(address: tuple[str, int], frame: bytes) -> None:
    with socket.create_connection(address, timeout=30) as sock:
        sock.sendall(frame)
        header = b""
        while len(header) < 4:
            chunk = sock.recv(4 - len(header))
            if not chunk:
                raise RuntimeError("legacy request refused (connection closed)")
            header += chunk
        (length,) = struct.unpack(">I", header)
        got = 0
        while got < length:
            chunk = sock.recv(min(65536, length - got))
            if not chunk:
                raise RuntimeError("legacy response truncated")
            got += len(chunk)


def _load(
    protocol: str, concurrency: int, quotes: list[bytes], legacy: tuple[str, int], url: str
) -> tuple[float, list[float]]:
    """Send ``len(quotes)`` requests from ``concurrency`` threads; (wall seconds, latencies)."""
    next_index = iter(range(len(quotes)))
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[BaseException] = []
    if protocol == "legacy":
        bodies = [_legacy_frame(q) for q in quotes]
    else:
        bodies = [json.dumps({"quote": base64.b64encode(q).decode()}).encode() for q in quotes]

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=30.0) as client:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    if protocol == "legacy":
                        _legacy_once(legacy, bodies[i])
                    else:
                        r = client.post(
                            "/v1/keys", content=bodies[i], headers={"content-type": "application/json"}
                        )
                        if r.status_code != 200:
                            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                except BaseException as e:  # recorded and reported: a failed run has no figures
                    errors.append(e)
                    return
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{protocol} x{concurrency}: {errors[0]!r}")
    return wall, latencies


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError("serve did not become ready")


def run(requests: int = REQUESTS) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="skp-bench-") as tmp:
        work = Path(tmp)
        sim = SimPlatform.init(work / "state")
        collateral = work / "collateral.json"
        collateral.write_text(sim.collateral("tdx", now=int(time.time())).to_json())
        legacy = ("127.0.0.1", _free_port())
        http = ("127.0.0.1", _free_port())
        url = f"http://{http[0]}:{http[1]}"
        config = work / "serve.toml"
        config.write_text(
            f"""
[server]
legacy_listen = "{legacy[0]}:{legacy[1]}"
http_listen = "{http[0]}:{http[1]}"
max_connections = 256
rate_limit_per_second = 1000000.0
rate_limit_burst = 1000000
io_timeout = 30.0
[platform]
kind = "sim"
sim_state_dir = "{sim.state_dir}"
[collateral]
file = "{collateral}"
trust_anchor = "{sim.root_ca_pem_path}"
[logging]
level = "info"
"""
        )
        # Distinct TDs and quotes, generated before the clock starts.
        tds = [nacl.public.PrivateKey.generate() for _ in range(requests)]
        quotes = [
            sim.tdx_quote(report_data=bytes(sk.public_key) + bytes(32), mrtd=b"\x11" * 48) for sk in tds
        ]
        floor, parts = _crypto_floor(sim, quotes)
        audit = logging.getLogger("sealing_key_provider.audit")
        audit_level, audit.level = audit.level, logging.WARNING  # no audit lines on this terminal
        try:
            handle = {
                p: _handle_in_process(sim, collateral, quotes, p == "legacy") for p in ("legacy", "http")
            }
        finally:
            audit.setLevel(audit_level)
        log = work / "serve.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sealing_key_provider.cli", "serve", "--config", str(config)],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                _wait_ready(proc, url, log)
                for protocol in ("legacy", "http"):  # warm-up: caches, connections, code paths
                    _load(protocol, 4, quotes[:20], legacy, url)
                results = []
                for protocol in ("legacy", "http"):
                    for concurrency in CONCURRENCY:
                        cpu0 = _cpu_seconds(proc.pid)
                        wall, lat = _load(protocol, concurrency, quotes, legacy, url)
                        cpu = (_cpu_seconds(proc.pid) - cpu0) / len(lat)
                        results.append((protocol, concurrency, len(lat) / wall, lat, cpu))
                rss = _vm_hwm_mb(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    capacity = 1.0 / floor
    lines = [
        f"## Provider over loopback (serve subprocess, sim platform, production mode, {requests} requests "
        f"per configuration, {os.cpu_count()} CPUs)",
        "crypto floor per request: "
        + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in parts.items())
        + f" = {floor * 1e3:.2f} ms -> {capacity:.0f} req/s on one core",
    ]
    lines.append(
        "Provider.handle alone (in-process, no network): "
        + ", ".join(f"{p} {t * 1e3:.2f} ms (floor/handle = {floor / t:.2f})" for p, t in handle.items())
    )
    best: dict[str, float] = {}
    for protocol, concurrency, rps, lat, cpu in results:
        ratio = rps / capacity
        best[protocol] = max(best.get(protocol, 0.0), ratio)
        lines.append(
            f"{protocol:6} x{concurrency:<2}: {rps:7.1f} req/s, p50 {_percentile(lat, 0.5) * 1e3:6.2f} ms, "
            f"p99 {_percentile(lat, 0.99) * 1e3:6.2f} ms, server CPU {cpu * 1e3:.2f} ms/req "
            f"(floor/CPU = {floor / cpu:.2f}), throughput/floor = {ratio:.2f}"
        )
    for protocol, ratio in best.items():
        lines.append(
            f"{protocol}: best throughput/floor = {ratio:.2f} (target >= {TARGET_FLOOR_RATIO}: "
            f"{'met' if ratio >= TARGET_FLOOR_RATIO else 'NOT met'})"
        )
    lines.append(
        f"server peak RSS (VmHWM) = {rss:.1f} MB (target < {TARGET_RSS_MB:.0f} MB: "
        f"{'met' if rss < TARGET_RSS_MB else 'NOT met'})"
    )
    return lines
