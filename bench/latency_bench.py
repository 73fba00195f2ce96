"""Throughput under real quote latency: every SGX quote costs 20 ms and quotes are made one at a time
(the simulated platform's ``quote_latency_ms``, as through AESM), with 32 concurrent clients.

Five ways to get a key, side by side in one run on the same machine:

- legacy: the original's TCP protocol (one per-request quote, kept for its clients);
- v1 + quote: the HTTP API asking for a per-request quote (``"evidence": "quote"``);
- v1 + attested key: the HTTP API's default, answers signed by the attested key (no quote);
- v1 over RA-TLS: the HTTPS listener, answers authenticated by the attested channel (no quote);
- original flow: :mod:`.original_flow`, the original's request path re-created (two quotes per
  request, collateral fetched from a PCCS and a fresh verifier for every request).

Each client is a thread with its own connection (legacy: one per request, as the protocol wants;
HTTP/HTTPS: keep-alive); requests are built before the clock starts. Quotes per request are read from
the server's ``skp_quote_generation_seconds_count`` before and after each run (the original-flow
server counts its own). The attested rows send 2,000 requests from each of the 32 clients; the
quote-bound rows are shorter (see ``REQUESTS``): at 20 ms a quote they cannot exceed 50 quotes/s, so
2,000 requests from each of 32 clients would take over 20 minutes per row (over 40 for the original's
two quotes), and their rate is the same after a few seconds.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import nacl.public

from sealing_key_provider.collateral.source import CollateralKey, bundle_json
from sealing_key_provider.sim import SimPlatform
from sealing_key_provider.sim.pccs_server import PccsServer, StaticCatalog
from sealing_key_provider.wire import LENGTH_PREFIX

from .provider_bench import _cpu_split, _free_port, _percentile, _spawn, _stop, _wait_ready

QUOTE_LATENCY_MS = 20
CLIENTS = 32
#: Requests per client, by row: quote-bound rows are limited by 50 quotes/s whatever the code does.
REQUESTS = {"legacy": 20, "v1-quote": 20, "v1-attested": 2000, "v1-ratls": 2000, "original": 10}
TARGET_SPEEDUP = 20.0
LABELS = {
    "legacy": "legacy protocol (per-request quote)",
    "v1-quote": "v1, per-request quote",
    "v1-attested": "v1, attested key (signature)",
    "v1-ratls": "v1 over RA-TLS",
    "original": "original flow (2 quotes + PCCS + fresh verifier)",
}


class _Client(threading.Thread):
    """One client: sends its pre-built requests one after another, recording each latency."""

    def __init__(self, mode: str, address: tuple[str, int], bodies: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.mode, self.address, self.bodies = mode, address, bodies
        self.latencies: list[float] = []
        self.error: BaseException | None = None
        self.start_gate = threading.Event()

    def run(self) -> None:
        try:
            self.start_gate.wait()
            if self.mode in ("legacy", "original"):
                for body in self.bodies:
                    t0 = time.perf_counter()
                    _legacy_call(self.address, body)
                    self.latencies.append(time.perf_counter() - t0)
                return
            if self.mode == "v1-ratls":
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = (
                    ssl.CERT_NONE
                )  # the SDK checks the RA-TLS certificate once per connection
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    *self.address, timeout=60, context=context
                )
            else:
                conn = http.client.HTTPConnection(*self.address, timeout=60)
            headers = {"content-type": "application/json"}
            for body in self.bodies:
                t0 = time.perf_counter()
                conn.request("POST", "/v1/keys", body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                if response.status != 200:
                    raise RuntimeError(f"{self.mode}: HTTP {response.status}: {data[:200]!r}")
                self.latencies.append(time.perf_counter() - t0)
            conn.close()
        except BaseException as e:
            self.error = e


def _legacy_call(address: tuple[str, int], frame: bytes) -> None:
    with socket.create_connection(address, timeout=120) as sock:
        sock.sendall(frame)
        header = sock.recv(4, socket.MSG_WAITALL)
        if len(header) != 4:
            raise RuntimeError("legacy: connection closed without an answer")
        (length,) = LENGTH_PREFIX.unpack(header)
        remaining = length
        while remaining:
            chunk = sock.recv(min(remaining, 65536))
            if not chunk:
                raise RuntimeError("legacy: answer cut short")
            remaining -= len(chunk)


def _bodies(mode: str, quotes: list[bytes], count: int, offset: int) -> list[bytes]:
    out = []
    for i in range(count):
        q = quotes[(offset + i) % len(quotes)]
        if mode in ("legacy", "original"):
            body = json.dumps({"quote": list(q)}).encode()
            out.append(LENGTH_PREFIX.pack(len(body)) + body)
        else:
            obj: dict[str, object] = {"quote": base64.b64encode(q).decode()}
            if mode == "v1-quote":
                obj["evidence"] = "quote"
            out.append(json.dumps(obj).encode())
    return out


def _drive(
    mode: str, address: tuple[str, int], quotes: list[bytes], per_client: int
) -> tuple[float, list[float]]:
    clients = [
        _Client(mode, address, _bodies(mode, quotes, per_client, i * per_client)) for i in range(CLIENTS)
    ]
    for c in clients:
        c.start()
    t0 = time.perf_counter()
    for c in clients:
        c.start_gate.set()
    for c in clients:
        c.join()
    wall = time.perf_counter() - t0
    for c in clients:
        if c.error is not None:
            raise RuntimeError(f"{mode}: a client failed: {c.error!r}")
    return wall, [x for c in clients for x in c.latencies]


def _quote_count(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    match = re.search(r"^skp_quote_generation_seconds_count (\S+)$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError("skp_quote_generation_seconds_count is not in /metrics")
    return float(match.group(1))


def run() -> list[str]:
    server_cpu, load_cpus = _cpu_split()
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, load_cpus)
    try:
        return _run(server_cpu)
    finally:
        os.sched_setaffinity(0, own)


def _run(server_cpu: set[int] | None) -> list[str]:
    rows: dict[str, tuple[float, list[float], float]] = {}
    with tempfile.TemporaryDirectory(prefix="skp-latency-") as tmp:
        work = Path(tmp)
        sim = SimPlatform.init(work / "state")
        now = int(time.time())
        collateral = work / "collateral.json"
        collateral.write_text(sim.collateral("tdx", now=now).to_json())
        tds = [nacl.public.PrivateKey.generate() for _ in range(64)]
        quotes = [
            sim.tdx_quote(report_data=bytes(sk.public_key) + bytes(32), mrtd=b"\x11" * 48) for sk in tds
        ]
        legacy, http_, https = (("127.0.0.1", _free_port()) for _ in range(3))
        url = f"http://{http_[0]}:{http_[1]}"
        config = work / "serve.toml"
        config.write_text(
            f"""
