"""The provider over loopback: a real ``serve`` subprocess (simulated platform, PRODUCTION mode,
collateral from a file, audit log at INFO to a file), both protocols, 1 and 32 concurrent clients.

Load comes from :mod:`.loadgen` (one ``selectors`` loop, pre-built request bytes, one distinct TD
quote per request), so the figures measure the server rather than a Python HTTP client. The crypto
floor is measured in the same run, each part alone: the two ECDSA checks every TD quote carries, one
sealed box, and the ECDSA signature of the provider's own quote. ``1 / floor`` is what one core could
serve if a request cost nothing but that crypto; the target is a throughput of at least half of it.
The server's peak RSS (VmHWM) is read from /proc after the run.

Also printed: ``Provider.handle`` alone (no network), the server's CPU time per request (from
/proc/PID/stat) and ``floor / CPU``, the share of its CPU spent on the unavoidable crypto, which does
not depend on how the machine's cores are shared between server and load generator.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx
import nacl.public
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sealing_key_provider.collateral import FileSource
from sealing_key_provider.dcap import Verifier
from sealing_key_provider.dcap.abi import parse_quote
from sealing_key_provider.keys import build_registry, seal
from sealing_key_provider.policy import Policy
from sealing_key_provider.provider import KeyRequest, Provider
from sealing_key_provider.sim import SimPlatform, SimSgxPlatform

from . import loadgen

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


def _signature_check(public_key: bytes, raw_signature: bytes, data: bytes) -> None:
    """One DCAP ECDSA-P256 check as a verifier must do it: raw key and ``r || s`` in, verified."""
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + public_key)
    der = encode_dss_signature(
        int.from_bytes(raw_signature[:32], "big"), int.from_bytes(raw_signature[32:], "big")
    )
    key.verify(der, data, ec.ECDSA(hashes.SHA256()))


def _crypto_floor(sim: SimPlatform, quotes: list[bytes], rounds: int = 300) -> tuple[float, dict[str, float]]:
    """The crypto a request cannot do without, each part timed alone (medians, seconds).

    The two signature checks every TD quote carries (the quote by the attestation key, the QE report
    by the PCK key; the certificate chain and collateral checks are per platform, not per request),
    one sealed box, and the ECDSA signature of the provider's own quote (the simulated QE's)."""
    parsed = [parse_quote(q) for q in quotes]
    leaf = x509.load_pem_x509_certificates(parsed[0].pck_chain_pem)[0].public_key()
    pck_key = leaf.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]
    signer = ec.generate_private_key(ec.SECP256R1())
    sgx_signed = SimSgxPlatform.load(sim.state_dir).quote(bytes(64))[:432]  # SGX v3 header + body
    recipient = bytes(nacl.public.PrivateKey.generate().public_key)
    key = os.urandom(32)

    def quote_checks(i: int) -> None:
        q = parsed[i % len(parsed)]
        _signature_check(q.attestation_key, q.signature, q.signed_data)
        _signature_check(pck_key, q.qe_report_signature, q.qe_report.raw)

    parts = {
        "2 quote signature checks": _median_seconds(quote_checks, rounds),
        "sealed box": _median_seconds(lambda i: seal(key, recipient), rounds),
        "quote signing": _median_seconds(
            lambda i: signer.sign(sgx_signed, ec.ECDSA(hashes.SHA256())), rounds
        ),
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


def _load(
    protocol: str, concurrency: int, quotes: list[bytes], legacy: tuple[str, int], http: tuple[str, int]
) -> tuple[float, list[float]]:
    """Send one request per quote with ``concurrency`` in flight; (wall seconds, latencies).

    Request bytes are built before the clock starts, exactly as the original's clients (legacy: a
    length and ``json.dumps({"quote": [ints]})``) and our SDK (HTTP: base64 JSON) build them."""
    if protocol == "legacy":
        requests = [loadgen.legacy_frame(json.dumps({"quote": list(q)}).encode()) for q in quotes]
        return loadgen.run(protocol, concurrency, requests, legacy)
    host = f"{http[0]}:{http[1]}"
    requests = [
        loadgen.http_request(json.dumps({"quote": base64.b64encode(q).decode()}).encode(), host)
        for q in quotes
    ]
    return loadgen.run(protocol, concurrency, requests, http)


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


def _cpu_split() -> tuple[set[int] | None, set[int]]:
    """(the server's CPU, the load generator's CPUs): the server gets one core of its own when the
    machine has two or more, as the target reads ("on one core") and as README's deployment notes
    advise (a GIL-bound process that hops between cores pays for it in cache misses)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, set(cpus)
    return {cpus[-1]}, set(cpus[:-1])


