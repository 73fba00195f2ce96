"""The limits that keep one client from starving the rest: per-address rate limit, global concurrency.

Both listeners run in one asyncio event loop, so both limiters live in that loop's thread and need
no locks; they must only be used from the loop (every caller is a coroutine or a loop callback).

Why these shapes:

- **Token bucket per client address.** A TD (or the VMM forwarding for it) asks for its key a few
  times per boot; a client asking hundreds of times per second is misbehaving, and each request costs
  several ECDSA verifications and one quote generation. The table of buckets is bounded (least
  recently seen addresses are evicted) so a flood from many addresses cannot grow memory without
  bound; an evicted address merely starts again with a full bucket.
- **One concurrency gate for both protocols.** Verification and quote generation run in worker
  threads; the gate bounds how many run at once, so a burst queues briefly instead of piling up
  threads, and a request that cannot get a slot within the wait bound is refused as ``OVERLOADED``
  (fail fast, let the client retry) instead of waiting without limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ..errors import Overloaded, RateLimited

#: Client addresses remembered at most; beyond it the least recently seen are forgotten.
DEFAULT_MAX_CLIENTS: Final = 4096


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by client address (``rate`` tokens per second, ``burst`` at most)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst <= 0 or max_clients <= 0:
            raise ValueError("rate, burst and max_clients must be positive")
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, client: str) -> bool:
        """Take one token for ``client``; False when its bucket is empty."""
        now = self._clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
            self._buckets[client] = bucket
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
            bucket.updated = now
            self._buckets.move_to_end(client)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def check(self, client: str) -> None:
        """:meth:`allow`, raising :class:`RateLimited` when refused."""
        if not self.allow(client):
            raise RateLimited(
                f"too many requests from {client}: at most {self.rate:g} per second "
                f"(bursts of {self.burst}) are served"
            )


class ConcurrencyGate:
    """At most ``limit`` requests in the provider at once; waiting for a slot is bounded by ``wait``."""

    def __init__(self, limit: int, wait: float) -> None:
        if limit <= 0 or wait <= 0:
            raise ValueError("limit and wait must be positive")
        self.limit = limit
        self.wait = wait
        self._semaphore = asyncio.Semaphore(limit)
        self.in_use = 0

    def slot(self) -> _Slot:
        """Hold one slot for the body of the ``async with``; :class:`Overloaded` if none comes in time."""
        return _Slot(self)

    async def _acquire(self) -> None:
        # A free slot is taken without arming a timer: the common case under normal load.
        if not self._semaphore.locked():
            await self._semaphore.acquire()
        else:
            try:
                async with asyncio.timeout(self.wait):
                    await self._semaphore.acquire()
            except TimeoutError:
                raise Overloaded(
                    f"all {self.limit} request slots stayed busy for {self.wait:g} s; retry later"
                ) from None
        self.in_use += 1

    def _release(self) -> None:
        self.in_use -= 1
        self._semaphore.release()


class _Slot:
    """The ``async with`` object of :meth:`ConcurrencyGate.slot` (a plain class: no generator per request)."""

    __slots__ = ("_gate",)

    def __init__(self, gate: ConcurrencyGate) -> None:
        self._gate = gate

    async def __aenter__(self) -> None:
        await self._gate._acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._gate._release()


class ConnectionBudget:
    """Open connections across both listeners (``server.max_connections``), counted at accept.

    A connection over the budget is closed at once, before anything is read: the cheapest possible
    refusal, and the same for both protocols.
    """

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self.open = 0

    def acquire(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open = max(0, self.open - 1)

    def refusal(self) -> Overloaded:
        return Overloaded(f"{self.limit} connections are open; try again later")
