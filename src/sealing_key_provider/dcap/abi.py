"""Quote bytes to typed structures (SGX v3, TDX v4, v5 with SGX/TDX 1.0/TDX 1.5 bodies).

This layer knows bytes only: no X.509, no policy. Every length read from the input is checked against
the bytes that remain before it is used, and every failure is a :class:`QuoteMalformed` or
:class:`UnsupportedQuote`. Bytes after the signature data are allowed and ignored (real quote files
carry zero padding). Layouts follow Intel's ``sgx_quote_3.h``/``_4.h``/``_5.h`` (SGX DCAP,
``QuoteGeneration/quote_wrapper/common/inc``) and the Intel TDX DCAP Quoting Library API.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from ..errors import QuoteMalformed, UnsupportedQuote

HEADER_SIZE = 48
SGX_REPORT_SIZE = 384
TD10_REPORT_SIZE = 584
TD15_REPORT_SIZE = 648
ECDSA_SIG_SIZE = 64
ECDSA_KEY_SIZE = 64
#: REPORTDATA: 64 bytes at these offsets of an SGX report body and a TD report body (TDX 1.0 and 1.5).
REPORT_DATA_SIZE = 64
SGX_REPORT_DATA_OFFSET = 320
TD_REPORT_DATA_OFFSET = 520
_SGX_REPORT_DATA = slice(SGX_REPORT_DATA_OFFSET, SGX_REPORT_DATA_OFFSET + REPORT_DATA_SIZE)
_TD_REPORT_DATA = slice(TD_REPORT_DATA_OFFSET, TD_REPORT_DATA_OFFSET + REPORT_DATA_SIZE)
#: A v5 quote's body descriptor between header and body: u16 body type, u32 body size.
V5_BODY_DESCRIPTOR_SIZE = 6

INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081

CERT_TYPE_PCK_CERT_CHAIN = 5
CERT_TYPE_QE_REPORT = 6

#: A DCAP quote is about 5 KiB; configfs-tsm caps outblobs at 32 KiB. Anything larger is refused
#: before it is looked at, so a hostile length field can never make us walk megabytes.
MAX_QUOTE_SIZE = 64 * 1024

#: EGETKEY's KEYPOLICY choices by name: a sealing key bound to the enclave's MRENCLAVE (one exact
#: build) or to its MRSIGNER and ISVPRODID (every build of that signer). The configuration, the Gramine
#: platform and the simulator all accept exactly these.
SEAL_KEY_POLICIES = ("mrenclave", "mrsigner")

SGX_FLAG_DEBUG = 0x02
TD_ATTR_DEBUG = 0x01


class BodyType(IntEnum):
    """Quote v5 body descriptor types; v3/v4 bodies are mapped onto the same values."""

    SGX = 1
    TD10 = 2
    TD15 = 3


class TeeType(IntEnum):
    SGX = TEE_TYPE_SGX
    TDX = TEE_TYPE_TDX


@dataclass(frozen=True, slots=True)
class QuoteHeader:
    version: int
    att_key_type: int
    tee_type: TeeType
    #: Meaningful for v3 only (bytes 8..12 are reserved in v4/v5).
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes

    @property
    def qe_id(self) -> bytes:
        """The QE ID / platform identifier (user_data[0:16]); equal for QE3 and TDQE on one host."""
        return self.user_data[:16]


@dataclass(frozen=True, slots=True)
class EnclaveReport:
    """``sgx_report_body_t``: the SGX quote body and the QE report in every quote."""

    cpusvn: bytes
    miscselect: int
    isvextprodid: bytes
    attributes: bytes
    mrenclave: bytes
    mrsigner: bytes
    configid: bytes
    isvprodid: int
    isvsvn: int
    configsvn: int
    isvfamilyid: bytes
    report_data: bytes
    raw: bytes

    @property
    def debug(self) -> bool:
        return bool(self.attributes[0] & SGX_FLAG_DEBUG)


@dataclass(frozen=True, slots=True)
class TdReport:
    """TD report body, TDX 1.0 (584 bytes) or 1.5 (648 bytes, with ``tee_tcb_svn2`` and ``mrservicetd``)."""

    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    tee_tcb_svn2: bytes | None
    mrservicetd: bytes | None
    raw: bytes

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes[0] & TD_ATTR_DEBUG)

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)


@dataclass(frozen=True, slots=True)
class Quote:
    """A parsed DCAP quote. ``signed_data`` is exactly what the attestation key signed."""

    header: QuoteHeader
    body_type: BodyType
    body: EnclaveReport | TdReport
    signature: bytes
    attestation_key: bytes
    qe_report: EnclaveReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    #: The PCK certificate chain as carried in certification data type 5 (PEM; NULs stripped).
    pck_chain_pem: bytes
    signed_data: bytes
    #: Bytes consumed by the quote; anything after that in the input was ignored.
    size: int

    @property
    def is_tdx(self) -> bool:
        return self.header.tee_type == TeeType.TDX

    @property
    def td_report(self) -> TdReport:
        if not isinstance(self.body, TdReport):
            raise UnsupportedQuote("expected a TDX quote, got an SGX quote")
        return self.body

    @property
    def enclave_report(self) -> EnclaveReport:
        if not isinstance(self.body, EnclaveReport):
            raise UnsupportedQuote("expected an SGX quote, got a TDX quote")
        return self.body

    @property
    def report_data(self) -> bytes:
        return self.body.report_data


class _Reader:
    """Bounded cursor over the input: every read checks the remaining length first."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise QuoteMalformed(
                f"quote truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"only {max(len(self.buf) - self.pos, 0)} remain"
            )
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def u16(self, what: str) -> int:
        return int(struct.unpack("<H", self.take(2, what))[0])

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])


