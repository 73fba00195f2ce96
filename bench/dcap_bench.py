"""Verifier.verify against dcap-qvl's verify (the Rust peer, PyPI ``dcap-qvl``), in one process.

Calls are interleaved (peer, cold, warm, peer, ...) so that whatever else the machine does at a
moment weighs on all three alike; the figures are medians and the verdicts are ratios to the peer.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import dcap_qvl

from sealing_key_provider.dcap import Collateral, Verifier
from sealing_key_provider.dcap import verify as _verify
from tests.corpus import case

CASES = ("tdx-v4-phala-1", "sgx-v3-phala-1")
TARGET_WARM = 0.33
TARGET_COLD = 1.5


def _medians(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def _signature_checks(quote: bytes, collateral: Collateral, now: int) -> list[_verify._Check]:
    """The ECDSA checks one cold verification makes, as its batch collected them."""
    seen: list[_verify._Check] = []
    run = _verify._Batch.run

    def recording(batch: _verify._Batch) -> None:
        seen.extend(batch.checks)
        run(batch)

    _verify._Batch.run = recording  # type: ignore[method-assign, assignment]
    try:
        Verifier().verify(quote, collateral, now)
    finally:
        _verify._Batch.run = run  # type: ignore[method-assign]
    return seen


def _bench_case(name: str, rounds: int) -> list[str]:
    c = case(name)
    collateral = Collateral.from_json(c.collateral_text)
    peer_collateral = dcap_qvl.QuoteCollateralV3.from_json(c.collateral_text)
    warm = Verifier()
    expected = warm.verify(c.quote, collateral, c.now).status.value
    assert dcap_qvl.verify(c.quote, peer_collateral, c.now).status == expected
    for _ in range(20):  # warm-up both sides
        dcap_qvl.verify(c.quote, peer_collateral, c.now)
        Verifier().verify(c.quote, collateral, c.now)
    checks = _signature_checks(c.quote, collateral, c.now)
    assert all(_verify._check_ok(check) for check in checks)
    m = _medians(
        {
            "dcap-qvl": lambda: dcap_qvl.verify(c.quote, peer_collateral, c.now),
            "cold": lambda: Verifier().verify(c.quote, collateral, c.now),
            "warm": lambda: warm.verify(c.quote, collateral, c.now),
            # What a cold call cannot go below: its signature checks alone, through OpenSSL.
            "signatures": lambda: [_verify._check_ok(check) for check in checks],
        },
        rounds,
    )
    peer = m["dcap-qvl"]
    cold_ratio = m["cold"] / peer
    warm_ratio = m["warm"] / peer
    return [
        f"{name}: dcap-qvl {peer * 1e6:.0f} us, cold {m['cold'] * 1e6:.0f} us, warm {m['warm'] * 1e6:.0f} us",
        f"{name}: cold/dcap-qvl = {cold_ratio:.2f} (target <= {TARGET_COLD}: "
        f"{'met' if cold_ratio <= TARGET_COLD else 'NOT met'}), warm/dcap-qvl = {warm_ratio:.2f} "
        f"(target <= {TARGET_WARM}: {'met' if warm_ratio <= TARGET_WARM else 'NOT met'})",
        f"{name}: of cold, the {len(checks)} ECDSA P-256 checks alone {m['signatures'] * 1e6:.0f} us "
        f"= {m['signatures'] / peer:.2f} of dcap-qvl; everything else "
        f"{(m['cold'] - m['signatures']) * 1e6:.0f} us = {(m['cold'] - m['signatures']) / peer:.2f}",
    ]


def run(rounds: int = 300) -> list[str]:
    lines = [
        f"## DCAP verification vs dcap-qvl {getattr(dcap_qvl, '__version__', '0.7.0')} (median of {rounds})"
    ]
    for name in CASES:
        lines += _bench_case(name, rounds)
    return lines
