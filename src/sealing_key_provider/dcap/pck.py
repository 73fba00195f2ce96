"""The PCK certificate's SGX extension (OID 1.2.840.113741.1.13.1): PPID, TCB, PCE-ID, FMSPC, ...

``cryptography`` hands us the extension as opaque DER; this module reads it with a small bounded DER
reader (tag, length, value; definite lengths only) and returns a typed :class:`PckIdentity`. The PPID
read here is the real one, which the provider compares across the TD's and its own PCK certificates.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding

from ..errors import PckCertificateInvalid, PckChainInvalid
from .der import (
    TAG_BOOLEAN,
    TAG_INTEGER,
    TAG_OCTET_STRING,
    TAG_OID,
    TAG_SEQUENCE,
    common_name,
    decode_body,
    load_cert,
    pem_bodies,
    tlv,
)

SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")

#: What ``cryptography`` raises for malformed certificate or CRL data. It parses lazily, on attribute
#: access, and not all of these are ``ValueError``s, so every parsing boundary catches this tuple.
X509_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    x509.AttributeNotFound,
)

_PREFIX = "1.2.840.113741.1.13.1"

TAG_ENUMERATED = 0x0A

SGX_TYPES = {0: "Standard", 1: "Scalable", 2: "ScalableWithIntegrity"}


def _fail(message: str) -> PckCertificateInvalid:
    return PckCertificateInvalid(f"PCK certificate SGX extension: {message}")


def _tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """:func:`.der.tlv` with this module's error (offsets rather than slices: the extension holds ~90
    elements and is read once per new PCK chain, on the cold verification path)."""
    try:
        return tlv(buf, pos, end)
    except ValueError as e:
        raise _fail(str(e)) from None


def encode_oid(dotted: str) -> bytes:
    """DER content bytes of an OID; OIDs in the extension are compared in this form (no decoding)."""
    nums = [int(p) for p in dotted.split(".")]
    out = bytearray([40 * nums[0] + nums[1]])
    for arc in nums[2:]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        out.extend(reversed(chunk))
    return bytes(out)


def _uint(tag: int, value: bytes, what: str, limit: int) -> int:
    if tag not in (TAG_INTEGER, TAG_ENUMERATED) or not value or len(value) > 4:
        raise _fail(f"{what} must be a small INTEGER")
    n = int.from_bytes(value, "big", signed=True)
    if not 0 <= n <= limit:
        raise _fail(f"{what} out of range: {n}")
    return n


def _octets(tag: int, value: bytes, what: str, size: int) -> bytes:
    if tag != TAG_OCTET_STRING or len(value) != size:
        raise _fail(f"{what} must be an OCTET STRING of {size} bytes")
    return value


OID_PPID = encode_oid(f"{_PREFIX}.1")
OID_TCB = encode_oid(f"{_PREFIX}.2")
OID_PCEID = encode_oid(f"{_PREFIX}.3")
OID_FMSPC = encode_oid(f"{_PREFIX}.4")
OID_SGX_TYPE = encode_oid(f"{_PREFIX}.5")
OID_PLATFORM_INSTANCE_ID = encode_oid(f"{_PREFIX}.6")
OID_CONFIGURATION = encode_oid(f"{_PREFIX}.7")
#: TCB component i (1..16), PCESVN (17), CPUSVN (18).
OID_TCB_ITEM = {i: encode_oid(f"{_PREFIX}.2.{i}") for i in range(1, 19)}
_OID_CONFIG_ITEM = {encode_oid(f"{_PREFIX}.7.{i}"): i for i in (1, 2, 3)}
_OID_TCB_COMPONENTS = tuple(OID_TCB_ITEM[i] for i in range(1, 17))


def _pairs(buf: bytes, start: int, end: int, what: str) -> dict[bytes, tuple[int, bytes]]:
    """SEQUENCE OF SEQUENCE { OID, value } into {oid DER bytes: (tag, value)}; duplicates are refused.

    Short-form lengths (every element but the TCB and Configuration sequences) are read inline, the
    rest by :func:`_tlv`: this loop reads ~30 pairs per PCK certificate on the cold path.
    """
    out: dict[bytes, tuple[int, bytes]] = {}
    pos = start
    while pos < end:
        if pos + 2 <= end and buf[pos + 1] < 0x80:
            tag, vstart, vend = buf[pos], pos + 2, pos + 2 + buf[pos + 1]
            if vend > end:
                raise _fail("element runs past its container")
        else:
            tag, vstart, vend = _tlv(buf, pos, end)
        pos = vend
        if tag != TAG_SEQUENCE:
            raise _fail(f"{what}: expected SEQUENCE {{OID, value}}")
        if vstart + 2 <= vend and buf[vstart + 1] < 0x80:
            otag, ostart, oend = buf[vstart], vstart + 2, vstart + 2 + buf[vstart + 1]
            if oend > vend:
                raise _fail("element runs past its container")
        else:
            otag, ostart, oend = _tlv(buf, vstart, vend)
        if oend + 2 <= vend and buf[oend + 1] < 0x80:
            itag, istart, iend = buf[oend], oend + 2, oend + 2 + buf[oend + 1]
        else:
            itag, istart, iend = _tlv(buf, oend, vend)
        if otag != TAG_OID or oend == ostart or buf[oend - 1] & 0x80 or iend != vend:
            raise _fail(f"{what}: expected SEQUENCE {{OID, value}}")
        oid = buf[ostart:oend]
        if oid in out:
            raise _fail(f"{what}: duplicate OID {oid.hex()}")
        out[oid] = (itag, buf[istart:iend])
    return out


def _component_templates() -> tuple[tuple[bytes, bytes], ...]:
    """For TCB components 1..16, the DER of SEQUENCE { OID, INTEGER } up to the value's last byte,
    for a one-byte value (0..127) and for a two-byte one (00 80..00 FF)."""
    out = []
    for oid in _OID_TCB_COMPONENTS:
        head = bytes([TAG_OID, len(oid)]) + oid
        one = bytes([TAG_SEQUENCE, len(head) + 3]) + head + bytes([TAG_INTEGER, 1])
        two = bytes([TAG_SEQUENCE, len(head) + 4]) + head + bytes([TAG_INTEGER, 2, 0])
        out.append((one, two))
    return tuple(out)


_COMPONENT_TEMPLATES = _component_templates()
_COMPONENT_OIDS = frozenset(_OID_TCB_COMPONENTS)


def _fast_tcb(buf: bytes) -> tuple[list[int], dict[bytes, tuple[int, bytes]]] | None:
    """The 16 TCB components and the other pairs of the TCB SEQUENCE, when the components come first,
    in order, as minimal INTEGERs (as in every Intel PCK certificate); otherwise None, and the general
    reader decides. It gives what the general reader gives, or None: components are matched byte for
    byte against their full DER, and the remaining pairs are read by :func:`_pairs` and must not
    repeat a component."""
    pos = 0
    size = len(buf)
    comps = []
    for one, two in _COMPONENT_TEMPLATES:
        if buf.startswith(one, pos):
            pos += len(one)
            if pos >= size or buf[pos] >= 0x80:
                return None
        elif buf.startswith(two, pos):
            pos += len(two)
            if pos >= size or buf[pos] < 0x80:
                return None
        else:
            return None
        comps.append(buf[pos])
        pos += 1
    try:
        rest = _pairs(buf, pos, size, "TCB")
    except PckCertificateInvalid:
        return None
    if not _COMPONENT_OIDS.isdisjoint(rest):
        return None
    return comps, rest


@dataclass(frozen=True, slots=True)
class PckIdentity:
    """What the PCK certificate says about the platform: identity and TCB."""

    ppid: bytes
    tcb_components: tuple[int, ...]
    pcesvn: int
    cpusvn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: str
    #: "platform" or "processor": which Intel CA issued the PCK certificate (and which PCK CRL applies).
    ca_type: str
    platform_instance_id: bytes | None = None
    dynamic_platform: bool | None = None
    cached_keys: bool | None = None
    smt_enabled: bool | None = None

    def same_platform(self, other: PckIdentity) -> bool:
        """Both identities name one machine: equal PPID (compared in constant time) and FMSPC.

        The one "same platform" rule: the provider applies it to a TD's verified PCK identity, the TD
        to the provider's. (The TCB may differ: a PCK certificate of the same machine can be newer.)
        """
        return hmac.compare_digest(self.ppid, other.ppid) and self.fmspc == other.fmspc

    def to_dict(self) -> dict[str, object]:
        return {
            "ppid": self.ppid.hex(),
            "fmspc": self.fmspc.hex().upper(),
            "pce_id": self.pce_id.hex(),
            "pcesvn": self.pcesvn,
            "cpusvn": self.cpusvn.hex(),
            "tcb_components": list(self.tcb_components),
            "sgx_type": self.sgx_type,
            "ca_type": self.ca_type,
            "platform_instance_id": self.platform_instance_id.hex() if self.platform_instance_id else None,
            "dynamic_platform": self.dynamic_platform,
            "cached_keys": self.cached_keys,
            "smt_enabled": self.smt_enabled,
        }


def ca_type_of_cn(cn: str) -> str:
    """ "platform" or "processor" from the common name of the PCK certificate's issuer."""
    if "PCK Platform CA" in cn:
        return "platform"
    if "PCK Processor CA" in cn:
        return "processor"
    raise PckCertificateInvalid(
        f"PCK certificate issuer {cn!r} is neither the PCK Platform CA nor Processor CA"
    )


