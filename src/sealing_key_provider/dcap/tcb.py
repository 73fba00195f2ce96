"""Intel's TCB status vocabulary: the one enum the verifier returns and the policy, the client's trust
and the configuration accept.

The values are Intel's names exactly as they appear in TCB info JSON, QVL results, configuration files
and the wire (``tcb_status`` of a v1 answer), so ``str(status)`` is the wire string.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class TcbStatus(StrEnum):
    """Intel's TCB status names, as in TCB info JSON and QVL results."""

    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    CONFIGURATION_NEEDED = "ConfigurationNeeded"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
    REVOKED = "Revoked"


#: TcbStatus by wire string (a dict lookup; calling the enum costs ~0.5 us on the verifier's path).
TCB_STATUS_BY_NAME: Final[dict[str, TcbStatus]] = {s.value: s for s in TcbStatus}
#: The statuses a QE identity or TDX module identity level may carry.
IDENTITY_TCB_STATUSES: Final = frozenset({TcbStatus.UP_TO_DATE, TcbStatus.OUT_OF_DATE, TcbStatus.REVOKED})

__all__ = ["IDENTITY_TCB_STATUSES", "TCB_STATUS_BY_NAME", "TcbStatus"]
