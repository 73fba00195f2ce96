"""What all listeners share: admission (connection shares, rate limit), the fair worker slots, the
request deadline, the worker threads, the metrics, refusal logging, and the fatal path for
:class:`RestartRequired`.

The protocol modules only translate bytes: they decode a request, call :meth:`KeyService.request_key`
and encode the answer or the error. Keeping admission and accounting here means a legacy client and
an HTTP client (and any later listener) are limited, counted and logged the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from ..config import ServerConfig
from ..errors import DeadlineExceeded, ProviderError, RestartRequired
from ..provider import KeyRequest, KeyResponse, Provider
from .limits import Admission, FairGate, RateLimiter, RelaySet, Ticket
from .metrics import OK, Metrics
from .refusals import RefusalLog

log = logging.getLogger("sealing_key_provider.server")

#: Logged for the supervisor (the original's wording: the process exits so it is restarted).
RESTART_MESSAGE: Final = "permission denied; exiting so the supervisor restarts the enclave code=%s reason=%s"


def address_of(peer: str) -> str:
    """The address of a peer as the listeners write it: ``v4:port``, ``[v6]:port``, or a bare
    address (the HTTP layer's, either family)."""
    if peer.startswith("["):
        return peer[1:].partition("]")[0]
    if peer.count(":") == 1:
        return peer.partition(":")[0]
    return peer


class KeyService:
    """The provider behind the limits, shared by all listeners (one event loop)."""

    def __init__(
        self,
        provider: Provider,
        config: ServerConfig,
        metrics: Metrics,
        *,
        on_fatal: Callable[[RestartRequired], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.config = config
        self.metrics = metrics
        relays = RelaySet(config.relay_addresses)
        self.limiter = RateLimiter(
            config.rate_limit_per_second,
            config.rate_limit_burst,
            relays=relays,
            relay_share=config.relay_share,
            clock=clock,
        )
        self.gate = FairGate(config.max_concurrency)
        self.connections = Admission(
            config.max_connections,
            config.max_connections_per_address,
            relays=relays,
            relay_share=config.relay_share,
            on_evict=self._evicted,
        )
        self.refusals = RefusalLog(log)
        # Verification and quote generation are CPU and platform I/O: worker threads, one per slot.
        self.executor = ThreadPoolExecutor(
            max_workers=config.max_concurrency, thread_name_prefix="skp-worker"
        )
        self._on_fatal = on_fatal
        self._work: set[asyncio.Future[KeyResponse]] = set()

    # --- admission ---------------------------------------------------------------------------------

    def deadline(self) -> float:
        """The loop time by which a request arriving now must be answered."""
        return asyncio.get_running_loop().time() + self.config.request_deadline

    @staticmethod
    def remaining(deadline: float) -> float:
        return deadline - asyncio.get_running_loop().time()

    async def admit(self, client: str, deadline: float) -> None:
        """Wait for ``client``'s rate-limit token up to ``deadline``; :class:`RateLimited` if later."""
        await self.limiter.wait(client, self.remaining(deadline))

    def _evicted(self, ticket: Ticket) -> None:
        self.metrics.observe(ticket.listener, "EVICTED", 0.0)
        self.refusals.record(
            ticket.listener,
            "EVICTED",
            ticket.address,
            ticket.address,
            "idle connection closed to make room (all connection slots taken)",
        )

    # --- requests ----------------------------------------------------------------------------------

    async def request_key(self, request: KeyRequest, protocol: str, deadline: float) -> KeyResponse:
        """Run ``request`` through the provider in a worker slot before ``deadline``, counting and
        logging it. The worker slot is held until the worker is done, even when the deadline passes
        first, so slow platforms or PCCS never pile up more threads than slots."""
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            client = address_of(request.peer)
            if self.remaining(deadline) <= 0:
                # Out of time already (a long wait for a rate-limit token): no worker is spent on an
                # answer nobody will read, and the requests queued behind it are not made late.
                raise self._deadline_exceeded()
            await self.gate.acquire(client, self.remaining(deadline))
            loop = asyncio.get_running_loop()
            work = loop.run_in_executor(self.executor, self.provider.handle, request)
            self._work.add(work)
            work.add_done_callback(self._work_done)
            try:
                async with asyncio.timeout_at(deadline):
                    response = await asyncio.shield(work)
            except TimeoutError:
                work.add_done_callback(_consume)
                raise self._deadline_exceeded() from None
        except ProviderError as e:
            self.refused(protocol, e, request.peer, started)
            raise
        except Exception:
            self.metrics.observe(protocol, "INTERNAL_ERROR", time.perf_counter() - started)
            log.exception("internal error protocol=%s peer=%s", protocol, request.peer)
            raise
        finally:
            self.metrics.in_flight.dec()
        self.metrics.observe(protocol, OK, time.perf_counter() - started)
        return response

    def _deadline_exceeded(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"no answer within the {self.config.request_deadline:g}-second request deadline; retry later"
        )

    def _work_done(self, work: asyncio.Future[KeyResponse]) -> None:
        self._work.discard(work)
        self.gate.release()

    # --- refusals ----------------------------------------------------------------------------------

    def refused(self, protocol: str, error: ProviderError, peer: str, started: float | None = None) -> None:
        """Count and log one refused request (one line: code, peer, reason); never key material."""
        elapsed = 0.0 if started is None else time.perf_counter() - started
        self.metrics.observe(protocol, error.code, elapsed)
        log.info("refused protocol=%s code=%s peer=%s reason=%s", protocol, error.code, peer, error.message)
        if isinstance(error, RestartRequired):
            self.fatal(error)

    def refused_cheaply(self, protocol: str, error: ProviderError, peer: str) -> None:
        """Count a refusal that costs its sender nothing (at accept, rate limit, framing, a head that
        never came) and log it summarised: the first of its kind per interval, then a count."""
        self.metrics.observe(protocol, error.code, 0.0)
        self.refusals.record(protocol, error.code, address_of(peer), peer, error.message)

    def fatal(self, error: RestartRequired) -> None:
        log.critical(RESTART_MESSAGE, error.code, error.message)
        self._on_fatal(error)

    async def readiness(self) -> dict[str, str]:
        """The provider's readiness checks, in a thread of their own (they touch the platform)."""
        try:
            return await asyncio.to_thread(self.provider.readiness)
        except RestartRequired as e:
            self.fatal(e)
            raise

    def close(self) -> int:
        """Stop: summaries written, queued work dropped, and running work detached from the loop
        (a worker still blocked in the platform must not call back into a closed loop). Returns how
        many workers were still busy: the process should not wait for them on its way out."""
        self.refusals.flush(force=True)
        busy = len(self._work)
        for work in list(self._work):
            work.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
        return busy


def _consume(future: asyncio.Future[KeyResponse]) -> None:
    """Retrieve the outcome of work nobody waits for any more (no "exception never retrieved")."""
    if not future.cancelled():
        future.exception()
