"""The provider's SGX side, at the edge: its own quote and its sealing key.

The request flow only needs two things from the enclave it runs in, so that is the whole interface
(:class:`SgxPlatform`). Two backends implement it: :class:`~.gramine.GraminePlatform` over Gramine's
``/dev/attestation`` pseudo-files (production), and :class:`~.sim.SimSgxPlatform` over the software
platform of :mod:`sealing_key_provider.sim` (development, tests, demos).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..config import PlatformConfig

REPORT_DATA_SIZE: Final = 64
SEALING_KEY_SIZE: Final = 16


@runtime_checkable
class SgxPlatform(Protocol):
    """What the provider needs from its enclave. Implementations must be safe to call from threads."""

    def quote(self, report_data: bytes) -> bytes:
        """A DCAP SGX quote of this enclave whose REPORTDATA is exactly ``report_data`` (64 bytes)."""
        ...

    def sealing_key(self) -> bytes:
        """This enclave's 16-byte SGX sealing key (same platform + same identity → same key)."""
        ...


def check_report_data(report_data: bytes | bytearray) -> bytes:
    """Report data is exactly 64 bytes: silent padding or truncation would bind something else."""
    if not isinstance(report_data, (bytes, bytearray)) or len(report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"report data must be {REPORT_DATA_SIZE} bytes")
    return bytes(report_data)


def open_platform(config: PlatformConfig, *, dev_mode: bool = False) -> SgxPlatform:
    """The backend ``[platform]`` names, opened (Gramine: ``attestation_type`` checked now).

    Backends are imported here, not at module level, so that production code never loads the
    simulator and the simulator never needs Gramine's files.
    """
    if config.kind == "gramine":
        from .gramine import GraminePlatform

        return GraminePlatform(config.attestation_dir, config.sealing_key_policy)
    from .sim import SimSgxPlatform

    if config.sim_state_dir is None:
        raise ValueError("platform.sim_state_dir is required for the simulated platform")
    return SimSgxPlatform.load(
        config.sim_state_dir,
        mrenclave=bytes.fromhex(config.sim_mrenclave) if config.sim_mrenclave else None,
        mrsigner=bytes.fromhex(config.sim_mrsigner) if config.sim_mrsigner else None,
        key_policy=config.sealing_key_policy,
        dev_mode=dev_mode,
        quote_latency_ms=config.quote_latency_ms,
    )


__all__ = ["REPORT_DATA_SIZE", "SEALING_KEY_SIZE", "SgxPlatform", "check_report_data", "open_platform"]
