"""``make loadtest``: the reliability scenarios against ``serve`` on the simulated platform, as a table.

Every scenario runs a real ``serve`` subprocess with the default limits on loopback only (ephemeral
ports; many client addresses are 127.0.x.y source addresses, all local), and every loop is bounded in
count and in time:

- **steady**: 10,000 requests per protocol from 64 clients (64 addresses): errors, p50/p99, RSS growth.
- **hostile neighbour**: 127.0.0.2 holds 300 connections (half idle, half trickling a byte a second,
  reconnecting when cut) while 127.0.0.3 asks for keys one after another (8 per second, within its
  rate limit): share answered within 2 s.
  Also the log volume the neighbour causes, per refusal reason.
- **mass boot**: 48 simultaneous legacy requests from one address (a dstack VMM relaying for 48 TDs).
- **hanging PCCS**: the PCCS accepts and never answers, the cache is empty: every request ends (with a
  code) within the request deadline, ``/readyz`` answers within 2 s.
- **refusing PCCS**: connections to the PCCS are refused: 300 requests, how many fetch attempts and
  log lines they cost.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import nacl.public

from sealing_key_provider.sim import SimPlatform

from . import loadgen

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 15.0  # server.request_deadline's default


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Row:
    scenario: str
    protocol: str
    requests: int
    result: str
    p50_ms: float
    p99_ms: float
    note: str

    def line(self) -> str:
        def ms(value: float) -> str:
            return "-" if value != value else f"{value:.0f}"  # NaN: not a latency figure

        return (
            f"| {self.scenario} | {self.protocol} | {self.requests} | {self.result} | "
            f"{ms(self.p50_ms)} | {ms(self.p99_ms)} | {self.note} |"
        )


class Serve:
    """``sealing-key-provider serve`` in a subprocess with its log in a file."""

    def __init__(self, work: Path, sim: SimPlatform, name: str, collateral: str) -> None:
        self.legacy = ("127.0.0.1", free_port())
        self.http = ("127.0.0.1", free_port())
        self.url = f"http://127.0.0.1:{self.http[1]}"
        self.log = work / f"{name}.log"
        config = work / f"{name}.toml"
        config.write_text(
            f"""
