"""What a TD quote source is: the first step of every key request, a DCAP quote over 64 bytes of
report data the TD chooses.

The interface (:class:`QuoteSource`), its errors and the checks every source shares. The sources are
edges that import this module and never each other: configfs-tsm (:mod:`.quote_source`),
``/dev/tdx_guest`` with the host's QGS (:mod:`.tdx_guest`) and the simulator
(``sealing_key_provider.sim.SimTdQuoteSource``); :mod:`.detect` picks one.
"""

from __future__ import annotations

import struct
from typing import Protocol, runtime_checkable

from ..dcap.abi import (
    HEADER_SIZE,
    REPORT_DATA_SIZE,
    TD10_REPORT_SIZE,
    TD15_REPORT_SIZE,
    TD_REPORT_DATA_OFFSET,
    TEE_TYPE_TDX,
    V5_BODY_DESCRIPTOR_SIZE,
    BodyType,
)
from ..errors import BadRequest, PlatformError


class QuoteSourceUnavailable(PlatformError):
    """No usable TDX quote source here: not a TDX guest, no configfs-tsm, wrong provider, no permission.

    Retrying does not help; the machine or the process's privileges must change.
    """

    code = "QUOTE_SOURCE_UNAVAILABLE"


class QuoteSourceBusy(PlatformError):
    """Someone else used the report entry or the quote service at the same time; retrying may help."""

    code = "QUOTE_SOURCE_BUSY"


@runtime_checkable
class QuoteSource(Protocol):
    """Where the TD gets its own DCAP quote. Implementations are safe to call from threads."""

    def quote(self, report_data: bytes) -> bytes:
        """A DCAP TDX quote (v4 or v5) whose REPORTDATA is exactly ``report_data`` (64 bytes)."""
        ...


def check_report_data(report_data: bytes | bytearray) -> bytes:
    """Report data is exactly 64 bytes; padding or truncating it would make the quote bind other data."""
    if not isinstance(report_data, (bytes, bytearray)):
        raise BadRequest(f"report data must be bytes, got {type(report_data).__name__}")
    if len(report_data) != REPORT_DATA_SIZE:
        raise BadRequest(f"report data must be exactly {REPORT_DATA_SIZE} bytes, got {len(report_data)}")
    return bytes(report_data)


def tdx_quote_report_data(quote: bytes) -> bytes | None:
    """REPORTDATA of a v4/v5 TDX quote by fixed offsets, or ``None`` if ``quote`` is not shaped like one.

    Deliberately shallow (header and body position only, no certification data): the source checks
    that the quote binds what it wrote, and leaves judging the rest of the quote to the verifier.
    """
    if len(quote) < HEADER_SIZE:
        return None
    version, _key_type, tee_type = struct.unpack_from("<HHI", quote, 0)
    if tee_type != TEE_TYPE_TDX:
        return None
    if version == 4:
        body_start, body_size = HEADER_SIZE, TD10_REPORT_SIZE
    elif version == 5:
        if len(quote) < HEADER_SIZE + V5_BODY_DESCRIPTOR_SIZE:
            return None
        body_type, body_size = struct.unpack_from("<HI", quote, HEADER_SIZE)
        expected = {int(BodyType.TD10): TD10_REPORT_SIZE, int(BodyType.TD15): TD15_REPORT_SIZE}.get(body_type)
        if expected is None or body_size != expected:
            return None
        body_start = HEADER_SIZE + V5_BODY_DESCRIPTOR_SIZE
    else:
        return None
    if len(quote) < body_start + body_size:
        return None
    start = body_start + TD_REPORT_DATA_OFFSET
    return quote[start : start + REPORT_DATA_SIZE]


__all__ = [
    "REPORT_DATA_SIZE",
    "QuoteSource",
    "QuoteSourceBusy",
    "QuoteSourceUnavailable",
    "check_report_data",
    "tdx_quote_report_data",
]
