"""The limits that keep one client from starving the rest, each shaped by the attack it stops.

All of them live in the one event loop both (all) listeners run in, so they need no locks; they must
only be used from the loop (every caller is a coroutine or a loop callback).

- **Token bucket per client address** (:class:`RateLimiter`). A TD asks for its key a few times per
  boot, and each request costs several ECDSA verifications and one quote generation, so an address
  asking hundreds of times per second is misbehaving. But one address is often a relay for many TDs
  (dstack's VMM forwards every TD's request from one address), so a request over the rate *waits*
  for its token, up to its deadline, instead of being refused: 48 TDs booting at once behind one
  relay all get their keys, a little later. Only a request that could not get a token before its
  deadline is refused (``RATE_LIMITED``), at once and without waiting. The table of buckets is bounded
  (least recently seen addresses are forgotten) so a flood from many addresses cannot grow memory.
- **Fair worker slots** (:class:`FairGate`). Verification and quote generation run in a few worker
  threads; requests waiting for one take turns by client address (round robin), so one address with
  many queued requests delays another address by at most one request per slot, not by its whole
  queue. A request whose deadline passes before it gets a slot is refused ``OVERLOADED``.
- **Connection shares** (:class:`Admission`). Open connections are a budget across all listeners
  (``max_connections``), and each address may hold only its share of it (``max_connections_per_address``,
  relays ``relay_share`` times more), taken at accept before a byte is read. A host holding hundreds of
  idle or trickling connections therefore holds its share and no more (a newcomer from an address at
  its share replaces that address's oldest idle connection, if it has one). When the whole budget is
  taken (many addresses), a newcomer takes the slot of an *idle* connection (one that has not
  delivered a complete request) of the address holding the most connections: idle and slow
  connections lose their slot to active ones first, and a connection serving a request is never cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from ..errors import Overloaded, RateLimited

#: Client addresses remembered at most; beyond it the least recently seen are forgotten.
DEFAULT_MAX_CLIENTS: Final = 4096


class RelaySet:
    """The addresses (or networks) named in ``server.relay_addresses``."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self._networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self._known: dict[str, bool] = {}

    def __contains__(self, address: object) -> bool:
        if not self._networks or not isinstance(address, str):
            return False
        found = self._known.get(address)
        if found is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                found = False
            else:
                found = any(ip.version == n.version and ip in n for n in self._networks)
            if len(self._known) >= DEFAULT_MAX_CLIENTS:
                self._known.clear()
            self._known[address] = found
        return found


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by client address (``rate`` tokens per second, ``burst`` at most).

    Relays (``relays``) get ``relay_share`` times the rate and the burst.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        relays: RelaySet | None = None,
        relay_share: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst <= 0 or max_clients <= 0 or relay_share <= 0:
            raise ValueError("rate, burst, max_clients and relay_share must be positive")
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._relays = relays if relays is not None else RelaySet()
        self._relay_share = relay_share
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _limits(self, client: str) -> tuple[float, float]:
        share = self._relay_share if client in self._relays else 1
        return self.rate * share, float(self.burst * share)

    def reserve(self, client: str, max_wait: float = 0.0) -> float | None:
        """Take ``client``'s next token: seconds until it is due (0: now), or None (nothing taken) if
        that is more than ``max_wait``. Reserved tokens make the bucket go below zero, so waiters are
        served in order and the wait of the next one includes everyone queued before it."""
        rate, burst = self._limits(client)
        now = self._clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = _Bucket(burst, now)
            self._buckets[client] = bucket
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(burst, bucket.tokens + elapsed * rate)
            bucket.updated = now
            self._buckets.move_to_end(client)
        wait = 0.0 if bucket.tokens >= 1.0 else (1.0 - bucket.tokens) / rate
        if wait > max_wait:
            return None
        bucket.tokens -= 1.0
        return wait

    def allow(self, client: str) -> bool:
        """Take one token for ``client`` now; False when its bucket is empty."""
        return self.reserve(client) is not None

    def refusal(self, client: str) -> RateLimited:
        rate, burst = self._limits(client)
        return RateLimited(
            f"too many requests from {client}: at most {rate:g} per second (bursts of {burst:g}) are "
            "served, and this one could not be served before its deadline"
        )

    async def wait(self, client: str, max_wait: float) -> None:
        """Wait for ``client``'s token (at most ``max_wait`` s); :class:`RateLimited` if it comes later."""
        delay = self.reserve(client, max_wait)
        if delay is None:
            raise self.refusal(client)
        if delay > 0:
            await asyncio.sleep(delay)


