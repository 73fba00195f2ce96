"""The provider's SGX side, at the edge: its own report, its own quote and its sealing key.

The request flow only needs three things from the enclave it runs in, so that is the whole interface
(:class:`~.base.SgxPlatform`). The production backend is :class:`~.gramine.GraminePlatform` over
Gramine's ``/dev/attestation`` pseudo-files; the simulated one lives with the simulator
(:class:`sealing_key_provider.sim.SimSgxPlatform`). Which one runs is chosen by the command line
(``serve``), never here.
"""

from __future__ import annotations

from .base import (
    DEV_MODE_ISVPRODID,
    PRODUCTION_ISVPRODID,
    REPORT_BODY_SIZE,
    REPORT_DATA_SIZE,
    SEALING_KEY_SIZE,
    SgxPlatform,
    attested_quote,
    check_report_data,
)

__all__ = [
    "DEV_MODE_ISVPRODID",
    "PRODUCTION_ISVPRODID",
    "REPORT_BODY_SIZE",
    "REPORT_DATA_SIZE",
    "SEALING_KEY_SIZE",
    "SgxPlatform",
    "attested_quote",
    "check_report_data",
]