def parse_sgx_extension(der: bytes, ca_type: str) -> PckIdentity:
    """Parse the value of the SGX extension (the DER SEQUENCE) into a :class:`PckIdentity`."""
    tag, start, end = _tlv(der, 0, len(der))
    if tag != TAG_SEQUENCE or end != len(der):
        raise _fail("not a single SEQUENCE")
    top = _pairs(der, start, end, "extension")
    for required in (OID_PPID, OID_TCB, OID_PCEID, OID_FMSPC, OID_SGX_TYPE):
        if required not in top:
            raise _fail(f"missing required element {required.hex()}")
    ppid = _octets(*top[OID_PPID], "PPID", 16)
    pce_id = _octets(*top[OID_PCEID], "PCE-ID", 2)
    fmspc = _octets(*top[OID_FMSPC], "FMSPC", 6)
    sgx_type_n = _uint(*top[OID_SGX_TYPE], "SGX type", 2)

    tcb_tag, tcb_value = top[OID_TCB]
    if tcb_tag != TAG_SEQUENCE:
        raise _fail("TCB must be a SEQUENCE")
    fast = _fast_tcb(tcb_value)
    if fast is not None:
        comps, tcb = fast
    else:
        tcb = _pairs(tcb_value, 0, len(tcb_value), "TCB")
        comps = []
        for i, oid in enumerate(_OID_TCB_COMPONENTS, 1):
            item = tcb.get(oid)
            if item is None:
                raise _fail(f"TCB lacks component {i}")
            comps.append(_uint(*item, f"TCB component {i}", 255))
    pcesvn_item, cpusvn_item = tcb.get(OID_TCB_ITEM[17]), tcb.get(OID_TCB_ITEM[18])
    if pcesvn_item is None or cpusvn_item is None:
        raise _fail("TCB lacks PCESVN or CPUSVN")
    pcesvn = _uint(*pcesvn_item, "PCESVN", 0xFFFF)
    cpusvn = _octets(*cpusvn_item, "CPUSVN", 16)

    instance_id = None
    flags: dict[int, bool] = {}
    if OID_PLATFORM_INSTANCE_ID in top:
        instance_id = _octets(*top[OID_PLATFORM_INSTANCE_ID], "PlatformInstanceID", 16)
    if OID_CONFIGURATION in top:
        cfg_tag, cfg_value = top[OID_CONFIGURATION]
        if cfg_tag != TAG_SEQUENCE:
            raise _fail("Configuration must be a SEQUENCE")
        for oid, (btag, bval) in _pairs(cfg_value, 0, len(cfg_value), "Configuration").items():
            if btag != TAG_BOOLEAN or len(bval) != 1:
                raise _fail(f"Configuration element {oid.hex()} must be a BOOLEAN")
            if oid in _OID_CONFIG_ITEM:
                flags[_OID_CONFIG_ITEM[oid]] = bval != b"\x00"
    if ca_type == "platform" and (instance_id is None or OID_CONFIGURATION not in top):
        raise _fail("a Platform-CA PCK certificate must carry PlatformInstanceID and Configuration")

    return PckIdentity(
        ppid=ppid,
        tcb_components=tuple(comps),
        pcesvn=pcesvn,
        cpusvn=cpusvn,
        pce_id=pce_id,
        fmspc=fmspc,
        sgx_type=SGX_TYPES[sgx_type_n],
        ca_type=ca_type,
        platform_instance_id=instance_id,
        dynamic_platform=flags.get(1),
        cached_keys=flags.get(2),
        smt_enabled=flags.get(3),
    )


