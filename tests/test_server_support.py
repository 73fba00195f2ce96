"""Helpers for the server tests (no tests here): simulated TDs, a `serve` subprocess, in-process servers,
and a legacy client that speaks the original's framing exactly (like its test_client.py)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import nacl.public

from sealing_key_provider.config import Config
from sealing_key_provider.dcap import Collateral, Verifier
from sealing_key_provider.keys import build_registry
from sealing_key_provider.policy import Policy
from sealing_key_provider.provider import Provider
from sealing_key_provider.server import ProviderServer, ServerThread
from sealing_key_provider.sim import Scenario, SimPlatform, SimSgxPlatform

ROOT = Path(__file__).resolve().parents[1]


class Td:
    """A simulated TD with its own X25519 key pair in report_data[0:32]."""

    def __init__(
        self,
        sim: SimPlatform,
        mrtd: bytes = b"\x11" * 48,
        rtmrs: tuple[bytes, ...] = (bytes(48),) * 4,
    ) -> None:
        self.sim, self.mrtd, self.rtmrs = sim, mrtd, rtmrs
        self.sk = nacl.public.PrivateKey.generate()

    def quote(self, rd_tail: bytes = bytes(32), **kw: Any) -> bytes:
        return self.sim.tdx_quote(
            report_data=bytes(self.sk.public_key) + rd_tail, mrtd=self.mrtd, rtmrs=self.rtmrs, **kw
        )

    def open(self, encrypted: bytes) -> bytes:
        return bytes(nacl.public.SealedBox(self.sk).decrypt(encrypted))


def rtmrs_with(index: int, value: bytes = b"\x01" * 48) -> tuple[bytes, ...]:
    r = [bytes(48)] * 4
    r[index] = value
    return tuple(r)


def free_port() -> int:
    """A port that was free a moment ago (the config refuses port 0 for `serve`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_collateral(sim: SimPlatform, path: Path, scenario: Scenario = Scenario.UP_TO_DATE) -> Path:
    path.write_text(sim.collateral("tdx", now=int(time.time()), scenario=scenario).to_json())
    return path


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple, frozenset)):
        return "[" + ", ".join(toml_value(v) for v in sorted(value, key=str)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


def toml_text(tables: Mapping[str, Mapping[str, object] | object]) -> str:
    lines: list[str] = []
    for name, table in tables.items():
        if not isinstance(table, Mapping):
            lines.append(f"{name} = {toml_value(table)}")
    for name, table in tables.items():
        if isinstance(table, Mapping):
            lines.append(f"[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


# --- legacy client, byte for byte like the original's test_client.py (but with sendall) -------------


def legacy_exchange(address: tuple[str, int], quote: bytes, timeout: float = 10.0) -> bytes | None:
    """Send one legacy request; the response body (without its length), or None if the server closed
    the connection without writing anything (how the original signals every error)."""
    body = json.dumps({"quote": list(quote)}).encode()
    return legacy_raw(address, struct.pack(">I", len(body)) + body, timeout)


def legacy_raw(address: tuple[str, int], data: bytes, timeout: float = 10.0) -> bytes | None:
    with socket.create_connection(address, timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return None
        return read_legacy_response(sock)


def read_legacy_response(sock: socket.socket) -> bytes | None:
    """Read 4 bytes of length (looping: recv may be short), then loop recv until the body is complete."""
    try:
        header = b""
        while len(header) < 4:
            chunk = sock.recv(4 - len(header))
            if not chunk:
                assert header == b"", f"server wrote a partial length prefix: {header!r}"
                return None
            header += chunk
        (length,) = struct.unpack(">I", header)
        body = b""
        while len(body) < length:
            chunk = sock.recv(min(4096, length - len(body)))
            assert chunk, "server closed in the middle of a response"
            body += chunk
        return body
    except ConnectionResetError:
        return None


def closed_without_bytes(sock: socket.socket, deadline: float) -> bool:
    """Wait (bounded by ``deadline``, monotonic) for EOF; True if the server wrote nothing before it."""
    sock.settimeout(max(0.05, deadline - time.monotonic()))
    try:
        data = sock.recv(1)
    except ConnectionResetError:
        return True
    return data == b""


# --- v1 over HTTP ----------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def post_key(client: httpx.Client, quote: bytes, **fields: object) -> httpx.Response:
    return client.post("/v1/keys", json={"quote": b64(quote), **fields})


def key_of(td: Td, response: httpx.Response) -> bytes:
    assert response.status_code == 200, response.text
    return td.open(base64.b64decode(response.json()["encrypted_key"]))


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return str(body["error"]["code"])


# --- servers ---------------------------------------------------------------------------------------


class ServeProcess:
    """`sealing-key-provider serve` in a subprocess, with its log (stderr) in a file and what it prints
    for scripts (stdout: the bound addresses) in another."""

    def __init__(
        self, serve_args: Sequence[str], log_path: Path, legacy: tuple[str, int], http: tuple[str, int]
    ) -> None:
        self.log_path = log_path
        self.legacy, self.http = legacy, http
        self.url = f"http://{http[0]}:{http[1]}"
        self.stdout_path = log_path.with_name(log_path.name + ".stdout")
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._stdout = open(self.stdout_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sealing_key_provider.cli", "serve", *serve_args],
            stdout=self._stdout,
            stderr=self._log,
            cwd=ROOT,
            env=env,
        )

    def wait_ready(self, timeout: float = 30.0) -> ServeProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # poll interval, not synchronisation: the deadline bounds the wait
        raise TimeoutError(f"serve not ready within {timeout} s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        self._stdout.close()
        return code


def serve_config(
    tmp: Path,
    sim: SimPlatform,
    collateral: Path,
    *,
    server: Mapping[str, object] | None = None,
    policy: Mapping[str, object] | None = None,
    logging: Mapping[str, object] | None = None,
    dev_mode: bool = False,
) -> tuple[Path, tuple[str, int], tuple[str, int]]:
    legacy = ("127.0.0.1", free_port())
    http = ("127.0.0.1", free_port())
    tables: dict[str, object] = {
        "dev_mode": dev_mode,
        "server": {
            "legacy_listen": f"{legacy[0]}:{legacy[1]}",
            "http_listen": f"{http[0]}:{http[1]}",
            **(server or {}),
        },
        "platform": {"kind": "sim", "sim_state_dir": str(sim.state_dir)},
        "collateral": {"file": str(collateral), "trust_anchor": str(sim.root_ca_pem_path)},
        "logging": {"level": "info", **(logging or {})},
    }
    if policy:
        tables["policy"] = policy
    path = tmp / f"serve-{http[1]}.toml"
    path.write_text(toml_text(tables))
    return path, legacy, http


@contextmanager
def serve_process(tmp: Path, sim: SimPlatform, collateral: Path, **kw: Any) -> Iterator[ServeProcess]:
    config, legacy, http = serve_config(tmp, sim, collateral, **kw)
    proc = ServeProcess(["--config", str(config)], tmp / f"serve-{http[1]}.log", legacy, http)
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


class SimSource:
    """Collateral straight from the simulator at the current time, for a chosen scenario."""

    def __init__(self, sim: SimPlatform, scenario: Scenario = Scenario.UP_TO_DATE) -> None:
        self.sim, self.scenario = sim, scenario
        self._cache: dict[str, Collateral] = {}

    def get(self, tee: str, fmspc: bytes, ca: str) -> Collateral:
        if tee not in self._cache:
            self._cache[tee] = self.sim.collateral(tee, now=int(time.time()), scenario=self.scenario)
        return self._cache[tee]


def make_provider(
    sim: SimPlatform,
    *,
    policy: Policy | None = None,
    source: Any = None,
    dev_mode: bool = False,
    platform: Any = None,
    clock: Callable[[], float] = time.time,
) -> Provider:
    return Provider(
        platform if platform is not None else SimSgxPlatform.load(sim.state_dir, dev_mode=dev_mode),
        source if source is not None else SimSource(sim),
        Verifier(trust_anchor=sim.root_certificate),
        policy or Policy(),
        build_registry(),
        clock=clock,
        dev_mode=dev_mode,
    )


def server_config(**server: object) -> Config:
    """A configuration for in-process servers (the platform/collateral tables are not used by them)."""
    base: dict[str, object] = {"io_timeout": 1.0, **server}
    return Config.from_mapping({"server": base, "collateral": {"file": "unused.json"}})


def start_thread(provider: Provider, config: Config | None = None, **server: object) -> ServerThread:
    """A started ProviderServer on ephemeral loopback ports in a background thread (caller stops it)."""
    cfg = config or server_config(**server)
    return ServerThread(ProviderServer(provider, cfg), ("127.0.0.1", 0), ("127.0.0.1", 0)).start()


@contextmanager
def in_process(provider: Provider, config: Config | None = None, **server: object) -> Iterator[ServerThread]:
    """A ProviderServer on ephemeral loopback ports in a background thread."""
    thread = start_thread(provider, config, **server)
    try:
        yield thread
    finally:
        thread.stop()


def http_client(thread: ServerThread) -> httpx.Client:
    address = thread.server.http_address
    assert address is not None
    return httpx.Client(base_url=f"http://{address[0]}:{address[1]}", timeout=10.0)


def legacy_address(thread: ServerThread) -> tuple[str, int]:
    address = thread.server.legacy_address
    assert address is not None
    return address
