"""Exact byte spans of top-level JSON values, for documents whose signature covers served bytes.

Intel signs the ``tcbInfo`` / ``enclaveIdentity`` JSON value exactly as PCS serves it inside
``{"tcbInfo":{...},"signature":"..."}``. Parsing and re-serialising would change whitespace, key order
or escapes and break the signature, so the value is cut out of the raw body instead.

The scanner is deliberately paranoid: the whole body must first be valid JSON (so bracket counting
below cannot be fooled), the top level must be an object, a duplicated top-level key is refused (two
values for ``tcbInfo`` would let a verifier and a cache disagree about which one is signed), and the
returned slice is re-parsed and compared with what the JSON parser saw for that key.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import CollateralMalformed

_WS = b" \t\r\n"
_QUOTE = 0x22
_BACKSLASH = 0x5C
_OPENERS = b"{["
_CLOSERS = b"}]"


def _skip_ws(buf: bytes, pos: int) -> int:
    while pos < len(buf) and buf[pos] in _WS:
        pos += 1
    return pos


def _string_end(buf: bytes, pos: int) -> int:
    """``buf[pos]`` is an opening quote: return the index just past the closing quote."""
    pos += 1
    n = len(buf)
    while pos < n:
        c = buf[pos]
        if c == _BACKSLASH:
            pos += 2
        elif c == _QUOTE:
            return pos + 1
        else:
            pos += 1
    raise CollateralMalformed("unterminated JSON string")


def _value_end(buf: bytes, pos: int) -> int:
    """Return the index just past the JSON value that starts at ``pos`` (which is not whitespace)."""
    n = len(buf)
    if pos >= n:
        raise CollateralMalformed("JSON value expected")
    c = buf[pos]
    if c == _QUOTE:
        return _string_end(buf, pos)
    if c in _OPENERS:
        depth = 0
        while pos < n:
            c = buf[pos]
            if c == _QUOTE:
                pos = _string_end(buf, pos)
                continue
            if c in _OPENERS:
                depth += 1
            elif c in _CLOSERS:
                depth -= 1
                if depth == 0:
                    return pos + 1
            pos += 1
        raise CollateralMalformed("unterminated JSON object or array")
    # number, true, false, null: runs until a structural character or whitespace.
    start = pos
    while pos < n and buf[pos] not in b",}]" and buf[pos] not in _WS:
        pos += 1
    if pos == start:
        raise CollateralMalformed("JSON value expected")
    return pos


def _scan(body: bytes) -> tuple[dict[str, tuple[int, int]], dict[str, Any]]:
    """Spans of the top-level values and the parser's view of the same object."""
    try:
        parsed = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CollateralMalformed(f"body is not valid UTF-8 JSON: {e}") from e
    except RecursionError:  # a hostile PCCS nesting deeper than the interpreter's stack
        raise CollateralMalformed("body nests too deeply") from None
    if not isinstance(parsed, dict):
        raise CollateralMalformed("body is not a JSON object")
    # From here on the body is known to be one valid JSON object, so indexing cannot run off the end
    # and bracket counting cannot be fooled.
    pos = _skip_ws(body, 0)
    pos = _skip_ws(body, pos + 1)
    spans: dict[str, tuple[int, int]] = {}
    if body[pos] == ord("}"):
        return spans, parsed
    while True:
        if body[pos] != _QUOTE:
            raise CollateralMalformed("JSON object key expected")
        key_end = _string_end(body, pos)
        # Decoding the key with the JSON parser handles escapes such as "\u0074cbInfo".
        key = json.loads(body[pos:key_end].decode("utf-8"))
        pos = _skip_ws(body, key_end)
        if body[pos] != ord(":"):
            raise CollateralMalformed("':' expected after JSON object key")
        start = _skip_ws(body, pos + 1)
        end = _value_end(body, start)
        if key in spans:
            raise CollateralMalformed(f"duplicate top-level key {key!r}")
        spans[key] = (start, end)
        pos = _skip_ws(body, end)
        if body[pos] == ord(","):
            pos = _skip_ws(body, pos + 1)
            continue
        if body[pos] == ord("}"):
            break
        raise CollateralMalformed("',' or '}' expected in JSON object")
    if _skip_ws(body, pos + 1) != len(body):
        raise CollateralMalformed("trailing data after the JSON object")
    return spans, parsed


def top_level_spans(body: bytes) -> dict[str, tuple[int, int]]:
    """Map each top-level key of a JSON object to the (start, end) byte span of its value.

    Raises :class:`CollateralMalformed` if the body is not a valid UTF-8 JSON object or repeats a key.
    """
    return _scan(body)[0]


def _value(body: bytes, spans: dict[str, tuple[int, int]], parsed: dict[str, Any], key: str) -> bytes:
    if key not in spans:
        raise CollateralMalformed(f"JSON object lacks top-level key {key!r}")
    start, end = spans[key]
    raw = body[start:end]
    if json.loads(raw) != parsed[key]:
        raise CollateralMalformed(f"could not isolate the exact value of {key!r}")
    return raw


def extract_raw_value(body: bytes, key: str) -> bytes:
    """The exact bytes of the value of top-level ``key`` in the JSON object ``body``.

    The slice is checked against the JSON parser's view of the same key, so a scanner bug can only
    ever cause a refusal, never a wrong slice.
    """
    spans, parsed = _scan(body)
    return _value(body, spans, parsed, key)


def split_signed_document(body: bytes, key: str) -> tuple[bytes, bytes]:
    """Split a PCS body ``{"<key>":{...},"signature":"<hex r||s>"}`` into (signed bytes, signature).

    The signed value must be a JSON object and the signature 64 bytes of hex, as Intel serves them.
    """
    spans, parsed = _scan(body)
    raw = _value(body, spans, parsed, key)
    if not raw.startswith(b"{"):
        raise CollateralMalformed(f"{key!r} must be a JSON object")
    _value(body, spans, parsed, "signature")
    sig_hex = parsed["signature"]
    if not isinstance(sig_hex, str):
        raise CollateralMalformed("'signature' must be a hex string")
    try:
        sig = bytes.fromhex(sig_hex)
    except ValueError as e:
        raise CollateralMalformed("'signature' is not hex") from e
    if len(sig) != 64:
        raise CollateralMalformed(f"'signature' must be 64 bytes (r||s), got {len(sig)}")
    return raw, sig