[server]
legacy_listen = "127.0.0.1:{self.legacy[1]}"
http_listen = "127.0.0.1:{self.http[1]}"
[platform]
kind = "sim"
sim_state_dir = "{sim.state_dir}"
[collateral]
{collateral}
trust_anchor = "{sim.root_ca_pem_path}"
[logging]
level = "info"
"""
        )
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sealing_key_provider.cli", "serve", "--config", str(config)],
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise TimeoutError("serve did not start")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def log_bytes(self) -> int:
        self._out.flush()
        return self.log.stat().st_size

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


@contextmanager
def serve(work: Path, sim: SimPlatform, name: str, collateral: str) -> Iterator[Serve]:
    server = Serve(work, sim, name, collateral)
    try:
        yield server
    finally:
        server.stop()


def legacy_once(address: tuple[str, int], quote: bytes, source: str, timeout: float = 30.0) -> bool:
    """One legacy request from ``source``; True when a complete answer came back."""
    body = json.dumps({"quote": list(quote)}).encode()
    try:
        with socket.create_connection(address, timeout=timeout, source_address=(source, 0)) as sock:
            sock.sendall(struct.pack(">I", len(body)) + body)
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return False
    return len(data) >= 4 and len(data) == 4 + struct.unpack(">I", data[:4])[0]


# --- scenarios -----------------------------------------------------------------------------------------


def steady(server: Serve, quotes: list[bytes], protocol: str, count: int, clients: int = 64) -> Row:
    host = f"{server.http[0]}:{server.http[1]}"
    if protocol == "legacy":
        requests = [
            loadgen.legacy_frame(json.dumps({"quote": list(quotes[i % len(quotes)])}).encode())
            for i in range(count)
        ]
    else:
        requests = [
            loadgen.http_request(
                json.dumps({"quote": base64.b64encode(quotes[i % len(quotes)]).decode()}).encode(), host
            )
            for i in range(count)
        ]
    sources = [f"127.0.1.{i + 1}" for i in range(clients)]
    rss0 = server.rss_mb()
    try:
        wall, lat = loadgen.run(
            protocol, clients, requests, server.legacy if protocol == "legacy" else server.http, sources
        )
        result = f"0 errors, {len(lat) / wall:.0f} req/s"
    except loadgen.LoadError as e:
        wall, lat, result = 0.0, [], f"ERROR: {e}"
    growth = server.rss_mb() - rss0
    return Row(
        "steady",
        protocol,
        count,
        result,
        percentile(lat, 0.5) * 1e3,
        percentile(lat, 0.99) * 1e3,
        f"{clients} clients; RSS {rss0:.0f} -> {server.rss_mb():.0f} MB ({growth:+.0f})",
    )


class Neighbour:
    """Holds ``count`` connections from ``source``: half idle, half trickling a byte a second; a cut
    connection is reopened. Runs until stopped (bounded by ``limit`` seconds in any case)."""

    def __init__(self, server: Serve, source: str, count: int = 300, limit: float = 120.0) -> None:
        self.targets = [server.legacy, server.http]
        self.source = source
        self.count = count
        self.limit = limit
        self.stop = threading.Event()
        self.opened = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Neighbour:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _open(self, i: int) -> socket.socket | None:
        try:
            sock = socket.create_connection(self.targets[i % 2], timeout=1.0, source_address=(self.source, 0))
        except OSError:
            return None
        self.opened += 1
        sock.setblocking(False)
        if i % 4 < 2:
            try:
                sock.send(b"\x00" if i % 2 == 0 else b"POST /v1/keys HTTP/1.1\r\nx-trickle: ")
            except OSError:
                sock.close()
                return None
        return sock

    def _run(self) -> None:
        socks: list[socket.socket | None] = [None] * self.count
        end = time.monotonic() + self.limit
        try:
            while not self.stop.is_set() and time.monotonic() < end:
                for i in range(self.count):
                    sock = socks[i]
                    if sock is None:
                        socks[i] = self._open(i)
                        continue
                    try:
                        if sock.recv(4096, socket.MSG_DONTWAIT) == b"":
                            raise ConnectionResetError
                    except BlockingIOError:
                        pass
                    except OSError:
                        sock.close()
                        socks[i] = None
                        continue
                    if i % 4 < 2:
                        try:
                            sock.send(b"a" if i % 2 else b"\x00")
                        except OSError:
                            sock.close()
                            socks[i] = None
                self.stop.wait(1.0)
        finally:
            for sock in socks:
                if sock is not None:
                    sock.close()


def refusal_log(text: str) -> Counter[str]:
    """Bytes of log per refusal code in ``text`` (refused lines and their summaries)."""
    out: Counter[str] = Counter()
    for line in text.splitlines():
        if " refused protocol=" in line and " code=" in line:
            code = line.split(" code=", 1)[1].split(" ", 1)[0]
            out[code] += len(line) + 1
    return out


def hostile(server: Serve, quotes: list[bytes], seconds: float = 40.0, per_protocol: int = 150) -> list[Row]:
    """The victim keeps within the default rate (one request per ``pace`` seconds): what it measures
    is the neighbour's effect, not its own rate limit."""
    victim = "127.0.0.3"
    pace = 0.125
    rows = []
    start_bytes = server.log_bytes()
    started = time.monotonic()
    with Neighbour(server, "127.0.0.2") as neighbour:
        time.sleep(3.0)  # let it open its connections (and be refused beyond its share)
        transport = httpx.HTTPTransport(local_address=victim)
        with httpx.Client(base_url=server.url, transport=transport, timeout=30.0) as client:
            for protocol in ("legacy", "http"):
                lat: list[float] = []
                ok = 0
                end = time.monotonic() + seconds / 2
                n = 0
                last = 0.0
                while n < per_protocol and time.monotonic() < end:
                    quote = quotes[n % len(quotes)]
                    time.sleep(max(0.0, pace - (time.perf_counter() - last)))
                    last = t0 = time.perf_counter()
                    if protocol == "legacy":
                        answered = legacy_once(server.legacy, quote, victim)
                    else:
                        try:
                            r = client.post("/v1/keys", json={"quote": base64.b64encode(quote).decode()})
                            answered = r.status_code == 200
                        except httpx.TransportError:
                            answered = False
                    elapsed = time.perf_counter() - t0
                    lat.append(elapsed)
                    ok += answered and elapsed < 2.0
                    n += 1
                rows.append(
                    Row(
                        "hostile neighbour",
                        protocol,
                        n,
                        f"{100 * ok / n:.1f}% answered within 2 s",
                        percentile(lat, 0.5) * 1e3,
                        percentile(lat, 0.99) * 1e3,
                        "300 slow/idle connections from another address",
                    )
                )
        opened = neighbour.opened
    duration = time.monotonic() - started
    time.sleep(11.0)  # the summaries of the last interval
    text = server.log.read_bytes()[start_bytes:].decode(errors="replace")
    volume = refusal_log(text)
    worst = max(volume.values(), default=0) / duration
    detail = ", ".join(f"{code} {b / duration:.0f} B/s" for code, b in volume.most_common())
    rows.append(
        Row(
            "log volume",
            "both",
            opened,
            f"max {worst:.0f} B/s per refusal reason",
            float("nan"),
            float("nan"),
            f"neighbour's connection attempts in {duration:.0f} s; {detail}",
        )
    )
    return rows


