"""What the provider needs from the enclave it runs in: its own report, its own quote, its sealing key.

Two backends implement :class:`SgxPlatform`: :class:`~.gramine.GraminePlatform` over Gramine's
``/dev/attestation`` pseudo-files (production), and ``sealing_key_provider.sim.SimSgxPlatform`` over
the software platform (development, tests, demos), which this package never imports.
"""

from __future__ import annotations

import hmac
from typing import Final, Protocol, runtime_checkable

from ..dcap.abi import TeeType, parse_enclave_report, parse_quote
from ..errors import PlatformError, QuoteError

REPORT_DATA_SIZE: Final = 64
SEALING_KEY_SIZE: Final = 16
#: ISVPRODID of production builds and of development (``DEV_MODE=1``) builds (the Makefile signs them
#: so): a development build signed with the production key still gets another MRSIGNER sealing key.
PRODUCTION_ISVPRODID: Final = 0
DEV_MODE_ISVPRODID: Final = 1
#: ``sgx_report_body_t``: the body of an EREPORT and of an SGX quote.
REPORT_BODY_SIZE: Final = 384
#: Fields compared between the enclave's own report and its quote, named in the error on a mismatch.
_BODY_FIELDS: Final = (
    "mrenclave",
    "mrsigner",
    "attributes",
    "isvprodid",
    "isvsvn",
    "cpusvn",
    "miscselect",
    "configid",
    "configsvn",
    "isvextprodid",
    "isvfamilyid",
    "report_data",
)


@runtime_checkable
class SgxPlatform(Protocol):
    """What the provider needs from its enclave. Implementations must be safe to call from threads."""

    def report(self, report_data: bytes) -> bytes:
        """This enclave's own report body (384 bytes) over ``report_data``, made inside the enclave
        (EREPORT; Gramine's ``/dev/attestation/report``): the host never carries it."""
        ...

    def quote(self, report_data: bytes) -> bytes:
        """A DCAP SGX quote of this enclave whose REPORTDATA is exactly ``report_data`` (64 bytes).

        The quote comes back through the host: use :func:`attested_quote`, which compares it with
        :meth:`report`, instead of calling this directly."""
        ...

    def sealing_key(self) -> bytes:
        """This enclave's 16-byte SGX sealing key (same platform + same identity → same key)."""
        ...


def check_report_data(report_data: bytes | bytearray) -> bytes:
    """Report data is exactly 64 bytes: silent padding or truncation would bind something else."""
    if not isinstance(report_data, (bytes, bytearray)) or len(report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"report data must be {REPORT_DATA_SIZE} bytes")
    return bytes(report_data)


def attested_quote(platform: SgxPlatform, report_data: bytes) -> bytes:
    """A quote over ``report_data`` whose report body is this enclave's own report, byte for byte.

    The quoting enclave is reached through the host, and the report data travels to it in the clear,
    so the host can answer with a quote from an enclave of its own (on this or another machine) over
    the same report data: adopting its PCK certificate would make the provider believe it runs on
    another platform. The enclave's own EREPORT does not pass through the host; requiring the quote's
    body to equal it (MRENCLAVE, MRSIGNER, attributes, ISVPRODID, ISVSVN, CPUSVN, report data, ...)
    leaves only quotes of this enclave. Another machine running this same enclave could produce an
    equal body only by quoting over the same report data, which the provider never does for data a
    caller chose (its report data is a fresh random nonce or a hash that binds its own answer).
    Every quote the provider makes goes through here.
    """
    rd = check_report_data(report_data)
    own = platform.report(rd)
    if len(own) != REPORT_BODY_SIZE or not hmac.compare_digest(own[320:384], rd):
        raise PlatformError("the platform's own report is not a report body over the report data asked for")
    quote = platform.quote(rd)
    try:
        parsed = parse_quote(quote)
    except QuoteError as e:
        raise PlatformError(
            f"the platform returned an unreadable quote for this enclave: {e.message}"
        ) from None
    if parsed.header.tee_type != TeeType.SGX:
        raise PlatformError("the platform returned a TDX quote for the provider enclave; expected SGX")
    body = parsed.enclave_report
    if not hmac.compare_digest(body.raw, own):
        mine = parse_enclave_report(own)
        differ = [name for name in _BODY_FIELDS if getattr(body, name) != getattr(mine, name)] or ["reserved"]
        raise PlatformError(
            "the quote the platform returned is not of this enclave: its report body differs from the "
            f"enclave's own report in {', '.join(differ)} (a quote relayed from another enclave or machine)"
        )
    return quote


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