def parse_header(raw: bytes) -> QuoteHeader:
    version, att_key_type, tee_type, qe_svn, pce_svn = struct.unpack_from("<HHIHH", raw, 0)
    if version not in (3, 4, 5):
        raise UnsupportedQuote(f"quote version {version} is not supported (3, 4 and 5 are)")
    if att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise UnsupportedQuote(
            f"attestation key type {att_key_type} is not supported (only 2, ECDSA P-256, is)"
        )
    if tee_type not in (TEE_TYPE_SGX, TEE_TYPE_TDX):
        raise UnsupportedQuote(f"TEE type {tee_type:#x} is not supported (0x0 SGX, 0x81 TDX)")
    vendor = raw[12:28]
    if vendor != INTEL_QE_VENDOR_ID:
        raise UnsupportedQuote(f"QE vendor ID {vendor.hex()} is not Intel's")
    return QuoteHeader(
        version=version,
        att_key_type=att_key_type,
        tee_type=TeeType(tee_type),
        qe_svn=qe_svn,
        pce_svn=pce_svn,
        qe_vendor_id=vendor,
        user_data=raw[28:48],
    )


def parse_enclave_report(raw: bytes) -> EnclaveReport:
    if len(raw) != SGX_REPORT_SIZE:
        raise QuoteMalformed(f"SGX report must be {SGX_REPORT_SIZE} bytes, got {len(raw)}")
    miscselect = int.from_bytes(raw[16:20], "little")
    isvprodid, isvsvn, configsvn = struct.unpack_from("<HHH", raw, 256)
    return EnclaveReport(
        cpusvn=raw[0:16],
        miscselect=miscselect,
        isvextprodid=raw[32:48],
        attributes=raw[48:64],
        mrenclave=raw[64:96],
        mrsigner=raw[128:160],
        configid=raw[192:256],
        isvprodid=isvprodid,
        isvsvn=isvsvn,
        configsvn=configsvn,
        isvfamilyid=raw[304:320],
        report_data=raw[_SGX_REPORT_DATA],
        raw=raw,
    )


def parse_td_report(raw: bytes) -> TdReport:
    if len(raw) not in (TD10_REPORT_SIZE, TD15_REPORT_SIZE):
        raise QuoteMalformed(f"TD report must be 584 or 648 bytes, got {len(raw)}")
    v15 = len(raw) == TD15_REPORT_SIZE
    return TdReport(
        tee_tcb_svn=raw[0:16],
        mrseam=raw[16:64],
        mrsignerseam=raw[64:112],
        seam_attributes=raw[112:120],
        td_attributes=raw[120:128],
        xfam=raw[128:136],
        mrtd=raw[136:184],
        mrconfigid=raw[184:232],
        mrowner=raw[232:280],
        mrownerconfig=raw[280:328],
        rtmr0=raw[328:376],
        rtmr1=raw[376:424],
        rtmr2=raw[424:472],
        rtmr3=raw[472:520],
        report_data=raw[_TD_REPORT_DATA],
        tee_tcb_svn2=raw[584:600] if v15 else None,
        mrservicetd=raw[600:648] if v15 else None,
        raw=raw,
    )


_BODY_SIZES = {
    BodyType.SGX: SGX_REPORT_SIZE,
    BodyType.TD10: TD10_REPORT_SIZE,
    BodyType.TD15: TD15_REPORT_SIZE,
}


def _strip_pem(data: bytes) -> bytes:
    # Real quotes may end the PEM chain with NUL padding (go-tdx-guest accepts one trailing NUL).
    return data.rstrip(b"\x00")


