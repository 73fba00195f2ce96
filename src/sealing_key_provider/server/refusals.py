"""Refusal lines an attacker cannot multiply: the first of a kind is logged, the rest are counted.

Refusals that cost the attacker nothing (connections over a share, rate-limited requests, heads that
never arrive, framing garbage) would otherwise be one log line each: thousands of lines per second
from one host. Here each (listener, code) pair writes its first refusal at once, with the peer and
the reason, and then one summary line per interval: how many more, from how many addresses. The log
grows by at most two lines per interval per reason whatever the attack's rate, while an operator
still sees at once that something is being refused and why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

#: Seconds one summary covers.
DEFAULT_INTERVAL: Final = 10.0
#: Distinct addresses counted exactly per summary; beyond it the count is a lower bound.
_MAX_ADDRESSES: Final = 1024


@dataclass(slots=True)
class _Window:
    started: float
    count: int = 0
    addresses: set[str] = field(default_factory=set)


class RefusalLog:
    """Per-(listener, code) windows of refusals; :meth:`flush` writes the summaries that are due."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self.interval = interval
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}

    def record(self, protocol: str, code: str, address: str, peer: str, reason: str) -> None:
        now = self._clock()
        key = (protocol, code)
        window = self._windows.get(key)
        if window is not None and now - window.started >= self.interval:
            self._summarise(key, window, now)
            window = None
        if window is None:
            self._windows[key] = _Window(now)
            self._log.info("refused protocol=%s code=%s peer=%s reason=%s", protocol, code, peer, reason)
            return
        window.count += 1
        if len(window.addresses) < _MAX_ADDRESSES:
            window.addresses.add(address)

    def flush(self, *, force: bool = False) -> None:
        """Write the summaries of windows that are over (all of them with ``force``, at shutdown)."""
        now = self._clock()
        for key, window in list(self._windows.items()):
            if force or now - window.started >= self.interval:
                self._summarise(key, window, now)

    def _summarise(self, key: tuple[str, str], window: _Window, now: float) -> None:
        del self._windows[key]
        if window.count:
            self._log.info(
                "refused protocol=%s code=%s count=%d addresses=%d seconds=%d (summary of refusals after "
                "the first one logged)",
                key[0],
                key[1],
                window.count,
                len(window.addresses),
                round(now - window.started),
            )