def _spawn(args: list[str], out: IO[bytes], server_cpu: set[int] | None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if server_cpu is not None:
        os.sched_setaffinity(proc.pid, server_cpu)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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


def _bare_cpu(protocol: str, quotes: list[bytes], work: Path, server_cpu: set[int] | None) -> float:
    """Server CPU seconds per request of :mod:`.bare_servers` (the protocol stack, no provider work),
    loaded like ``serve`` at the highest concurrency."""
    port = _free_port()
    log = work / f"bare-{protocol}.log"
    with open(log, "wb") as out:
        proc = _spawn(["-m", "bench.bare_servers", protocol, str(port)], out, server_cpu)
        try:
            address = ("127.0.0.1", port)
            deadline = time.monotonic() + 30.0
            while True:
                try:
                    socket.create_connection(address, timeout=1.0).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"bare {protocol} server did not start: {log.read_text()[-2000:]}"
                        ) from None
                    time.sleep(0.05)
            _load(protocol, 4, quotes[:20], address, address)
            cpu0 = _cpu_seconds(proc.pid)
            _, lat = _load(protocol, max(CONCURRENCY), quotes, address, address)
            return (_cpu_seconds(proc.pid) - cpu0) / len(lat)
        finally:
            _stop(proc)


def run(requests: int = REQUESTS) -> list[str]:
    server_cpu, load_cpus = _cpu_split()
    own_cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, load_cpus)
    try:
        return _run(requests, server_cpu, load_cpus)
    finally:
        os.sched_setaffinity(0, own_cpus)


def _run(requests: int, server_cpu: set[int] | None, load_cpus: set[int]) -> list[str]:
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
            proc = _spawn(
                ["-m", "sealing_key_provider.cli", "serve", "--config", str(config)], out, server_cpu
            )
            try:
                _wait_ready(proc, url, log)
                for protocol in ("legacy", "http"):  # warm-up: caches, connections, code paths
                    _load(protocol, 4, quotes[:20], legacy, http)
                results = []
                for protocol in ("legacy", "http"):
                    for concurrency in CONCURRENCY:
                        cpu0 = _cpu_seconds(proc.pid)
                        wall, lat = _load(protocol, concurrency, quotes, legacy, http)
                        cpu = (_cpu_seconds(proc.pid) - cpu0) / len(lat)
                        results.append((protocol, concurrency, len(lat) / wall, lat, cpu))
                rss = _vm_hwm_mb(proc.pid)
            finally:
                _stop(proc)
        bare = {p: _bare_cpu(p, quotes, work, server_cpu) for p in ("legacy", "http")}

    capacity = 1.0 / floor
    lines = [
        f"## Provider over loopback (serve subprocess, sim platform, production mode, {requests} requests "
        f"per configuration, {os.cpu_count()} CPUs)",
        "server on CPU "
        + (", ".join(map(str, sorted(server_cpu))) if server_cpu else "any (one CPU only)")
        + ", load generator and in-process timings on CPU "
        + ", ".join(map(str, sorted(load_cpus))),
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
    for protocol, cpu in bare.items():
        bound = floor / (handle[protocol] + cpu)
        lines.append(
            f"{protocol}: the protocol stack alone (bench.bare_servers, no provider work) costs {cpu * 1e3:.2f} ms "
            f"CPU/req; with Provider.handle that bounds one core at floor/(handle + stack) = {bound:.2f}"
        )
    lines.append(
        f"server peak RSS (VmHWM) = {rss:.1f} MB (target < {TARGET_RSS_MB:.0f} MB: "
        f"{'met' if rss < TARGET_RSS_MB else 'NOT met'})"
    )
    return lines
