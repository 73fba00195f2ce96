"""``make demo``: the whole story on one machine, on the simulated platform, in production mode.

It starts the simulated PCCS and the provider as real processes (the provider trusts only the
simulator's root), then plays TDs with the client SDK: a TD gets its key; the same TD gets the same key
again, and again after the provider restarts; a TD with another image gets another key; the legacy
protocol works; a tampered quote and a TD from another platform are refused with their codes. It
exits 0 only if every step held, and stops every process it started.

Keys are shown as fingerprints (the first bytes of their SHA-256): a demo should not teach printing keys.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from .client.sdk import KeyClient
from .client.trust import ProviderTrust
from .collateral.pccs_client import PccsClient
from .dcap import Verifier
from .errors import ProviderError
from .sim import DEFAULT_SIM_MRENCLAVE, SimPlatform, SimTdQuoteSource
from .wire import b64encode

STARTUP_TIMEOUT = 60.0
IMAGE_A = hashlib.sha384(b"demo TD image A").digest()
IMAGE_B = hashlib.sha384(b"demo TD image B").digest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


class Demo:
    """Runs the steps, keeps score, owns the processes."""

    def __init__(self, workdir: Path, verbose: bool) -> None:
        self.workdir = workdir
        self.verbose = verbose
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.failures: list[str] = []
        self.exe = [sys.executable, "-m", "sealing_key_provider"]

    # --- output ---------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(text, flush=True)

    def check(self, ok: bool, text: str) -> None:
        self.say(f"   [{'ok' if ok else 'FAIL'}] {text}")
        if not ok:
            self.failures.append(text)

    # --- processes ------------------------------------------------------------------------------

    def start(self, name: str, args: list[str], ready: Callable[[], bool]) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [*self.exe, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited with {self.procs[name].returncode}:\n{self.tail(name)}")
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not become ready within {STARTUP_TIMEOUT:.0f} s:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    # --- the story ------------------------------------------------------------------------------

    def run(self) -> int:
        state_a, state_b = self.workdir / "platform-a", self.workdir / "platform-b"
        self.say("1. A simulated SGX+TDX machine (and a second one under the same simulated Intel CAs)")
        platform_a = SimPlatform.init(state_a)
        platform_b = SimPlatform.init(state_b, share_ca_with=platform_a)
        self.say(f"   machine A: PPID {platform_a.ppid.hex()}, FMSPC {platform_a.fmspc.hex().upper()}")
        self.say(f"   machine B: PPID {platform_b.ppid.hex()}")
        root = str(platform_a.root_ca_pem_path)

        pccs_port, http_port, legacy_port = _free_port(), _free_port(), _free_port()
        pccs_url = f"http://127.0.0.1:{pccs_port}"
        self.say(f"2. Simulated PCCS (Intel's collateral API) on {pccs_url}")
        self.start(
            "pccs",
            ["sim", "pccs", "--state-dir", str(state_a), "--listen", f"127.0.0.1:{pccs_port}"],
            lambda: _http_ok(f"{pccs_url}/sgx/certification/v4/rootcacrl"),
        )

        provider_url = f"http://127.0.0.1:{http_port}"
        serve_args = [
            "serve", "--platform", "sim", "--state-dir", str(state_a),
            "--http-listen", f"127.0.0.1:{http_port}", "--legacy-listen", f"127.0.0.1:{legacy_port}",
            "--pccs-url", pccs_url, "--trust-anchor", root,
        ]  # fmt: skip
        self.say(f"3. The provider in production mode on {provider_url} (legacy TCP on port {legacy_port})")
        self.start("provider", serve_args, lambda: _http_ok(f"{provider_url}/readyz"))
        info = httpx.get(f"{provider_url}/v1/info", timeout=5).json()
        self.say(f"   provider MRENCLAVE {info['mrenclave']} (pinned by the TD), PPID {info['ppid']}")

        # The TD's view: it trusts only the simulator's root and the provider's published MRENCLAVE.
        verifier = Verifier(trust_anchor=platform_a.root_certificate)
        collateral = PccsClient(pccs_url, timeout=10)
        trust = ProviderTrust(mrenclave=DEFAULT_SIM_MRENCLAVE)

        def client(source: SimTdQuoteSource, legacy: bool = False) -> KeyClient:
            if legacy:
                return KeyClient.legacy(
                    f"127.0.0.1:{legacy_port}", trust, verifier, collateral, source, allow_unbound_legacy=True
                )
            return KeyClient.http(provider_url, trust, verifier, collateral, source)

        td_a = SimTdQuoteSource(platform_a, mrtd=IMAGE_A)
        self.say("4. A TD (image A) asks for its key 'app/db'")
        with client(td_a) as c:
            got = c.fetch(key_name="app/db")
        key1 = got.key
        self.check(
            len(key1) == 32,
            f"32-byte key {_fingerprint(key1)}..., scheme {got.scheme}, TD TCB {got.td_tcb_status}",
        )
        self.say(
            "   the TD checked: DCAP on the provider quote, MRENCLAVE, binding, same PPID; then decrypted"
        )

        self.say("5. The same TD asks again (new key pair, new quote)")
        with client(td_a) as c:
            key2 = c.get_key(key_name="app/db")
        self.check(key2 == key1, f"same key {_fingerprint(key2)}...")

        self.say("6. The provider restarts (nothing is stored: the key comes from the SGX sealing key)")
        self.stop("provider")
        self.start("provider", serve_args, lambda: _http_ok(f"{provider_url}/readyz"))
        with client(td_a) as c:
            key3 = c.get_key(key_name="app/db")
        self.check(key3 == key1, f"same key after the restart {_fingerprint(key3)}...")

        self.say("7. A TD with another image (image B) on the same machine")
        with client(SimTdQuoteSource(platform_a, mrtd=IMAGE_B)) as c:
            key4 = c.get_key(key_name="app/db")
        self.check(key4 != key1, f"another key {_fingerprint(key4)}...")

        self.say("8. The original's legacy TCP protocol (byte-compatible; legacy-sha256 scheme)")
        with client(td_a, legacy=True) as c:
            legacy1, legacy2 = c.get_key(), c.get_key()
        self.check(legacy1 == legacy2, f"stable legacy key {_fingerprint(legacy1)}...")

        self.say("9. A tampered quote (one byte of MRTD flipped)")
        quote = bytearray(td_a.quote(bytes(range(1, 33)) + bytes(32)))
        quote[184] ^= 1
        answer = httpx.post(f"{provider_url}/v1/keys", json={"quote": b64encode(bytes(quote))}, timeout=10)
        code = answer.json().get("error", {}).get("code")
        self.check(
            answer.status_code == 400 and code == "QUOTE_SIGNATURE_INVALID",
            f"refused: HTTP {answer.status_code} {code}",
        )

        self.say("10. A TD on another machine (B) asks this provider")
        try:
            with client(SimTdQuoteSource(platform_b, mrtd=IMAGE_A)) as c:
                c.get_key(key_name="app/db")
            self.check(False, "a foreign TD got a key")
        except ProviderError as e:
            self.check(e.code == "PLATFORM_MISMATCH", f"refused: {e.code}")

        if self.failures:
            self.say(f"\nDEMO FAILED: {len(self.failures)} step(s) did not hold")
            for name in self.procs:
                self.say(f"--- {name} log ---\n{self.tail(name)}")
            return 1
        self.say("\nAll steps held: stable keys per TD image and platform, refusals with their codes.")
        return 0


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def _workdir(keep: str | None) -> Iterator[Path]:
    if keep:
        path = Path(keep)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="skp-demo-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_demo(workdir: str | None = None, verbose: bool = False) -> int:
    started = time.monotonic()
    with _workdir(workdir) as path:
        demo = Demo(path, verbose)
        try:
            code = demo.run()
        except (ProviderError, RuntimeError, OSError, httpx.HTTPError) as e:
            print(f"\nDEMO FAILED: {e}", flush=True)
            code = 1
        finally:
            demo.stop_all()
    print(f"({time.monotonic() - started:.1f} s)", flush=True)
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workdir", help="keep state and logs here instead of a temporary directory")
    args = parser.parse_args()
    return run_demo(args.workdir)


if __name__ == "__main__":
    sys.exit(main())
