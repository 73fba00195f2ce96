"""uvicorn's HTTP/1.1 protocol with two things uvicorn lacks: our connection budget and a deadline for
the request head.

- **One connection budget for both listeners.** ``server.max_connections`` counts legacy and HTTP
  connections together; an HTTP connection over it is refused like a legacy one: closed at accept,
  before anything is read, and logged as ``OVERLOADED``. (uvicorn's ``limit_concurrency`` counts only
  its own connections and answers with a plain-text 503, outside our JSON error shape.)
- **A deadline for the request head.** uvicorn waits without limit for the first request of a new
  connection and for the head of the next one on a kept-alive connection, so idle or trickling clients
  could hold every slot of the budget (and, with the shared budget, starve the legacy protocol). Here a
  request head must be complete within ``server.io_timeout`` of the connection opening or of the
  previous response; otherwise the connection is closed (``REQUEST_TIMEOUT`` if the client had started
  sending, silently if it was an idle kept-alive connection). Bodies have their own deadline in
  :func:`~.http_api.read_body`.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import RequestTimeout
from .service import KeyService

log = logging.getLogger("sealing_key_provider.server.http")

PROTOCOL = "http"


def budgeted_protocol(service: KeyService) -> type[asyncio.Protocol]:
    """An :class:`H11Protocol` subclass bound to ``service``'s connection budget, metrics and timeout."""
    deadline = service.config.io_timeout

    class BudgetedH11Protocol(H11Protocol):
        _counted = False
        _served = 0
        _partial = False
        _head_timer: asyncio.TimerHandle | None = None
        _peer = "-"

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            peer = transport.get_extra_info("peername")
            self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "-"
            budget = service.connections
            if not budget.acquire():
                service.refused(PROTOCOL, budget.refusal(), self._peer)
                transport.close()
                return
            self._counted = True
            service.metrics.open_connections[PROTOCOL].inc()
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._partial = False
            self._head_timer = self.loop.call_later(deadline, self._head_timeout)

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being served; on_response_complete re-arms
            if self._served and not self._partial:
                log.debug("closing idle kept-alive connection peer=%s", self._peer)
            else:
                service.refused(
                    PROTOCOL, RequestTimeout(f"no complete request head within {deadline:g} s"), self._peer
                )
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            if not self._counted:
                return
            self._partial = True
            super().data_received(data)

        def on_response_complete(self) -> None:
            self._served += 1
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if not self._counted:
                return  # refused at accept: uvicorn's state for it was never set up
            self._counted = False
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            service.connections.release()
            service.metrics.open_connections[PROTOCOL].dec()
            super().connection_lost(exc)

    return BudgetedH11Protocol
