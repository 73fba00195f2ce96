"""HTTP/1.1 for the API: h11's parser, our accept loop, an ASGI app on top.

Why not a ready-made ASGI server: the limits that keep the provider available are connection-level
(a share of the connection budget per address taken at accept, shared with the other listeners; a
deadline for the request head; idle connections evicted first), and every error must reach the client
in the API's JSON shape with a code, framing errors included. uvicorn offers neither through its
public interface. The HTTP grammar itself is h11's (the parser uvicorn uses), so what is ours is the
small loop below: read a head within ``server.io_timeout``, run the app, write its answer, repeat
for kept-alive connections.

- **Head deadline.** A request head must be complete within ``io_timeout`` of the connection opening
  or of the previous response. A client that started a head and stalls gets ``408 REQUEST_TIMEOUT``; an
  idle kept-alive connection is closed silently (it owes us nothing).
- **Framing errors** (bad ``Content-Length``, invalid request line, a head over 16 KiB, broken
  chunked encoding) get the JSON error body and code (``BAD_REQUEST``, ``REQUEST_TOO_LARGE``) and the
  connection is closed. A TLS ClientHello is closed without a byte: no HTTP answer can reach a TLS
  client. All are logged with their code, summarised.
- **Bodies** are read only when the app asks for them; the app bounds their size and time. An answer
  given before the body was read says ``Connection: close``, and the connection lingers briefly,
  dropping input, so the kernel does not reset it before the client has read the answer.
- **Stopping** is the :class:`~.listener.Listener`'s: idle connections are closed at once, active
  ones finish within the grace period, a second signal cuts them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import unquote_to_bytes

import h11

from ..errors import BadRequest, ProviderError, RequestTimeout, RequestTooLarge
from ..wire import error_body
from .listener import Connection, Listener
from .service import KeyService
from .status import http_status

log = logging.getLogger("sealing_key_provider.server.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Largest request head (request line + headers).
MAX_HTTP_HEAD: Final = 16 * 1024
_READ_SIZE: Final = 64 * 1024
#: Seconds a connection closed after an early answer keeps reading (and dropping) the client's input.
LINGER_SECONDS: Final = 2.0
#: First bytes of a TLS handshake record (ClientHello): a TLS client on the plain-HTTP port.
_TLS_RECORD: Final = b"\x16\x03"


class _Closed(Exception):
    """The peer went away (or stalled) where no answer is owed; close quietly."""


def error_bytes(error: ProviderError) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response carrying ``error`` in the API's JSON shape."""
    status = http_status(error)
    body = json.dumps(error_body(error.code, error.message)).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "cache-control: no-store\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _framing_error(error: h11.RemoteProtocolError) -> ProviderError:
    if error.error_status_hint == 431:
        return RequestTooLarge(f"request head is larger than {MAX_HTTP_HEAD} bytes")
    return BadRequest(f"malformed HTTP request: {str(error)[:120]}")


class HttpServer(Listener):
    """The HTTP listener running ``app`` (ASGI) over ``service``'s admission and limits."""

    def __init__(self, service: KeyService, app: AsgiApp, name: str = "http", scheme: str = "http") -> None:
        super().__init__(name, service, self._serve)
        self.app = app
        self.scheme = scheme
        self.timeout = service.config.io_timeout

    async def _serve(self, conn: Connection) -> None:
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HTTP_HEAD)
        served = 0
        while True:
            conn.ticket.active = False
            try:
                request = await self._read_head(conn, h, served)
            except _Closed:
                return
            except ProviderError as e:
                await self._refuse(conn, e)
                return
            if request is None:
                return
            try:
                exchange = _Exchange(self, conn, h, request)
            except h11.RemoteProtocolError as e:
                await self._refuse(conn, _framing_error(e))
                return
            try:
                await exchange.run()
            except _Closed:
                return
            served += 1
            if not exchange.reusable():
                await self._linger(conn)
                return
            h.start_next_cycle()

    async def _refuse(self, conn: Connection, error: ProviderError) -> None:
        """Answer a framing error (counted, logged summarised) and close."""
        if conn.ticket.released:
            return  # evicted to make room (counted as such): the cut is what broke the framing
        self.service.refused_cheaply(self.name, error, conn.peer)
        try:
            await self._write(conn, error_bytes(error))
        except _Closed:
            return
        await self._linger(conn)

    async def _linger(self, conn: Connection) -> None:
        """Close after an answer while the client may still be sending (an early error): stop
        writing, then read and drop what comes for a moment. Closing with unread input would make
        the kernel send a reset, which can destroy our answer before the client reads it."""
        if conn.writer.transport.is_closing() or not conn.writer.can_write_eof():
            return
        try:
            conn.writer.write_eof()
            async with asyncio.timeout(min(LINGER_SECONDS, self.timeout)):
                left = self.service.config.max_request_bytes + MAX_HTTP_HEAD
                while left > 0:
                    data = await conn.reader.read(_READ_SIZE)
                    if not data:
                        return
                    left -= len(data)
        except (TimeoutError, OSError):
            return

    async def _read_head(self, conn: Connection, h: h11.Connection, served: int) -> h11.Request | None:
        """The next request head within the head deadline; None when the client closed cleanly."""
        started = bool(h.trailing_data[0])
        first = served == 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    event = h.next_event()
                    if isinstance(event, h11.Request):
                        return event
                    if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                        return None
                    data = await conn.reader.read(_READ_SIZE)
                    if first and not started and data.startswith(_TLS_RECORD):
                        self.service.refused_cheaply(
                            self.name, BadRequest("TLS handshake on the plain-HTTP listener"), conn.peer
                        )
                        raise _Closed
                    started = started or bool(data)
                    h.receive_data(data)
        except TimeoutError:
            if not started:
                if served:
                    log.debug("closing idle kept-alive connection peer=%s", conn.peer)
                    raise _Closed from None
                self.service.refused_cheaply(
                    self.name, RequestTimeout(f"nothing received within {self.timeout:g} s"), conn.peer
                )
                raise _Closed from None
            raise RequestTimeout(f"no complete request head within {self.timeout:g} s") from None
        except h11.RemoteProtocolError as e:
            raise _framing_error(e) from None
        except OSError:
            raise _Closed from None

    async def _write(self, conn: Connection, data: bytes) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                conn.writer.write(data)
                await conn.writer.drain()
        except (TimeoutError, OSError):
            conn.writer.transport.abort()
            raise _Closed from None


