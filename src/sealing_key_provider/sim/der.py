"""The handful of DER encoders needed for Intel's SGX certificate extension.

``cryptography`` builds certificates but has no generic ASN.1 encoder, and the SGX extension
(OID 1.2.840.113741.1.13.1) is a private structure. These helpers emit the exact encodings Intel's
certificates use (definite lengths, minimal INTEGERs, BOOLEAN true as 0xFF), so the extension is
byte-for-byte shaped like a real one.
"""

from __future__ import annotations

TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_ENUMERATED = 0x0A
TAG_SEQUENCE = 0x30


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _length(len(value)) + value


def oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    if len(parts) < 2 or parts[0] > 2 or (parts[0] < 2 and parts[1] >= 40):
        raise ValueError(f"not an encodable OID: {dotted}")
    out = bytearray()
    for arc in [40 * parts[0] + parts[1], *parts[2:]]:
        rest = arc >> 7
        chunk = [arc & 0x7F]
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        out.extend(reversed(chunk))
    return tlv(TAG_OID, bytes(out))


def integer(n: int) -> bytes:
    """A non-negative INTEGER in minimal two's-complement form (255 is ``02 02 00 FF``, as Intel's)."""
    if n < 0:
        raise ValueError("only non-negative integers are needed here")
    return tlv(TAG_INTEGER, n.to_bytes(n.bit_length() // 8 + 1, "big"))


def enumerated(n: int) -> bytes:
    if n < 0:
        raise ValueError("only non-negative enumerations are needed here")
    return tlv(TAG_ENUMERATED, n.to_bytes(n.bit_length() // 8 + 1, "big"))


def octets(value: bytes) -> bytes:
    return tlv(TAG_OCTET_STRING, value)


def boolean(value: bool) -> bytes:
    return tlv(TAG_BOOLEAN, b"\xff" if value else b"\x00")


def sequence(*items: bytes) -> bytes:
    return tlv(TAG_SEQUENCE, b"".join(items))


def pair(dotted: str, value: bytes) -> bytes:
    """``SEQUENCE { OBJECT IDENTIFIER, value }``, the building block of the SGX extension."""
    return sequence(oid(dotted), value)