def mass_boot(server: Serve, quotes: list[bytes]) -> Row:
    barrier = threading.Barrier(48)
    lat: list[float] = []

    def boot(i: int) -> bool:
        barrier.wait(10)
        t0 = time.perf_counter()
        ok = legacy_once(server.legacy, quotes[i % len(quotes)], "127.0.0.4")
        lat.append(time.perf_counter() - t0)
        return ok

    with ThreadPoolExecutor(48) as pool:
        keys = sum(pool.map(boot, range(48)))
    return Row(
        "mass boot",
        "legacy",
        48,
        f"{keys}/48 keys",
        percentile(lat, 0.5) * 1e3,
        max(lat) * 1e3,
        "one relay address, default limits (p99 column: slowest)",
    )


class HangingPccs:
    """Accepts connections, never answers (bounded: closes everything when stopped)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def _ask_many(
    server: Serve, quotes: list[bytes], count: int, sources: int
) -> tuple[list[float], Counter[str]]:
    codes: Counter[str] = Counter()
    lat: list[float] = []

    def ask(i: int) -> None:
        transport = httpx.HTTPTransport(local_address=f"127.0.2.{i % sources + 1}")
        with httpx.Client(base_url=server.url, transport=transport, timeout=60.0) as c:
            t0 = time.perf_counter()
            try:
                r = c.post("/v1/keys", json={"quote": base64.b64encode(quotes[i % len(quotes)]).decode()})
                codes["OK" if r.status_code == 200 else r.json()["error"]["code"]] += 1
            except httpx.TransportError as e:
                codes[type(e).__name__] += 1
            lat.append(time.perf_counter() - t0)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(ask, range(count)))
    return lat, codes


def pccs_hanging(work: Path, sim: SimPlatform, quotes: list[bytes]) -> list[Row]:
    pccs = HangingPccs()
    try:
        url = f"http://127.0.0.1:{pccs.sock.getsockname()[1]}"
        with serve(work, sim, "pccs-hanging", f'pccs_url = "{url}"') as server:
            t0 = time.perf_counter()
            ready = httpx.get(server.url + "/readyz", timeout=30.0)
            ready_s = time.perf_counter() - t0
            lat, codes = _ask_many(server, quotes, 40, sources=10)
    finally:
        pccs.close()
    return [
        Row(
            "hanging PCCS",
            "http",
            40,
            f"{sum(codes.values())}/40 ended, slowest {max(lat):.1f} s (deadline {DEADLINE:g} s)",
            percentile(lat, 0.5) * 1e3,
            percentile(lat, 0.99) * 1e3,
            f"codes {dict(codes)}; /readyz {ready.status_code} in {ready_s:.2f} s; "
            f"{len(pccs.accepted)} PCCS connection(s)",
        )
    ]


def pccs_refusing(work: Path, sim: SimPlatform, quotes: list[bytes]) -> list[Row]:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with serve(work, sim, "pccs-refusing", f'pccs_url = "{url}"') as server:
        start = server.log_bytes()
        lat, codes = _ask_many(server, quotes, 300, sources=30)
        text = server.log.read_bytes()[start:].decode(errors="replace")
    fetches = text.count("collateral fetch failed")
    return [
        Row(
            "refusing PCCS",
            "http",
            300,
            f"codes {dict(codes)}",
            percentile(lat, 0.5) * 1e3,
            percentile(lat, 0.99) * 1e3,
            f"{fetches} fetch(es) logged as failed, {text.count('retrying')} 'retrying' lines, "
            f"{len(text.splitlines())} log lines in all",
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadtest", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="steady-load requests per protocol")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="skp-loadtest-") as tmp:
        work = Path(tmp)
        sim = SimPlatform.init(work / "state")
        collateral = work / "collateral.json"
        collateral.write_text(sim.collateral("tdx", now=int(time.time())).to_json())
        keys = [nacl.public.PrivateKey.generate() for _ in range(200)]
        quotes = [sim.tdx_quote(report_data=bytes(k.public_key) + bytes(32), mrtd=b"\x11" * 48) for k in keys]
        with serve(work, sim, "steady", f'file = "{collateral}"') as server:
            for protocol in ("legacy", "http"):
                rows.append(steady(server, quotes, protocol, args.requests))
                print(rows[-1].line(), flush=True)
        with serve(work, sim, "hostile", f'file = "{collateral}"') as server:
            for row in hostile(server, quotes):
                rows.append(row)
                print(row.line(), flush=True)
            rows.append(mass_boot(server, quotes))
            print(rows[-1].line(), flush=True)
        for scenario in (pccs_hanging, pccs_refusing):
            for row in scenario(work, sim, quotes):
                rows.append(row)
                print(row.line(), flush=True)
    print()
    print("| scenario | protocol | requests | result | p50 ms | p99 ms | notes |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