class FairGate:
    """At most ``limit`` requests in the workers at once; waiters take turns by client address."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self.in_use = 0
        self._queues: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def acquire(self, client: str, timeout: float) -> None:
        """Take a slot within ``timeout`` seconds; :class:`Overloaded` if none comes in time."""
        if self.in_use < self.limit and not self._queues:
            self.in_use += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(client, deque()).append(future)
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await future
        except TimeoutError:
            self._forget(client, future)
            raise Overloaded(
                f"all {self.limit} request slots stayed busy for {max(0.0, timeout):.3g} s; retry later"
            ) from None
        except BaseException:
            self._forget(client, future)
            raise

    def _forget(self, client: str, future: asyncio.Future[None]) -> None:
        """A waiter gave up: leave the queue, or pass on the slot it was handed meanwhile."""
        if future.done() and not future.cancelled():
            self.release()
            return
        future.cancel()
        queue = self._queues.get(client)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(future)
            if not queue:
                del self._queues[client]

    def release(self) -> None:
        """Free a slot: handed straight to the next address in turn (its oldest waiter), if any."""
        while self._queues:
            client, queue = next(iter(self._queues.items()))
            future = queue.popleft()
            if queue:
                self._queues.move_to_end(client)  # this address goes to the back of the round
            else:
                del self._queues[client]
            if not future.done():
                future.set_result(None)  # the slot passes over: in_use is unchanged
                return
        self.in_use -= 1


class Ticket:
    """One admitted connection's slot. ``active`` while it serves a complete request."""

    __slots__ = ("_abort", "_admission", "active", "address", "listener", "released")

    def __init__(self, admission: Admission, address: str, listener: str, abort: Callable[[], None]) -> None:
        self._admission = admission
        self._abort = abort
        self.address = address
        self.listener = listener
        self.active = False
        self.released = False

    def release(self) -> None:
        """Give the slot back (idempotent: an evicted connection's slot is already free)."""
        if not self.released:
            self.released = True
            self._admission._remove(self)

    def evict(self) -> None:
        self.release()
        self._abort()


class Admission:
    """Connection slots across all listeners, with a share per client address; see the module doc."""

    def __init__(
        self,
        max_connections: int,
        per_address: int,
        *,
        relays: RelaySet | None = None,
        relay_share: int = 1,
        on_evict: Callable[[Ticket], None] | None = None,
    ) -> None:
        if max_connections <= 0 or per_address <= 0 or relay_share <= 0:
            raise ValueError("max_connections, per_address and relay_share must be positive")
        self.limit = max_connections
        self.per_address = per_address
        self._relays = relays if relays is not None else RelaySet()
        self._relay_share = relay_share
        self._on_evict = on_evict
        self._by_address: dict[str, dict[Ticket, None]] = {}
        self.open = 0

    def share(self, address: str) -> int:
        """Connections ``address`` may hold at most."""
        share = self.per_address * (self._relay_share if address in self._relays else 1)
        return min(share, self.limit)

    def held(self, address: str) -> int:
        return len(self._by_address.get(address, ()))

    def admit(self, address: str, listener: str, abort: Callable[[], None]) -> Ticket:
        """A slot for a connection just accepted from ``address``; :class:`Overloaded` if none."""
        held = self.held(address)
        share = self.share(address)
        if held >= share and not self._evict_own(address):
            raise Overloaded(f"{address} holds its share of {share} open connections; try again later")
        if self.open >= self.limit and not self._evict_for(self.held(address)):
            raise Overloaded(f"all {self.limit} connections are busy serving requests; try again later")
        ticket = Ticket(self, address, listener, abort)
        self._by_address.setdefault(address, {})[ticket] = None
        self.open += 1
        return ticket

    def _evict_own(self, address: str) -> bool:
        """An address at its share makes room by closing its own oldest idle connection (a client's
        stale keep-alive pool, say); False when all of them are serving requests."""
        for ticket in self._by_address.get(address, ()):
            if not ticket.active:
                self._evict(ticket)
                return True
        return False

    def _evict(self, ticket: Ticket) -> None:
        ticket.evict()
        if self._on_evict is not None:
            self._on_evict(ticket)

    def _evict_for(self, newcomer_holds: int) -> bool:
        """Free one slot by closing the oldest idle connection of the address holding the most (more
        than the newcomer's address would after admission). False if every candidate is active."""
        for tickets in sorted(self._by_address.values(), key=len, reverse=True):
            if len(tickets) <= newcomer_holds + 1:
                return False
            for ticket in tickets:  # insertion order: oldest first
                if not ticket.active:
                    self._evict(ticket)
                    return True
        return False

    def _remove(self, ticket: Ticket) -> None:
        tickets = self._by_address.get(ticket.address)
        if tickets is None or ticket not in tickets:
            return
        del tickets[ticket]
        if not tickets:
            del self._by_address[ticket.address]
        self.open -= 1