SGX_EXTENSION_OID_DER = encode_oid(_PREFIX)


def pck_identity_of(extensions: Mapping[bytes, bytes], issuer_cn: str) -> PckIdentity:
    """The platform identity from a PCK leaf's raw extensions (extnID DER content to extnValue
    content, as :func:`.der.load_cert` reads them) and its issuer's common name."""
    value = extensions.get(SGX_EXTENSION_OID_DER)
    if value is None:
        raise PckCertificateInvalid("PCK certificate has no SGX extension")
    return parse_sgx_extension(value, ca_type_of_cn(issuer_cn))


def pck_identity(cert: x509.Certificate) -> PckIdentity:
    """Read the SGX extension of a PCK leaf certificate (through the verifier's DER reader)."""
    try:
        parts = load_cert(cert.public_bytes(Encoding.DER))
        issuer_cn = common_name(parts.issuer)
    except X509_ERRORS as e:
        raise PckCertificateInvalid(f"PCK certificate is malformed: {e}") from e
    return pck_identity_of(parts.extensions, issuer_cn)


#: A chain without a readable first certificate: cryptography's errors, or no certificate at all.
_LEAF_ERRORS: tuple[type[Exception], ...] = (*X509_ERRORS, IndexError)


def pck_leaf_identity(chain_pem: bytes) -> PckIdentity:
    """This platform's identity (PPID, FMSPC, PCE-ID, TCB, CA type) from the first certificate of a
    quote's PEM PCK chain.

    The one place the project reads a platform's identity out of a chain. It proves nothing: the
    chain is not checked here (:meth:`.verify.Verifier.pck_identity` checks it), so callers use it to
    describe a quote, to pick collateral (a forged leaf only fetches collateral that will not verify)
    or to compare against an identity that was proven. ``PCK_CHAIN_INVALID`` if no certificate can be
    read, ``PCK_CERTIFICATE_INVALID`` if the leaf's SGX extension is missing or malformed.
    """
    try:
        bodies = pem_bodies(chain_pem)
        if bodies is not None:
            der = decode_body(bodies[0])
        else:  # anything but a plain chain: cryptography's PEM reader decides
            der = x509.load_pem_x509_certificates(chain_pem)[0].public_bytes(Encoding.DER)
        parts = load_cert(der)
        issuer_cn = common_name(parts.issuer)
    except _LEAF_ERRORS as e:
        raise PckChainInvalid(f"the PCK certificate chain has no readable leaf certificate: {e}") from e
    return pck_identity_of(parts.extensions, issuer_cn)
