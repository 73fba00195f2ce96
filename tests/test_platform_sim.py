"""SimSgxPlatform (the provider enclave on the simulated platform) and open_platform."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from sealing_key_provider.cli.serve import open_platform
from sealing_key_provider.config import Config, PlatformConfig
from sealing_key_provider.dcap.abi import parse_quote
from sealing_key_provider.errors import ConfigError, PlatformError
from sealing_key_provider.platform import SgxPlatform
from sealing_key_provider.platform.gramine import GraminePlatform
from sealing_key_provider.sim import (
    DEFAULT_SIM_DEV_MRENCLAVE,
    DEFAULT_SIM_MRENCLAVE,
    DEFAULT_SIM_MRSIGNER,
    SimPlatform,
    SimSgxPlatform,
)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "sim"
    SimPlatform.init(d)
    return d


def rd(tag: str) -> bytes:
    return hashlib.sha512(tag.encode()).digest()


def test_quote_is_v3_sgx_over_report_data(state_dir: Path) -> None:
    p = SimSgxPlatform.load(state_dir)
    assert isinstance(p, SgxPlatform)
    raw = p.quote(rd("a"))
    q = parse_quote(raw)
    assert q.header.version == 3
    assert q.report_data == rd("a")
    assert raw[368:432] == rd("a")  # where legacy clients look
    assert q.enclave_report.mrenclave == DEFAULT_SIM_MRENCLAVE
    assert q.enclave_report.mrsigner == DEFAULT_SIM_MRSIGNER
    assert not q.enclave_report.debug


def test_report_data_must_be_64_bytes(state_dir: Path) -> None:
    with pytest.raises(ValueError):
        SimSgxPlatform.load(state_dir).quote(bytes(32))


def test_sealing_key_stable_across_restarts(state_dir: Path) -> None:
    k1 = SimSgxPlatform.load(state_dir).sealing_key()
    k2 = SimSgxPlatform.load(state_dir).sealing_key()
    assert len(k1) == 16 and k1 == k2


def test_sealing_key_depends_on_identity_policy_and_platform(state_dir: Path, tmp_path: Path) -> None:
    base = SimSgxPlatform.load(state_dir).sealing_key()
    other_enclave = SimSgxPlatform.load(state_dir, mrenclave=b"\x01" * 32).sealing_key()
    dev = SimSgxPlatform.load(state_dir, dev_mode=True)
    signer = SimSgxPlatform.load(state_dir, key_policy="mrsigner").sealing_key()
    signer_other_enclave = SimSgxPlatform.load(
        state_dir, key_policy="mrsigner", mrenclave=b"\x01" * 32
    ).sealing_key()
    SimPlatform.init(tmp_path / "other")
    other_machine = SimSgxPlatform.load(tmp_path / "other").sealing_key()
    assert dev.enclave.mrenclave == DEFAULT_SIM_DEV_MRENCLAVE
    assert len({base, other_enclave, dev.sealing_key(), signer, other_machine}) == 5
    assert signer == signer_other_enclave  # MRSIGNER policy: same signer, same key


def test_bad_key_policy(state_dir: Path) -> None:
    with pytest.raises(ValueError):
        SimSgxPlatform.load(state_dir, key_policy="both")


def test_missing_state(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        SimSgxPlatform.load(tmp_path / "absent")


def test_concurrent_quotes(state_dir: Path) -> None:
    p = SimSgxPlatform.load(state_dir)
    bad: list[int] = []

    def worker(i: int) -> None:
        if parse_quote(p.quote(rd(str(i)))).report_data != rd(str(i)):
            bad.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert bad == []


def test_short_key_from_backend_refused(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = SimSgxPlatform.load(state_dir)
    monkeypatch.setattr(SimPlatform, "sealing_key", lambda self, enclave, policy="mrenclave": bytes(8))
    with pytest.raises(PlatformError):
        p.sealing_key()


def test_open_platform_sim(state_dir: Path) -> None:
    cfg = Config().with_overrides(
        {
            "platform.kind": "sim",
            "platform.sim_state_dir": str(state_dir),
            "platform.sim_mrenclave": "aa" * 32,
            "platform.sealing_key_policy": "mrsigner",
        }
    )
    p = open_platform(cfg.platform)
    assert isinstance(p, SimSgxPlatform)
    assert p.enclave.mrenclave == b"\xaa" * 32
    assert p.enclave.mrsigner == DEFAULT_SIM_MRSIGNER
    assert p.key_policy == "mrsigner"
    dev = open_platform(PlatformConfig(kind="sim", sim_state_dir=str(state_dir)), dev_mode=True)
    assert isinstance(dev, SimSgxPlatform)
    assert dev.enclave.mrenclave == DEFAULT_SIM_DEV_MRENCLAVE


def test_open_platform_gramine(tmp_path: Path) -> None:
    (tmp_path / "attestation_type").write_bytes(b"dcap")
    p = open_platform(PlatformConfig(attestation_dir=str(tmp_path), sealing_key_policy="mrsigner"))
    assert isinstance(p, GraminePlatform)
    assert p.root == tmp_path and p.key_policy == "mrsigner"
    with pytest.raises(PlatformError):
        open_platform(PlatformConfig(attestation_dir=str(tmp_path / "missing")))


def test_quote_latency_is_spent_one_quote_at_a_time(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """quote_latency_ms models the quoting enclave behind AESM: each quote takes that long and no two
    are generated at once (the latency is spent under the platform's lock)."""
    platform = SimSgxPlatform.load(state_dir, quote_latency_ms=30)
    assert platform.quote_latency == 0.03
    inside = 0
    most = 0
    guard = threading.Lock()
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        real_sleep(seconds)
        with guard:
            inside -= 1

    monkeypatch.setattr("sealing_key_provider.sim.sgx_platform.time.sleep", sleep)
    started = time.monotonic()
    threads = [threading.Thread(target=platform.quote, args=(rd(str(i)),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert most == 1
    assert time.monotonic() - started >= 4 * 0.03  # a lower bound: cannot flake on a slow machine
    assert SimSgxPlatform.load(state_dir).quote_latency == 0.0
    for bad in (-1, 60_001):
        with pytest.raises(ValueError):
            SimSgxPlatform.load(state_dir, quote_latency_ms=bad)


def test_quote_latency_configuration(state_dir: Path) -> None:
    config = PlatformConfig(kind="sim", sim_state_dir=str(state_dir), quote_latency_ms=20)
    platform = open_platform(config)
    assert isinstance(platform, SimSgxPlatform) and platform.quote_latency == 0.02
    with pytest.raises(ConfigError, match="simulated platform only"):
        PlatformConfig(kind="gramine", quote_latency_ms=5)
    with pytest.raises(ConfigError, match=r"0\.\.60000"):
        PlatformConfig(kind="sim", sim_state_dir=str(state_dir), quote_latency_ms=-1)
