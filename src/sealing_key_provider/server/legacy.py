"""The legacy TCP protocol, byte-compatible with the original provider and its clients (dstack).

One request per connection: a 4-byte big-endian length, that many bytes of JSON ``{"quote":[...]}``;
on success a 4-byte length and compact ``{"encrypted_key":[...],"provider_quote":[...]}``, then the
connection is closed. On any failure nothing is written and the connection is closed, exactly what
the original's clients see (they cannot tell a refusal from a crash; the reason goes to our log, one
line with the code and the peer).

Unlike the original: the announced length is bounded before anything is read or allocated, length 0
is refused, reading and writing have a deadline (a client that sends nothing is dropped), connections
are admitted by the shared :class:`~.listener.Listener` (per-address shares of one budget across all
listeners), a request over its address's rate waits for its token instead of being dropped (dstack
does not retry, and its VMM relays every TD's request from one address), every request is answered
within ``server.request_deadline``, and an accept error never stops the server (asyncio's accept loop
logs it and goes on; the original exited with status 0).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from ..errors import BadRequest, ProviderError, RequestTimeout
from ..provider import KeyRequest
from ..wire import LENGTH_PREFIX, check_frame_length, decode_legacy_request, encode_legacy_response
from .listener import Connection, Listener
from .service import KeyService

log = logging.getLogger("sealing_key_provider.server.legacy")

PROTOCOL: Final = "legacy"


class LegacyServer(Listener):
    """The legacy listener; see the module docstring for the behaviour."""

    def __init__(self, service: KeyService) -> None:
        super().__init__(PROTOCOL, service, self._serve_one)
        self.config = service.config

    async def _serve_one(self, conn: Connection) -> None:
        deadline = self.service.deadline()
        try:
            quote = await self._read_request(conn.reader)
        except ProviderError as e:
            # Framing: costs the sender nothing and comes before any rate limit, so summarised. A
            # connection evicted to make room was counted as such already.
            if not conn.ticket.released:
                self.service.refused_cheaply(PROTOCOL, e, conn.peer)
            return
        conn.ticket.active = True
        try:
            await self.service.admit(conn.address, deadline)
        except ProviderError as e:  # rate-limited: no token before the deadline; closed without a byte
            self.service.refused_cheaply(PROTOCOL, e, conn.peer)
            return
        try:
            response = await self.service.request_key(
                KeyRequest(quote=quote, legacy=True, peer=conn.peer), PROTOCOL, deadline
            )
        except ProviderError:
            return  # already counted and logged by the service; the client gets nothing, as before
        frame = encode_legacy_response(response.encrypted_key, response.provider_quote)
        try:
            async with asyncio.timeout(self.config.io_timeout):
                conn.writer.write(frame)
                await conn.writer.drain()
        except TimeoutError:
            log.info("write failed code=%s peer=%s", RequestTimeout.code, conn.peer)
        except OSError as e:
            log.info(
                "write failed code=CONNECTION_LOST peer=%s reason=%s",
                conn.peer,
                e.strerror or type(e).__name__,
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
