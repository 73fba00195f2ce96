"""What the provider needs from the enclave it runs in: its own quote and its sealing key.

Two backends implement :class:`SgxPlatform`: :class:`~.gramine.GraminePlatform` over Gramine's
``/dev/attestation`` pseudo-files (production), and ``sealing_key_provider.sim.SimSgxPlatform`` over
the software platform (development, tests, demos), which this package never imports.
"""

from __future__ import annotations

from typing import Final, Protocol, runtime_checkable

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


__all__ = ["REPORT_DATA_SIZE", "SEALING_KEY_SIZE", "SgxPlatform", "check_report_data"]
