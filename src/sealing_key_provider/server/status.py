"""The HTTP status of every error code: the HTTP API's business, so the error types carry codes only.

One table, by code. A code missing here is answered as 500 (and a test checks that every code the
server can produce is listed), so a new error type cannot silently reach clients with the wrong class
of status.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from ..errors import ProviderError

_BY_STATUS: Final[dict[int, tuple[str, ...]]] = {
    400: (
        # The quote or the collateral it was checked against is wrong: the TD's problem to fix.
        "QUOTE_MALFORMED",
        "UNSUPPORTED_QUOTE",
        "QUOTE_SIGNATURE_INVALID",
        "QE_REPORT_SIGNATURE_INVALID",
        "QE_REPORT_DATA_MISMATCH",
        "PCK_CHAIN_INVALID",
        "PCK_CERTIFICATE_INVALID",
        "PCK_REVOKED",
        "CERTIFICATE_REVOKED",
        "QE_IDENTITY_MISMATCH",
        "TDX_MODULE_MISMATCH",
        "TCB_LEVEL_NOT_FOUND",
        "FMSPC_MISMATCH",
        "COLLATERAL_MALFORMED",
        "COLLATERAL_SIGNATURE_INVALID",
        "COLLATERAL_EXPIRED",
        "COLLATERAL_NOT_YET_VALID",
        "COLLATERAL_MISMATCH",
        # The request itself.
        "PUBLIC_KEY_INVALID",
        "BAD_REQUEST",
        "UNKNOWN_SCHEME",
    ),
    403: (
        "TCB_STATUS_REJECTED",
        "ADVISORY_DENIED",
        "TD_DEBUG",
        "POLICY_DENIED",
        "PLATFORM_MISMATCH",
        "FRESHNESS_INVALID",
    ),
    404: ("NOT_FOUND",),
    405: ("METHOD_NOT_ALLOWED",),
    408: ("REQUEST_TIMEOUT",),
    413: ("REQUEST_TOO_LARGE",),
    415: ("UNSUPPORTED_MEDIA_TYPE",),
    429: ("RATE_LIMITED",),
    500: ("INTERNAL_ERROR", "CONFIG_INVALID"),
    503: (
        # Try again later: nothing is wrong with the request.
        "COLLATERAL_UNAVAILABLE",
        "COLLATERAL_OUTDATED",
        "CLOCK_BEHIND_FLOOR",
        "OVERLOADED",
        "DEADLINE_EXCEEDED",
        "NOT_READY",
        "PLATFORM_ERROR",
        "RESTART_REQUIRED",
    ),
}

#: Error code → HTTP status.
HTTP_STATUS: Final = MappingProxyType(
    {code: status for status, codes in _BY_STATUS.items() for code in codes}
)
#: Statuses that tell the client to come back (``Retry-After``).
RETRY_STATUSES: Final = frozenset({429, 503})


def http_status(error: ProviderError) -> int:
    """The status of ``error``'s code; 500 for a code the table does not know."""
    return HTTP_STATUS.get(error.code, 500)
