"""A small single-threaded load generator for the provider benchmark (legacy TCP and HTTP/1.1).

Why not httpx in threads: a Python HTTP client costs about as much CPU per request as the server's
own network layer, and 32 client threads fight over one GIL; on a two-core machine the measurement
then says as much about the client as about the server. This generator keeps ``concurrency``
requests in flight from one ``selectors`` loop with pre-built request bytes, so nearly all the CPU it
takes is the kernel's: what ``wrk`` would do, without a native tool.

Legacy: one connection per request (the protocol closes it after the answer). HTTP: one keep-alive
connection per in-flight slot. Each answer is read in full and checked (legacy: a complete frame;
HTTP: status 200 and a complete ``Content-Length`` body); any failure stops the run with an error.
"""

from __future__ import annotations

import selectors
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Final

_LENGTH: Final = struct.Struct(">I")
_RECV: Final = 256 * 1024


def legacy_frame(body: bytes) -> bytes:
    return _LENGTH.pack(len(body)) + body


def http_request(body: bytes, host: str, path: str = "/v1/keys") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


@dataclass
class _Slot:
    sock: socket.socket | None = None
    out: memoryview = field(default_factory=lambda: memoryview(b""))
    buf: bytearray = field(default_factory=bytearray)
    started: float = 0.0
    source: str | None = None


class LoadError(RuntimeError):
    """A request of the run failed (refused, cut short, or answered with an error)."""


def _complete(protocol: str, buf: bytearray) -> bool:
    """Whether ``buf`` holds one whole answer; raises :class:`LoadError` for a refusal."""
    if protocol == "legacy":
        return len(buf) >= 4 and len(buf) >= 4 + _LENGTH.unpack_from(buf)[0]
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = bytes(buf[:end]).lower()
    if not head.startswith(b"http/1.1 200"):
        raise LoadError(f"HTTP answer: {head.splitlines()[0].decode(errors='replace')}")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name == b"content-length":
            return len(buf) >= end + 4 + int(value)
    raise LoadError("HTTP answer without content-length")


def run(
    protocol: str,
    concurrency: int,
    requests: list[bytes],
    address: tuple[str, int],
    sources: list[str] | None = None,
) -> tuple[float, list[float]]:
    """Send every pre-built request (frames or HTTP requests) with ``concurrency`` in flight.

    ``sources``: loopback source addresses, one per in-flight slot in turn (127.0.0.x: each client
    its own address, as TDs behind their own interfaces would be). Returns (wall seconds, per-request
    latencies in seconds)."""
    selector = selectors.DefaultSelector()
    pending = iter(requests)
    latencies: list[float] = []
    slots = 0

    def start(slot: _Slot) -> bool:
        request = next(pending, None)
        if request is None:
            if slot.sock is not None:
                selector.unregister(slot.sock)
                slot.sock.close()
                slot.sock = None
            return False
        if slot.sock is None:
            source = (slot.source, 0) if slot.source else None
            sock = socket.create_connection(address, source_address=source)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            slot.sock = sock
            selector.register(sock, selectors.EVENT_READ, slot)
        slot.buf = bytearray()
        slot.started = time.perf_counter()
        slot.out = memoryview(request)[slot.sock.send(request) :]
        if slot.out:
            selector.modify(slot.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, slot)
        return True

    def new_slot() -> _Slot:
        nonlocal slots
        slots += 1
        return _Slot(source=sources[(slots - 1) % len(sources)] if sources else None)

    t0 = time.perf_counter()
    active = sum(start(new_slot()) for _ in range(concurrency))
    try:
        while active:
            events = selector.select(timeout=30.0)
            if not events:
                raise LoadError("no progress for 30 s")
            for key, mask in events:
                slot: _Slot = key.data
                sock = slot.sock
                assert sock is not None
                if mask & selectors.EVENT_WRITE and slot.out:
                    slot.out = slot.out[sock.send(slot.out) :]
                    if not slot.out:
                        selector.modify(sock, selectors.EVENT_READ, slot)
                if not mask & selectors.EVENT_READ:
                    continue
                data = sock.recv(_RECV)
                if not data:
                    raise LoadError(f"{protocol} connection closed before a complete answer")
                slot.buf += data
                if not _complete(protocol, slot.buf):
                    continue
                latencies.append(time.perf_counter() - slot.started)
                if protocol == "legacy":  # one request per connection
                    selector.unregister(sock)
                    sock.close()
                    slot.sock = None
                if not start(slot):
                    active -= 1
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        selector.close()
    return time.perf_counter() - t0, latencies
