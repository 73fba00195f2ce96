"""The legacy TCP protocol, byte-compatible with the original provider and its clients (dstack).

One request per connection: a 4-byte big-endian length, that many bytes of JSON ``{"quote":[...]}``;
on success a 4-byte length and compact ``{"encrypted_key":[...],"provider_quote":[...]}``, then the
connection is closed. On any failure nothing is written and the connection is closed, exactly what
the original's clients see (they cannot tell a refusal from a crash; the reason goes to our log, one
line with the code and the peer).

Unlike the original: the announced length is bounded before anything is read or allocated, length 0
is refused, reading and writing have a deadline (a client that sends nothing is dropped), open
connections are capped together with the HTTP listener's (more are closed at once and logged as
``OVERLOADED``), each address is
rate-limited (refused connections are closed at once, ``RATE_LIMITED``), and an accept error never
stops the server (asyncio's accept loop logs it and goes on; the original exited with status 0).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Final

from ..errors import BadRequest, ProviderError, RequestTimeout
from ..provider import KeyRequest
from ..wire import LENGTH_PREFIX, check_frame_length, decode_legacy_request, encode_legacy_response
from .service import KeyService

log = logging.getLogger("sealing_key_provider.server.legacy")

PROTOCOL: Final = "legacy"


def _peer(writer: asyncio.StreamWriter) -> tuple[str, str]:
    """(address, "address:port") of the connection's peer."""
    info = writer.get_extra_info("peername")
    if isinstance(info, tuple) and len(info) >= 2:
        host = str(info[0])
        shown = f"[{host}]" if ":" in host else host
        return host, f"{shown}:{info[1]}"
    return "-", "-"


class LegacyServer:
    """The legacy listener on an already bound socket; see the module docstring for the behaviour."""

    def __init__(self, service: KeyService) -> None:
        self.service = service
        self.config = service.config
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def open_connections(self) -> int:
        return len(self._tasks)

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._on_connection, sock=sock)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address, peer = _peer(writer)
        task = asyncio.current_task()
        budget = self.service.connections
        if not budget.acquire():
            self.service.refused(PROTOCOL, budget.refusal(), peer)
            writer.close()
            return
        assert task is not None
        self._tasks.add(task)
        self.service.metrics.open_connections[PROTOCOL].inc()
        try:
            self.service.admit(address)
            await self._serve_one(reader, writer, peer)
        except ProviderError as e:  # rate-limited: closed before anything is read
            self.service.refused(PROTOCOL, e, peer)
        finally:
            budget.release()
            self._tasks.discard(task)
            self.service.metrics.open_connections[PROTOCOL].dec()
            await self._close(writer)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        started = time.perf_counter()
        try:
            quote = await self._read_request(reader)
        except ProviderError as e:
            self.service.refused(PROTOCOL, e, peer, started)
            return
        try:
            response = await self.service.request_key(
                KeyRequest(quote=quote, legacy=True, peer=peer), PROTOCOL
            )
        except ProviderError:
            return  # already counted and logged by the service; the client gets nothing, as before
        frame = encode_legacy_response(response.encrypted_key, response.provider_quote)
        try:
            async with asyncio.timeout(self.config.io_timeout):
                writer.write(frame)
                await writer.drain()
        except TimeoutError:
            log.info("write failed code=%s peer=%s", RequestTimeout.code, peer)
        except OSError as e:
            log.info(
                "write failed code=CONNECTION_LOST peer=%s reason=%s", peer, e.strerror or type(e).__name__
            )

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes:
        """The quote of one request frame, read under one deadline; typed errors for every failure."""
        try:
            async with asyncio.timeout(self.config.io_timeout):
                header = await reader.readexactly(LENGTH_PREFIX.size)
                (length,) = LENGTH_PREFIX.unpack(header)
                check_frame_length(length, self.config.max_request_bytes)
                body = await reader.readexactly(length)
        except TimeoutError:
            raise RequestTimeout(f"no complete request within {self.config.io_timeout:g} s") from None
        except asyncio.IncompleteReadError as e:
            raise BadRequest(
                f"connection closed after {len(e.partial)} of {e.expected} expected bytes"
            ) from None
        except OSError as e:
            raise BadRequest(f"connection failed while reading: {e.strerror or type(e).__name__}") from None
        return decode_legacy_request(body)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        writer.close()
        try:
            async with asyncio.timeout(self.config.io_timeout):
                await writer.wait_closed()
        except (TimeoutError, OSError):
            writer.transport.abort()

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def finish(self, grace: float) -> None:
        """Let in-flight connections finish within ``grace`` seconds, then cancel the rest."""
        pending = set(self._tasks)
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for task in still:
                task.cancel()
            if still:
                log.warning("cancelled %d legacy connection(s) at shutdown", len(still))
                await asyncio.wait(still, timeout=1.0)
        if self._server is not None:
            self._server.close()
            try:
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()
            except TimeoutError:
                pass
