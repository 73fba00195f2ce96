"""A minimal CBOR (RFC 8949) encoder and decoder for exactly what RA-TLS needs.

Gramine's standard RA-TLS extension is CBOR: a tag wrapping an array of two byte strings, the second
of which is a serialized map of text keys to byte strings, one of which holds a serialized array of an
integer and a byte string. So this module handles unsigned and negative integers, byte and text
strings, arrays, maps and tags, in definite-length form only, and nothing else (no floats, no simple
values, no indefinite lengths). A dependency for that would enter the enclave's TCB for no gain.

Encoding is deterministic (shortest argument form, map keys in the given order). Decoding is bounded:
every length is checked against the bytes that remain before anything is allocated, nesting and item
counts are capped, and the input must be exactly one item. Every failure is a :class:`CborError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

MAX_DEPTH: Final = 16
MAX_ITEMS: Final = 1024

_UINT: Final = 0
_NINT: Final = 1
_BYTES: Final = 2
_TEXT: Final = 3
_ARRAY: Final = 4
_MAP: Final = 5
_TAG: Final = 6


class CborError(ValueError):
    """The bytes are not CBOR of the supported subset (the message says where and why)."""


@dataclass(frozen=True, slots=True)
class Tag:
    """A tagged item (major type 6)."""

    tag: int
    value: Value


Value = int | bytes | str | list["Value"] | dict["Value", "Value"] | Tag


def _head(major: int, argument: int) -> bytes:
    if argument < 0:
        raise CborError("negative argument")
    if argument < 24:
        return bytes([major << 5 | argument])
    for extra, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        size = struct.calcsize(fmt)
        if argument < 1 << (8 * size):
            return bytes([major << 5 | extra]) + struct.pack(fmt, argument)
    raise CborError("integer does not fit in 64 bits")


def encode(value: Value) -> bytes:
    """The deterministic CBOR encoding of ``value``."""
    out = bytearray()
    _encode(value, out, 0)
    return bytes(out)


def _encode(value: Value, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CborError("nesting too deep")
    if isinstance(value, bool):
        raise CborError("booleans are not supported")
    if isinstance(value, int):
        out += _head(_UINT, value) if value >= 0 else _head(_NINT, -1 - value)
    elif isinstance(value, bytes):
        out += _head(_BYTES, len(value)) + value
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out += _head(_TEXT, len(raw)) + raw
    elif isinstance(value, list):
        out += _head(_ARRAY, len(value))
        for item in value:
            _encode(item, out, depth + 1)
    elif isinstance(value, dict):
        out += _head(_MAP, len(value))
        for key, item in value.items():
            _encode(key, out, depth + 1)
            _encode(item, out, depth + 1)
    elif isinstance(value, Tag):
        out += _head(_TAG, value.tag)
        _encode(value.value, out, depth + 1)
    else:
        raise CborError(f"cannot encode {type(value).__name__}")


def decode(data: bytes, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS) -> Value:
    """Exactly one CBOR item from ``data`` (trailing bytes are an error)."""
    reader = _Reader(bytes(data), max_depth, max_items)
    value = reader.item(0)
    if reader.pos != len(reader.data):
        raise CborError(f"{len(reader.data) - reader.pos} trailing bytes after the CBOR item")
    return value


class _Reader:
    __slots__ = ("data", "items", "max_depth", "max_items", "pos")

    def __init__(self, data: bytes, max_depth: int, max_items: int) -> None:
        self.data = data
        self.pos = 0
        self.max_depth = max_depth
        self.max_items = max_items
        self.items = 0

    def take(self, size: int) -> bytes:
        if size > len(self.data) - self.pos:
            raise CborError(
                f"item at offset {self.pos} needs {size} bytes, {len(self.data) - self.pos} remain"
            )
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def head(self) -> tuple[int, int]:
        start = self.pos
        (initial,) = self.take(1)
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info
        sizes = {24: 1, 25: 2, 26: 4, 27: 8}
        if info not in sizes:
            raise CborError(f"unsupported additional information {info} at offset {start}")
        argument = int.from_bytes(self.take(sizes[info]), "big")
        return major, argument

    def item(self, depth: int) -> Value:
        if depth > self.max_depth:
            raise CborError("nesting too deep")
        self.items += 1
        if self.items > self.max_items:
            raise CborError("too many items")
        start = self.pos
        major, argument = self.head()
        if major == _UINT:
            return argument
        if major == _NINT:
            return -1 - argument
        if major == _BYTES:
            return self.take(argument)
        if major == _TEXT:
            try:
                return self.take(argument).decode("utf-8")
            except UnicodeDecodeError:
                raise CborError(f"text string at offset {start} is not UTF-8") from None
        if major == _ARRAY:
            if argument > len(self.data) - self.pos:  # each item takes at least one byte
                raise CborError(f"array at offset {start} announces {argument} items")
            return [self.item(depth + 1) for _ in range(argument)]
        if major == _MAP:
            if 2 * argument > len(self.data) - self.pos:
                raise CborError(f"map at offset {start} announces {argument} pairs")
            out: dict[Value, Value] = {}
            for _ in range(argument):
                key = self.item(depth + 1)
                if not isinstance(key, (int, str, bytes)):
                    raise CborError(f"map at offset {start} has a key that is not an integer or string")
                if key in out:
                    raise CborError(f"map at offset {start} repeats a key")
                out[key] = self.item(depth + 1)
            return out
        if major == _TAG:
            return Tag(argument, self.item(depth + 1))
        raise CborError(f"unsupported major type {major} at offset {start}")
