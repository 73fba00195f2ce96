"""Shared pieces of the client tests: a simulated TD, collateral from the simulator, and transports
that hand requests to an in-process provider (optionally tampering with the answer)."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from sealing_key_provider.attestation import AttestationDocument
from sealing_key_provider.client.errors import ProviderRefused
from sealing_key_provider.client.transport import PROTOCOL_LEGACY, PROTOCOL_V1, ProviderAnswer, Transport
from sealing_key_provider.collateral.source import CollateralKey, bundle_json
from sealing_key_provider.dcap import Collateral
from sealing_key_provider.errors import ProviderError
from sealing_key_provider.provider import KeyRequest, Provider
from sealing_key_provider.sim import Scenario, SimPlatform
from sealing_key_provider.wire import (
    LENGTH_PREFIX,
    KeyResponseV1,
    decode_legacy_request,
    decode_legacy_response,
    encode_legacy_request,
    encode_legacy_response,
)

MRTD = b"\x11" * 48
RTMRS = (b"\x21" * 48, b"\x22" * 48, b"\x23" * 48, bytes(48))


class SimTd:
    """A simulated TD image on a simulated platform: quotes over whatever report data it is given."""

    def __init__(self, sim: SimPlatform, mrtd: bytes = MRTD, **kw: object) -> None:
        self.sim, self.mrtd, self.kw = sim, mrtd, kw
        self.calls = 0

    def quote(self, report_data: bytes) -> bytes:
        self.calls += 1
        return self.sim.tdx_quote(report_data=report_data, mrtd=self.mrtd, rtmrs=RTMRS, **self.kw)  # type: ignore[arg-type]


class SimSource:
    """Collateral straight from the simulated platform at a fixed time, with a scenario to choose."""

    def __init__(self, sim: SimPlatform, now: int, scenario: Scenario = Scenario.UP_TO_DATE) -> None:
        self.sim, self.now, self.scenario = sim, now, scenario
        self._cache: dict[str, Collateral] = {}

    def get(self, tee: str, fmspc: bytes, ca: str) -> Collateral:
        if tee not in self._cache:
            self._cache[tee] = self.sim.collateral(tee, now=self.now, scenario=self.scenario)
        return self._cache[tee]


Tamper = Callable[[bytes, ProviderAnswer], ProviderAnswer]


class InProcessTransport:
    """A transport that calls :meth:`Provider.handle` directly (v1 answers go through their JSON form),
    with an optional ``tamper(td_quote, answer)`` playing the man in the middle."""

    def __init__(
        self,
        provider: Provider,
        *,
        legacy: bool = False,
        tamper: Tamper | None = None,
        default_evidence: str | None = "quote",
    ) -> None:
        self.provider, self.legacy, self.tamper = provider, legacy, tamper
        #: What to ask for when the client asks for nothing (most tests check the per-request quote).
        self.default_evidence = default_evidence
        self.answers: list[ProviderAnswer] = []
        self.attestation_fetches = 0

    def attestation(self) -> AttestationDocument:
        self.attestation_fetches += 1
        return AttestationDocument.from_json(self.provider.attestation())

    @property
    def protocol(self) -> str:
        return PROTOCOL_LEGACY if self.legacy else PROTOCOL_V1

    def close(self) -> None:
        pass

    def nonce(self) -> bytes:
        return self.provider.issue_nonce()[0]

    def request(
        self,
        td_quote: bytes,
        *,
        key_name: str,
        key_version: int,
        scheme: str | None,
        nonce: bytes | None,
        evidence: str | None = None,
    ) -> ProviderAnswer:
        try:
            r = self.provider.handle(
                KeyRequest(
                    quote=td_quote,
                    scheme=scheme,
                    key_name=key_name,
                    key_version=key_version,
                    nonce=nonce,
                    legacy=self.legacy,
                    evidence=None if self.legacy else (evidence or self.default_evidence),
                )
            )
        except ProviderError as e:
            raise ProviderRefused(e.code, e.message) from None
        if self.legacy:
            answer = ProviderAnswer(r.encrypted_key, r.provider_quote, None)
        else:
            v1 = KeyResponseV1(
                encrypted_key=r.encrypted_key,
                provider_quote=r.provider_quote,
                scheme=r.scheme,
                measurements=r.measurements,
                key_name=r.key_name,
                key_version=r.key_version,
                tcb_status=r.tcb_status,
                advisory_ids=r.advisory_ids,
                policy_digest=self.provider.policy_digest,
                dev_mode=r.dev_mode,
                evidence=r.evidence,
                binding=r.binding,
                signature=r.signature,
                attestation_id=r.attestation_id,
            )
            v1 = KeyResponseV1.from_json(v1.to_json())
            answer = ProviderAnswer(v1.encrypted_key, v1.provider_quote, v1)
        self.answers.append(answer)
        return self.tamper(td_quote, answer) if self.tamper else answer


def with_quote(answer: ProviderAnswer, provider_quote: bytes) -> ProviderAnswer:
    """The same answer carrying another provider quote (in the v1 body too)."""
    v1 = replace(answer.v1, provider_quote=provider_quote) if answer.v1 is not None else None
    return ProviderAnswer(answer.encrypted_key, provider_quote, v1)


def with_encrypted_key(answer: ProviderAnswer, encrypted_key: bytes) -> ProviderAnswer:
    v1 = replace(answer.v1, encrypted_key=encrypted_key) if answer.v1 is not None else None
    return ProviderAnswer(encrypted_key, answer.provider_quote, v1)


def flip_signature_byte(provider_quote: bytes) -> bytes:
    """Flip one bit inside the ECDSA signature of a v3 SGX quote (header 48 + body 384 + length 4)."""
    q = bytearray(provider_quote)
    q[48 + 384 + 4 + 10] ^= 0x01
    return bytes(q)


_: type[Transport] = InProcessTransport  # the test transport satisfies the protocol


# --- a real server on loopback ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_collateral_bundle(
    sim: SimPlatform, path: Path, now: int, scenario: Scenario = Scenario.UP_TO_DATE
) -> Path:
    """SGX (for the client) and TDX (for the server) collateral of ``sim`` in one bundle file."""
    ca = sim.pck_identity.ca_type
    entries = {
        CollateralKey(t, sim.fmspc, ca): sim.collateral(t, now=now, scenario=scenario) for t in ("sgx", "tdx")
    }
    path.write_text(bundle_json(entries))
    return path


@dataclass
class ServedProvider:
    """``sealing-key-provider serve`` in a subprocess on the simulated platform, production mode."""

    sim: SimPlatform
    workdir: Path
    collateral: Path
    process: subprocess.Popen[bytes]
    http_url: str
    legacy_address: str
    info: dict[str, Any]
    log: Path
    #: The RA-TLS listener (given as ``serve --https-listen``).
    https_url: str = ""

    @property
    def mrenclave(self) -> str:
        return str(self.info["mrenclave"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_provider(workdir: Path, *, deadline_seconds: float = 30.0) -> ServedProvider:
    """Start the server with a fresh simulated platform and wait for ``/readyz`` (or fail with its log).

    Ports are picked free just before start; if another process grabs one in between, the server
    exits at once and is started again on new ports.
    """
    sim = SimPlatform.init(workdir / "state")
    collateral = write_collateral_bundle(sim, workdir / "collateral.json", int(time.time()))
    last_log = ""
    for attempt in range(3):
        http_port, legacy_port, https_port = free_port(), free_port(), free_port()
        config = workdir / f"config-{attempt}.toml"
        config.write_text(
            "[server]\n"
            f'legacy_listen = "127.0.0.1:{legacy_port}"\n'
            f'http_listen = "127.0.0.1:{http_port}"\n'
            "rate_limit_per_second = 1000.0\n"
            "rate_limit_burst = 1000\n"
            "io_timeout = 5.0\n"
            "[platform]\n"
            'kind = "sim"\n'
            f'sim_state_dir = "{sim.state_dir}"\n'
            "[collateral]\n"
            f'file = "{collateral}"\n'
            f'trust_anchor = "{sim.root_ca_pem_path}"\n'
        )
        log = workdir / f"serve-{attempt}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _MAIN,
                    "serve",
                    "--config",
                    str(config),
                    "--https-listen",
                    f"127.0.0.1:{https_port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + deadline_seconds
        with httpx.Client(timeout=2.0, trust_env=False) as http:
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    if http.get(url + "/readyz").status_code == 200:
                        info = http.get(url + "/v1/info").json()
                        return ServedProvider(
                            sim,
                            workdir,
                            collateral,
                            process,
                            url,
                            f"127.0.0.1:{legacy_port}",
                            info,
                            log,
                            f"https://127.0.0.1:{https_port}",
                        )
                except httpx.TransportError:
                    pass
                time.sleep(0.05)  # polling interval, not synchronisation: the loop is bounded by the deadline
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        last_log = log.read_text(errors="replace")
    raise RuntimeError(f"the provider did not become ready:\n{last_log}")


_MAIN = "import sys; from sealing_key_provider.cli import main; sys.exit(main())"


# --- a man in the middle for the legacy protocol ---------------------------------------------------------------


def _read_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return bytes(buf)


LegacyRewrite = Callable[[bytes], bytes]


class LegacyMitm:
    """A TCP proxy in front of a legacy provider that may rewrite the TD quote on the way in and the
    (encrypted_key, provider_quote) answer on the way out. Real sockets on both sides."""

    def __init__(
        self,
        upstream: str,
        *,
        quote: LegacyRewrite | None = None,
        answer: Callable[[bytes, bytes], tuple[bytes, bytes]] | None = None,
    ) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.rewrite_quote, self.rewrite_answer = quote, answer
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError, ProviderError):
                self._relay(conn)

    def _relay(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        (n,) = LENGTH_PREFIX.unpack(_read_exact(conn, 4))
        td_quote = decode_legacy_request(_read_exact(conn, n))
        if self.rewrite_quote:
            td_quote = self.rewrite_quote(td_quote)
        with socket.create_connection(self.upstream, timeout=10) as up:
            up.sendall(encode_legacy_request(td_quote))
            head = up.recv(4)
            if len(head) < 4:
                return  # the provider refused: close without bytes, as it did
            (m,) = LENGTH_PREFIX.unpack(head)
            ek, pq = decode_legacy_response(_read_exact(up, m))
        if self.rewrite_answer:
            ek, pq = self.rewrite_answer(ek, pq)
        conn.sendall(encode_legacy_response(ek, pq))

    def close(self) -> None:
        # shutdown() wakes the blocked accept() on Linux; close() alone would leave it waiting.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)
        assert not self._thread.is_alive(), "proxy thread did not stop"

    def __enter__(self) -> LegacyMitm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