class _Exchange:
    """One request and its response on a connection: the ASGI ``receive`` and ``send`` of the app."""

    def __init__(self, server: HttpServer, conn: Connection, h: h11.Connection, request: h11.Request) -> None:
        self.server = server
        self.conn = conn
        self.h = h
        self.request = request
        self.head_only = request.method == b"HEAD"
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.started = False
        self.complete = False
        self.broken = False
        self.finished = asyncio.Event()
        # A request without a body (GET) ends right here: h11 has its EndOfMessage already.
        self.pending: h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED] | None = h.next_event()
        self.body_done = isinstance(self.pending, h11.EndOfMessage)
        conn.ticket.active = self.body_done

    def scope(self) -> Scope:
        target = self.request.target
        path, _, query = target.partition(b"?")
        sock = self.conn.writer.get_extra_info("sockname")
        client = self.conn.writer.get_extra_info("peername")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": self.request.http_version.decode("ascii", "replace"),
            "server": tuple(sock[:2]) if isinstance(sock, tuple) else None,
            "client": tuple(client[:2]) if isinstance(client, tuple) else None,
            "scheme": self.server.scheme,
            "method": self.request.method.decode("ascii", "replace"),
            "root_path": "",
            "path": unquote_to_bytes(path).decode("utf-8", "replace"),
            "raw_path": path,
            "query_string": query,
            "headers": [(name, value) for name, value in self.request.headers],
            "state": {},
        }

    async def run(self) -> None:
        try:
            await self.server.app(self.scope(), self.receive, self.send)
        except _Closed:
            self.broken = True
        except Exception:
            log.exception("internal error code=INTERNAL_ERROR peer=%s", self.conn.peer)
            self.broken = True
        finally:
            self.finished.set()
        if not self.started and not self.broken:
            # The app returned without answering (it should not): the client still gets an answer.
            await self._raw(error_bytes(ProviderError("the request produced no response")))
            self.broken = True
        elif self.started and not self.complete:
            self.broken = True

    def reusable(self) -> bool:
        """Whether the connection can carry another request (both sides done, nobody asked to close)."""
        return (
            not self.broken
            and self.h.our_state is h11.DONE
            and self.h.their_state is h11.DONE
            and not self.conn.writer.transport.is_closing()
        )

    async def receive(self) -> Message:
        if self.body_done:
            await self.finished.wait()
            return {"type": "http.disconnect"}
        h = self.h
        if h.they_are_waiting_for_100_continue:
            await self._raw(h.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
        try:
            while True:
                event, self.pending = (self.pending or h.next_event()), None
                if isinstance(event, h11.Data):
                    return {"type": "http.request", "body": bytes(event.data), "more_body": True}
                if isinstance(event, h11.EndOfMessage):
                    self.body_done = True
                    self.conn.ticket.active = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    self.broken = True
                    return {"type": "http.disconnect"}
                data = await self.conn.reader.read(_READ_SIZE)
                h.receive_data(data)
        except h11.RemoteProtocolError as e:
            self.broken = True
            raise _framing_error(e) from None
        except OSError:
            self.broken = True
            return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = int(message["status"])
            self.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            return
        if kind != "http.response.body" or self.complete:
            return
        out = b""
        if not self.started:
            self.started = True
            self.conn.ticket.active = True
            if not self.body_done:
                # Answered before the body was read (an early error): the rest of the body is not
                # worth reading, so the connection ends after this answer and the client knows it.
                self.headers.append((b"connection", b"close"))
            response = h11.Response(
                status_code=self.status, headers=self.headers, reason=_reason(self.status)
            )
            out += self.h.send(response) or b""
        body = bytes(message.get("body", b""))
        if body and not self.head_only:
            out += self.h.send(h11.Data(data=body)) or b""
        if not message.get("more_body", False):
            out += self.h.send(h11.EndOfMessage()) or b""
            self.complete = True
        await self._raw(out)

    async def _raw(self, data: bytes) -> None:
        if data:
            await self.server._write(self.conn, data)


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""