[server]
legacy_listen = "{legacy[0]}:{legacy[1]}"
http_listen = "{http_[0]}:{http_[1]}"
https_listen = "{https[0]}:{https[1]}"
max_connections = 256
max_concurrency = 8
rate_limit_per_second = 1000000.0
rate_limit_burst = 1000000
io_timeout = 60.0
[platform]
kind = "sim"
sim_state_dir = "{sim.state_dir}"
quote_latency_ms = {QUOTE_LATENCY_MS}
[collateral]
file = "{collateral}"
trust_anchor = "{sim.root_ca_pem_path}"
[logging]
level = "warning"
"""
        )
        log = work / "serve.log"
        with open(log, "wb") as out:
            proc = _spawn(
                ["-m", "sealing_key_provider.cli", "serve", "--config", str(config)], out, server_cpu
            )
            try:
                _wait_ready(proc, url, log)
                addresses = {"legacy": legacy, "v1-quote": http_, "v1-attested": http_, "v1-ratls": https}
                for mode, address in addresses.items():
                    _drive(mode, address, quotes, 2)  # warm-up: collateral cache, code paths
                    before = _quote_count(url)
                    wall, lat = _drive(mode, address, quotes, REQUESTS[mode])
                    rows[mode] = (wall, lat, (_quote_count(url) - before) / len(lat))
            finally:
                _stop(proc)
        # The original's flow, against a PCCS serving the same collateral.
        both = work / "pccs-collateral.json"
        ca = sim.pck_identity.ca_type
        both.write_text(
            bundle_json({CollateralKey(t, sim.fmspc, ca): sim.collateral(t, now=now) for t in ("sgx", "tdx")})
        )
        with PccsServer(StaticCatalog.from_file(both)) as pccs:
            port = _free_port()
            olog = work / "original.log"
            with open(olog, "wb") as out:
                args = [
                    str(port),
                    str(sim.state_dir),
                    pccs.url,
                    str(sim.root_ca_pem_path),
                    str(QUOTE_LATENCY_MS),
                ]
                proc = _spawn(["-m", "bench.original_flow", *args], out, server_cpu)
                try:
                    _wait_listening(proc, ("127.0.0.1", port), olog)
                    _drive("original", ("127.0.0.1", port), quotes, 1)
                    wall, lat = _drive("original", ("127.0.0.1", port), quotes, REQUESTS["original"])
                finally:
                    _stop(proc)
            match = re.search(r"quotes=(\d+) requests=(\d+)", olog.read_text())
            if match is None:
                raise RuntimeError(f"original flow did not report its counts: {olog.read_text()[-2000:]}")
            rows["original"] = (wall, lat, int(match.group(1)) / int(match.group(2)))

    lines = [
        f"## Under quote latency ({QUOTE_LATENCY_MS} ms per SGX quote, one at a time; {CLIENTS} concurrent "
        f"clients; serve subprocess, sim platform, production mode; {os.cpu_count()} CPUs)",
        "requests per client: "
        + ", ".join(f"{m} {n}" for m, n in REQUESTS.items())
        + " (quote-bound rows are shorter: they cannot exceed 1000/"
        + f"{QUOTE_LATENCY_MS} quotes/s)",
        f"| {'mode':48} | requests | req/s | p50 ms | p99 ms | quotes/request |",
        f"|{'-' * 50}|---------:|------:|-------:|-------:|---------------:|",
    ]
    rps: dict[str, float] = {}
    for mode, (wall, lat, qpr) in rows.items():
        rps[mode] = len(lat) / wall
        lines.append(
            f"| {LABELS[mode]:48} | {len(lat):8} | {rps[mode]:5.0f} | {_percentile(lat, 0.5) * 1e3:6.1f} | "
            f"{_percentile(lat, 0.99) * 1e3:6.1f} | {qpr:14.2f} |"
        )
    for mode in ("v1-attested", "v1-ratls"):
        ratio = rps[mode] / rps["legacy"]
        zero = rows[mode][2] == 0
        lines.append(
            f"{mode}: {ratio:.1f}x the legacy protocol's throughput, {rows[mode][2]:.2f} quotes/request "
            f"(target >= {TARGET_SPEEDUP:.0f}x and 0 quotes: {'met' if ratio >= TARGET_SPEEDUP and zero else 'NOT met'})"
        )
    lines.append(
        f"median latency, legacy vs attested: {statistics.median(rows['legacy'][1]) * 1e3:.1f} ms vs "
        f"{statistics.median(rows['v1-attested'][1]) * 1e3:.1f} ms"
    )
    return lines


def _wait_listening(proc: subprocess.Popen[bytes], address: tuple[str, int], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"original flow server exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(address, timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("original flow server did not start")


if __name__ == "__main__":
    print("\n".join(run()))