def _body_type(header: QuoteHeader, r: _Reader) -> BodyType:
    """The body's type: implied by version and TEE type (v3, v4), or read from a v5 body descriptor."""
    if header.version == 3:
        if header.tee_type != TeeType.SGX:
            raise UnsupportedQuote("a version 3 quote must be an SGX quote")
        return BodyType.SGX
    if header.version == 4:
        return BodyType.TD10 if header.tee_type == TeeType.TDX else BodyType.SGX
    raw_type = r.u16("body type")
    body_size = r.u32("body size")
    if raw_type not in (1, 2, 3):
        raise UnsupportedQuote(f"quote v5 body type {raw_type} is not supported (1, 2 or 3)")
    body_type = BodyType(raw_type)
    if (body_type == BodyType.SGX) != (header.tee_type == TeeType.SGX):
        raise QuoteMalformed(f"quote v5 body type {raw_type} contradicts TEE type {header.tee_type:#x}")
    if body_size != _BODY_SIZES[body_type]:
        raise QuoteMalformed(
            f"quote v5 body size {body_size} does not match body type {raw_type} "
            f"({_BODY_SIZES[body_type]} bytes)"
        )
    return body_type


#: Quote signature, attestation key, QE report, QE report signature, QE authentication data, PCK chain
#: (a plain tuple: parse_quote runs on every verification, warm ones included).
_SignatureData = tuple[bytes, bytes, "EnclaveReport", bytes, bytes, bytes]


def _signature_data(sig: _Reader, version: int) -> _SignatureData:
    """The quote's signature data: the quote signature and attestation key, then (directly in v3,
    inside certification data of type 6 in v4/v5) the QE report, its signature, the QE
    authentication data and the PCK certificate chain. Every byte must be accounted for."""
    signature = sig.take(ECDSA_SIG_SIZE, "quote signature")
    attestation_key = sig.take(ECDSA_KEY_SIZE, "attestation key")
    if version == 3:
        cert = sig
    else:
        outer_type = sig.u16("certification data type")
        if outer_type != CERT_TYPE_QE_REPORT:
            raise UnsupportedQuote(
                f"certification data type {outer_type} is not supported here (v4/v5 quotes carry type 6)"
            )
        outer_size = sig.u32("certification data size")
        cert = _Reader(sig.take(outer_size, "QE report certification data"))

    qe_report = parse_enclave_report(cert.take(SGX_REPORT_SIZE, "QE report"))
    qe_report_signature = cert.take(ECDSA_SIG_SIZE, "QE report signature")
    auth_len = cert.u16("QE authentication data size")
    qe_auth_data = cert.take(auth_len, "QE authentication data")
    cert_type = cert.u16("PCK certification data type")
    if cert_type != CERT_TYPE_PCK_CERT_CHAIN:
        raise UnsupportedQuote(
            f"PCK certification data type {cert_type} is not supported "
            "(only 5, the PCK certificate chain, is)"
        )
    cert_size = cert.u32("PCK certification data size")
    chain = cert.take(cert_size, "PCK certificate chain")
    if cert.pos != len(cert.buf):
        raise QuoteMalformed(f"{len(cert.buf) - cert.pos} unexpected bytes after the PCK certificate chain")
    if version != 3 and sig.pos != len(sig.buf):
        raise QuoteMalformed(f"{len(sig.buf) - sig.pos} unexpected bytes after the certification data")
    return signature, attestation_key, qe_report, qe_report_signature, qe_auth_data, chain


def parse_quote(data: bytes) -> Quote:
    """Parse a DCAP quote (v3, v4 or v5) without verifying anything cryptographic."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise QuoteMalformed("quote must be bytes")
    data = bytes(data)
    if len(data) > MAX_QUOTE_SIZE:
        raise QuoteMalformed(f"quote is {len(data)} bytes, more than the {MAX_QUOTE_SIZE}-byte limit")
    if len(data) < HEADER_SIZE:
        raise QuoteMalformed(f"quote truncated: {len(data)} bytes is shorter than the 48-byte header")
    header = parse_header(data)
    r = _Reader(data, HEADER_SIZE)
    body_type = _body_type(header, r)
    body_raw = r.take(_BODY_SIZES[body_type], "report body")
    body: EnclaveReport | TdReport = (
        parse_enclave_report(body_raw) if body_type == BodyType.SGX else parse_td_report(body_raw)
    )
    signed_end = r.pos
    sig_len = r.u32("signature data length")
    signature, attestation_key, qe_report, qe_report_signature, qe_auth_data, chain = _signature_data(
        _Reader(r.take(sig_len, "signature data")), header.version
    )
    return Quote(
        header=header,
        body_type=body_type,
        body=body,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain_pem=_strip_pem(chain),
        signed_data=data[:signed_end],
        size=r.pos,
    )
