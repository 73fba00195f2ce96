"""One listening socket of the provider, whatever protocol it speaks: accept, admission at accept,
one task per connection, and the two kinds of stop.

Every listener (legacy TCP, HTTP, and any later one such as HTTPS) takes its connections through
the same :class:`~.limits.Admission`: the slot and the per-address share are taken at accept, before
a byte is read (and before a TLS handshake, which :meth:`Listener.start` runs after admission when
given a context), so no listener can be used to starve another. A refused connection is closed at
once and counted, its log line summarised (:mod:`.refusals`).

Stopping: :meth:`Listener.stop_accepting` closes the socket; :meth:`Listener.finish` closes idle
connections (no complete request yet) at once and lets active ones finish within a grace period;
:meth:`Listener.abort` (a second SIGTERM, or a fatal error) cuts everything now.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..errors import BadRequest, ProviderError
from .limits import Ticket
from .service import KeyService

log = logging.getLogger("sealing_key_provider.server")


@dataclass(slots=True)
class Connection:
    """An admitted connection as a protocol handler sees it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    #: The client's IP address (rate limits, shares) and ``address:port`` (logs).
    address: str
    peer: str
    ticket: Ticket


Handler = Callable[[Connection], Awaitable[None]]


def peer_of(writer: asyncio.StreamWriter) -> tuple[str, str]:
    """(address, "address:port") of the connection's peer."""
    info = writer.get_extra_info("peername")
    if isinstance(info, tuple) and len(info) >= 2:
        host = str(info[0])
        shown = f"[{host}]" if ":" in host else host
        return host, f"{shown}:{info[1]}"
    return "-", "-"


class Listener:
    """Accepts connections for one protocol (``name``: its label in logs and metrics)."""

    def __init__(self, name: str, service: KeyService, handler: Handler) -> None:
        self.name = name
        self.service = service
        self.handler = handler
        self._server: asyncio.Server | None = None
        self._tls: ssl.SSLContext | None = None
        self._connections: dict[asyncio.Task[None], Connection] = {}

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def start(self, sock: socket.socket, tls: ssl.SSLContext | None = None) -> None:
        """Serve on an already bound, listening socket (TLS, if given, after admission)."""
        self._tls = tls
        self._server = await asyncio.start_server(self._on_connection, sock=sock, limit=64 * 1024)

    def set_tls(self, tls: ssl.SSLContext) -> None:
        """Use ``tls`` for new connections (the RA-TLS certificate is re-made with every attestation);
        open ones keep theirs. One assignment, so a worker thread may call it."""
        self._tls = tls

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address, peer = peer_of(writer)
        service = self.service
        try:
            ticket = service.connections.admit(address, self.name, writer.transport.abort)
        except ProviderError as e:
            service.refused_cheaply(self.name, e, peer)
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        conn = Connection(reader, writer, address, peer, ticket)
        self._connections[task] = conn
        gauge = service.metrics.open_connections.get(self.name)
        if gauge is not None:
            gauge.inc()
        try:
            if self._tls is not None:
                await self._handshake(conn)
            await self.handler(conn)
        except ProviderError as e:
            service.refused_cheaply(self.name, e, peer)
        except (ConnectionError, TimeoutError):
            pass
        except asyncio.CancelledError:
            # Cut at shutdown (abort). The task ends normally: asyncio's stream callback would log a
            # cancelled connection task as an error with a traceback.
            pass
        except Exception:
            log.exception("internal error code=INTERNAL_ERROR protocol=%s peer=%s", self.name, peer)
        finally:
            ticket.release()
            self._connections.pop(task, None)
            if gauge is not None:
                gauge.dec()
            await self._close(writer)

    async def _handshake(self, conn: Connection) -> None:
        assert self._tls is not None
        try:
            await conn.writer.start_tls(self._tls, ssl_handshake_timeout=self.service.config.io_timeout)
        except (ssl.SSLError, OSError, TimeoutError) as e:
            raise BadRequest(f"TLS handshake failed: {type(e).__name__}") from None

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        if writer.transport.is_closing():
            writer.transport.abort()
            return
        writer.close()
        try:
            async with asyncio.timeout(self.service.config.io_timeout):
                await writer.wait_closed()
        except (TimeoutError, OSError):
            writer.transport.abort()

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def finish(self, grace: float) -> None:
        """Close idle connections now; let active ones finish within ``grace`` s, then cut them."""
        for conn in list(self._connections.values()):
            if not conn.ticket.active:
                conn.writer.transport.abort()
        pending = set(self._connections)
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            if still:
                log.warning("cancelled %d %s connection(s) at shutdown", len(still), self.name)
                self.abort()
                await asyncio.wait(still, timeout=1.0)
        await self._wait_closed()

    def abort(self) -> None:
        """Cut every connection now (a second stop signal, or a fatal error)."""
        for task, conn in list(self._connections.items()):
            conn.writer.transport.abort()
            task.cancel()

    async def _wait_closed(self) -> None:
        if self._server is not None:
            self._server.close()
            try:
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()
            except TimeoutError:
                pass
