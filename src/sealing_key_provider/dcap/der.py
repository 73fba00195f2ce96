"""Raw DER pieces of certificates, read by the verifier on its cold path.

``cryptography`` parses a DER certificate in ~2 us, but its accessors are slow where the verifier
needs them: ``tbs_certificate_bytes`` re-encodes the TBS (~10 us), a ``Name`` costs ~20 us to build
and the PEM reader is slower than base64 plus a DER load. This module reads those pieces straight
from the DER that ``cryptography`` has already accepted: the to-be-signed bytes (which are then
signature-checked, so a wrong slice can only fail closed), the issuer and subject names as DER, the
first common name of a name, the subjectPublicKeyInfo, the raw extensions with their critical flags,
and the two extension values the verifier judges itself (BasicConstraints and KeyUsage).

The readers here raise ``ValueError``; :func:`load_cert` also lets ``cryptography``'s own load errors
through (e.g. ``x509.InvalidVersion``). Every caller sits behind ``pck.X509_ERRORS``, which turns both
into the verifier's typed errors.

Names are read more leniently than ``cryptography`` would read them (a common name's string type is
not checked): they sit inside signature-checked bytes, and only the common name's text is compared.
"""

from __future__ import annotations

import binascii
from typing import NamedTuple

from cryptography import x509

_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"
_BLANK = b" \t\r\n\x00"

TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_OID = 0x06
TAG_OCTET_STRING = 0x04
TAG_SEQUENCE = 0x30
TAG_SET = 0x31

#: DER content of id-at-commonName (2.5.4.3) and id-ce-basicConstraints (2.5.29.19).
OID_COMMON_NAME = b"\x55\x04\x03"
OID_BASIC_CONSTRAINTS = b"\x55\x1d\x13"
#: id-ce-keyUsage (2.5.29.15).
OID_KEY_USAGE = b"\x55\x1d\x0f"
#: id-ce-cRLNumber (2.5.29.20) and id-ce-authorityKeyIdentifier (2.5.29.35).
OID_CRL_NUMBER = b"\x55\x1d\x14"
OID_AUTHORITY_KEY_IDENTIFIER = b"\x55\x1d\x23"


def tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """One DER element at ``pos``: (tag, start of value, end of value), all bounded by ``end``."""
    if pos + 2 > end:
        raise ValueError("truncated DER element")
    tag = buf[pos]
    length = buf[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > end:
            raise ValueError("bad DER length encoding")
        length = int.from_bytes(buf[pos : pos + n], "big")
        if length < 0x80 or buf[pos] == 0:  # DER: the long form only when needed, and minimal
            raise ValueError("non-minimal DER length encoding")
        pos += n
    if pos + length > end:
        raise ValueError("DER element runs past its container")
    return tag, pos, pos + length


def pem_bodies(pem: bytes) -> list[bytes] | None:
    """The base64 text of each block of a plain PEM certificate chain, whitespace removed, or None
    for anything else.

    Plain means: only ``CERTIFICATE`` blocks, whitespace (or the NUL that ends a quote's chain) around
    them. On None the caller lets ``cryptography``'s PEM reader decide. A body is decoded with
    :func:`decode_body` only when it is not already known: equal text means equal DER, so the anchor
    and a certificate repeated across chains are recognised without decoding them.
    """
    parts = pem.split(_BEGIN)
    if len(parts) < 2 or parts[0].strip(_BLANK):
        return None
    out = []
    for part in parts[1:]:
        body, sep, rest = part.partition(_END)
        if not sep or rest.strip(_BLANK):
            return None
        out.append(b"".join(body.split()))
    return out


def decode_body(text: bytes) -> bytes:
    """DER from a body of :func:`pem_bodies` (``binascii.Error``, a ValueError, if not base64)."""
    return binascii.a2b_base64(text, strict_mode=True)


def encode_body(der: bytes) -> bytes:
    """The body :func:`pem_bodies` returns for a certificate written out as PEM."""
    return binascii.b2a_base64(der, newline=False)


class Cert(NamedTuple):
    """A certificate, its DER and the DER pieces the verifier reads."""

    cert: x509.Certificate
    der: bytes
    #: The tbsCertificate element, exactly as signed.
    tbs: bytes
    #: The issuer and subject Name elements (DER, with their headers).
    issuer: bytes
    subject: bytes
    #: The subjectPublicKeyInfo element (DER, with its header).
    spki: bytes
    #: extnID (DER content of the OID) to extnValue (the OCTET STRING's content); duplicates refused.
    extensions: dict[bytes, bytes]
    #: The extnIDs of the extensions marked critical.
    critical: frozenset[bytes]


def load_cert(der: bytes) -> Cert:
    """Load a DER certificate with ``cryptography`` and slice its pieces (ValueError if malformed)."""
    cert = x509.load_der_x509_certificate(der)
    tag, start, end = tlv(der, 0, len(der))
    if tag != TAG_SEQUENCE or end != len(der):
        raise ValueError("certificate is not one DER SEQUENCE")
    tbs_at = start
    tag, pos, tbs_end = tlv(der, tbs_at, end)
    if tag != TAG_SEQUENCE:
        raise ValueError("tbsCertificate is not a SEQUENCE")
    tag, vstart, vend = tlv(der, pos, tbs_end)
    if tag == 0xA0:  # [0] EXPLICIT version
        pos = vend
    pos = tlv(der, pos, tbs_end)[2]  # serialNumber
    pos = tlv(der, pos, tbs_end)[2]  # signature AlgorithmIdentifier
    issuer_at = pos
    tag, _, pos = tlv(der, pos, tbs_end)
    if tag != TAG_SEQUENCE:
        raise ValueError("issuer is not a Name")
    issuer = der[issuer_at:pos]
    pos = tlv(der, pos, tbs_end)[2]  # validity
    subject_at = pos
    tag, _, pos = tlv(der, pos, tbs_end)
    if tag != TAG_SEQUENCE:
        raise ValueError("subject is not a Name")
    subject = der[subject_at:pos]
    spki_at = pos
    tag, _, pos = tlv(der, pos, tbs_end)
    if tag != TAG_SEQUENCE:
        raise ValueError("subjectPublicKeyInfo is not a SEQUENCE")
    spki = der[spki_at:pos]
    extensions: dict[bytes, bytes] = {}
    critical: list[bytes] = []
    while pos < tbs_end:
        tag, vstart, vend = tlv(der, pos, tbs_end)
        pos = vend
        if tag != 0xA3:  # issuerUniqueID [1], subjectUniqueID [2]
            continue
        tag, epos, eend = tlv(der, vstart, vend)
        if tag != TAG_SEQUENCE or eend != vend:
            raise ValueError("extensions are not a SEQUENCE")
        while epos < eend:
            tag, xstart, xend = tlv(der, epos, eend)
            epos = xend
            if tag != TAG_SEQUENCE:
                raise ValueError("extension is not a SEQUENCE")
            # Short-form OID and BOOLEAN headers are read inline (~10 extensions per certificate).
            if xstart + 2 <= xend and der[xstart + 1] < 0x80:
                otag, ostart, oend = der[xstart], xstart + 2, xstart + 2 + der[xstart + 1]
                if oend > xend:
                    raise ValueError("DER element runs past its container")
            else:
                otag, ostart, oend = tlv(der, xstart, xend)
            vpos = oend
            flagged = False
            if vpos + 3 <= xend and der[vpos] == TAG_BOOLEAN and der[vpos + 1] == 1:  # critical
                flagged = der[vpos + 2] != 0
                vpos += 3
            vtag, vs, ve = tlv(der, vpos, xend)
            if otag != TAG_OID or vtag != TAG_OCTET_STRING or ve != xend:
                raise ValueError("extension is not {OID, [critical,] OCTET STRING}")
            oid = der[ostart:oend]
            if oid in extensions:
                raise ValueError(f"duplicate extension {oid.hex()}")
            extensions[oid] = der[vs:ve]
            if flagged:
                critical.append(oid)
    return Cert(cert, der, der[tbs_at:tbs_end], issuer, subject, spki, extensions, frozenset(critical))


def crl_tbs(der: bytes) -> tuple[bytes, set[bytes]]:
    """A DER CRL's tbsCertList element, exactly as signed, and the extnIDs of its crlExtensions."""
    tag, start, end = tlv(der, 0, len(der))
    if tag != TAG_SEQUENCE or end != len(der):
        raise ValueError("CRL is not one DER SEQUENCE")
    tag, pos, tbs_end = tlv(der, start, end)
    if tag != TAG_SEQUENCE:
        raise ValueError("tbsCertList is not a SEQUENCE")
    oids: set[bytes] = set()
    while pos < tbs_end:
        tag, vstart, vend = tlv(der, pos, tbs_end)
        pos = vend
        if tag != 0xA0:  # version, signature, issuer, thisUpdate, nextUpdate, revokedCertificates
            continue
        tag, epos, eend = tlv(der, vstart, vend)
        if tag != TAG_SEQUENCE or eend != vend:
            raise ValueError("CRL extensions are not a SEQUENCE")
        while epos < eend:
            tag, xstart, xend = tlv(der, epos, eend)
            epos = xend
            otag, ostart, oend = tlv(der, xstart, xend)
            if tag != TAG_SEQUENCE or otag != TAG_OID:
                raise ValueError("CRL extension is not {OID, ...}")
            oid = der[ostart:oend]
            if oid in oids:
                raise ValueError(f"duplicate CRL extension {oid.hex()}")
            oids.add(oid)
    return der[start:tbs_end], oids


def common_name(name: bytes) -> str:
    """The first common name in a DER Name, or "" (ValueError if the Name is malformed)."""
    tag, pos, end = tlv(name, 0, len(name))
    if tag != TAG_SEQUENCE:
        raise ValueError("not a Name")
    while pos < end:
        tag, rstart, rend = tlv(name, pos, end)
        pos = rend
        if tag != TAG_SET:
            raise ValueError("Name element is not a SET")
        while rstart < rend:
            tag, astart, aend = tlv(name, rstart, rend)
            rstart = aend
            otag, ostart, oend = tlv(name, astart, aend)
            if tag != TAG_SEQUENCE or otag != TAG_OID:
                raise ValueError("Name attribute is not {OID, value}")
            if name[ostart:oend] == OID_COMMON_NAME:
                vtag, vstart, vend = tlv(name, oend, aend)
                value = name[vstart:vend]
                if vtag == 0x1E:  # BMPString
                    return value.decode("utf-16-be", "replace")
                return value.decode("utf-8", "replace")
    return ""


def oid_text(content: bytes) -> str:
    """The dotted form of an OID's DER content, for messages ("?" for an empty or cut-off one)."""
    parts: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            if not parts:
                top = min(value // 40, 2)
                parts += [top, value - 40 * top]
            else:
                parts.append(value)
            value = 0
    if not parts or content[-1] & 0x80:
        return "?"
    return ".".join(map(str, parts))


#: KeyUsage bits (RFC 5280 4.2.1.3), numbered as in the BIT STRING: bit 0 is the first bit sent.
KU_DIGITAL_SIGNATURE = 1 << 0
KU_KEY_CERT_SIGN = 1 << 5
KU_CRL_SIGN = 1 << 6


def key_usage(cert: Cert) -> int | None:
    """The KeyUsage bits as an int (bit n = named bit n), or None when the extension is absent.

    ValueError when the value is not one DER BIT STRING of one or two bytes with at least one bit
    set (RFC 5280 4.2.1.3). ``cryptography`` leaves extension values unparsed until they are read, so
    this reader alone judges the value; it agrees with ``cryptography`` on every well-formed one.
    """
    value = cert.extensions.get(OID_KEY_USAGE)
    if value is None:
        return None
    tag, start, end = tlv(value, 0, len(value))
    if tag != 0x03 or end != len(value) or end - start < 2 or end - start > 3:
        raise ValueError("KeyUsage is not a BIT STRING of one or two bytes")
    unused = value[start]
    last = value[end - 1]
    if unused > 7 or last & ((1 << unused) - 1) or last == 0:
        raise ValueError("KeyUsage BIT STRING is not in DER form")
    bits = 0
    for i, byte in enumerate(value[start + 1 : end]):
        for j in range(8):
            if byte & (0x80 >> j):
                bits |= 1 << (8 * i + j)
    return bits


def is_ca(cert: Cert) -> bool:
    """BasicConstraints cA is TRUE (absent or malformed: not a CA).

    ``cryptography`` leaves extension values unparsed until they are read, so this reader alone
    judges the value: it must be exactly SEQUENCE { BOOLEAN TRUE, [pathLenConstraint INTEGER >= 0] }
    in DER (a pathLenConstraint of at most 8 bytes), with nothing after it, as ``cryptography``'s
    BasicConstraints parser requires.
    """
    value = cert.extensions.get(OID_BASIC_CONSTRAINTS)
    if value is None:
        return False
    try:
        tag, pos, end = tlv(value, 0, len(value))
        if tag != TAG_SEQUENCE or end != len(value) or pos == end:
            return False
        tag, vstart, vend = tlv(value, pos, end)
        if tag != TAG_BOOLEAN or vend - vstart != 1 or value[vstart] != 0xFF:
            return False
        if vend == end:
            return True
        tag, istart, iend = tlv(value, vend, end)
    except ValueError:
        return False
    if tag != TAG_INTEGER or iend != end or not 0 < iend - istart <= 8 or value[istart] & 0x80:
        return False
    return iend - istart == 1 or value[istart] != 0 or value[istart + 1] & 0x80 != 0
