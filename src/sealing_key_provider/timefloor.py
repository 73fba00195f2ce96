"""A floor for "now": the earliest time the provider still believes, and it never goes back.

Under Gramine the clock is the host's. Setting it back would revive expired collateral (an old CRL
that does not yet list a revoked PCK certificate, a TCB info from before a TCB recovery) and keep
freshness tokens valid past their window. The provider cannot get a trusted clock, but it knows
times that have certainly passed: its own build time, the latest ``issueDate`` / ``thisUpdate`` of
any collateral it has accepted, and the clock readings it has already acted on. A clock that reads
earlier than the floor was set back, and nothing is verified against it.

This is a floor, not a trusted clock: a host that holds the clock still from the start, or moves it
only within what the provider has not yet seen, is not detected. What it bounds is how far back the
host can take the provider; ``policy.min_tcb_evaluation_data_number`` bounds which collateral is
acceptable at all, whatever the clock says.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Final

from .errors import ClockBehindFloor

#: The release's build time (Unix seconds): no genuine clock running this code reads earlier.
BUILD_TIME: Final = 1_767_225_600  # 2026-01-01T00:00:00Z
#: How far a clock reading may fall below the last one acted on (NTP steps a clock back by less).
#: Readings are kept as ``now - CLOCK_STEP_TOLERANCE``, so a small step back is not an attack.
CLOCK_STEP_TOLERANCE: Final = 5


def _utc(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TimeFloor:
    """The floor, raised by every clock reading acted on and every collateral accepted. Thread-safe."""

    __slots__ = ("_floor", "_lock")

    def __init__(self, floor: int = BUILD_TIME) -> None:
        self._floor = int(floor)
        self._lock = threading.Lock()

    @property
    def value(self) -> int:
        return self._floor

    def check(self, now: float) -> int:
        """``now`` as whole seconds if it is not below the floor; raises :class:`ClockBehindFloor`.

        The reading then becomes part of the floor (less the step tolerance)."""
        seconds = int(now)
        with self._lock:
            floor = self._floor
            if seconds < floor:
                raise ClockBehindFloor(
                    f"the clock reads {_utc(seconds)}, earlier than {_utc(floor)}, a time that has certainly "
                    "passed (the build time, the newest collateral accepted or a clock reading acted on): "
                    "the host set the clock back; nothing is verified until it is right"
                )
            self._floor = max(floor, seconds - CLOCK_STEP_TOLERANCE)
        return seconds

    def raise_to(self, t: int) -> None:
        """A time known to have passed (e.g. the issue date of collateral that was just accepted)."""
        with self._lock:
            self._floor = max(self._floor, int(t))


__all__ = ["BUILD_TIME", "CLOCK_STEP_TOLERANCE", "TimeFloor"]
