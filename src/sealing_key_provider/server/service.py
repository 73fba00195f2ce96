"""What both protocols share: admission (rate limit), the concurrency gate, the worker threads, the
metrics, one log line per refusal, and the fatal path for :class:`RestartRequired`.

The protocol modules only translate bytes: they decode a request, call :meth:`KeyService.request_key`
and encode the answer or the error. Keeping admission and accounting here means a legacy client and
an HTTP client are limited, counted and logged the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from ..config import ServerConfig
from ..errors import ProviderError, RestartRequired
from ..provider import KeyRequest, KeyResponse, Provider
from .limits import ConcurrencyGate, ConnectionBudget, RateLimiter
from .metrics import OK, Metrics

log = logging.getLogger("sealing_key_provider.server")

#: Logged for the supervisor (the original's wording: the process exits so it is restarted).
RESTART_MESSAGE: Final = "permission denied; exiting so the supervisor restarts the enclave code=%s reason=%s"


class KeyService:
    """The provider behind the limits, shared by the legacy and HTTP listeners (one event loop)."""

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
        self.limiter = RateLimiter(config.rate_limit_per_second, config.rate_limit_burst, clock=clock)
        # Waiting for a slot is bounded by the I/O timeout: a client would give up about then anyway.
        self.gate = ConcurrencyGate(config.max_concurrency, config.io_timeout)
        self.connections = ConnectionBudget(config.max_connections)
        # Verification and quote generation are CPU and platform I/O: worker threads, one per slot.
        self.executor = ThreadPoolExecutor(
            max_workers=config.max_concurrency, thread_name_prefix="skp-worker"
        )
        self._on_fatal = on_fatal

    def admit(self, client: str) -> None:
        """Rate-limit ``client`` (an address); raises :class:`~..errors.RateLimited`."""
        self.limiter.check(client)

    async def request_key(self, request: KeyRequest, protocol: str) -> KeyResponse:
        """Run ``request`` through the provider under the concurrency gate, counting and logging it."""
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            async with self.gate.slot():
                loop = asyncio.get_running_loop()
                response = await loop.run_in_executor(self.executor, self.provider.handle, request)
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

    def refused(self, protocol: str, error: ProviderError, peer: str, started: float | None = None) -> None:
        """Count and log one refused request (one line: code, peer, reason); never key material."""
        elapsed = 0.0 if started is None else time.perf_counter() - started
        self.metrics.observe(protocol, error.code, elapsed)
        log.info("refused protocol=%s code=%s peer=%s reason=%s", protocol, error.code, peer, error.message)
        if isinstance(error, RestartRequired):
            self.fatal(error)

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

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
