"""Byte-exact assembly of SGX/TDX report bodies and DCAP quotes (v3, v4, v5).

Layouts are Intel's ``sgx_report.h``, ``sgx_quote_3.h``/``_4.h``/``_5.h`` (SGX DCAP,
``QuoteGeneration/quote_wrapper/common/inc``); the production parser (``dcap.abi``) and an
independent one (dcap-qvl) read what this module writes. Pure functions: keys and bytes in, bytes out.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ..dcap.abi import (
    ATT_KEY_TYPE_ECDSA_P256,
    CERT_TYPE_PCK_CERT_CHAIN,
    CERT_TYPE_QE_REPORT,
    INTEL_QE_VENDOR_ID,
    REPORT_DATA_SIZE,
    SGX_REPORT_SIZE,
    TD10_REPORT_SIZE,
    TD15_REPORT_SIZE,
    TEE_TYPE_SGX,
    TEE_TYPE_TDX,
    BodyType,
)

#: Intel's QE authentication data in every quote seen in the wild: the bytes 0x00..0x1f.
QE_AUTH_DATA = bytes(range(32))


def sign_raw(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA-P256-SHA256 as DCAP carries it: raw ``r || s``, 32 bytes each, big-endian."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _fixed(value: bytes, size: int, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != size:
        raise ValueError(f"{what} must be exactly {size} bytes")
    return bytes(value)


def report_data_bytes(value: bytes) -> bytes:
    """Report data is 64 bytes; shorter input is zero-padded as Gramine and the TDX guest do."""
    if not isinstance(value, (bytes, bytearray)) or len(value) > REPORT_DATA_SIZE:
        raise ValueError(f"report data must be at most {REPORT_DATA_SIZE} bytes")
    return bytes(value).ljust(REPORT_DATA_SIZE, b"\0")


@dataclass(frozen=True, slots=True)
class EnclaveBody:
    """Fields of an ``sgx_report_body_t`` (quote body of SGX quotes, and every QE report)."""

    cpusvn: bytes
    attributes: bytes
    mrenclave: bytes
    mrsigner: bytes
    isvprodid: int
    isvsvn: int
    report_data: bytes
    miscselect: int = 0
    isvextprodid: bytes = bytes(16)
    configid: bytes = bytes(64)
    configsvn: int = 0
    isvfamilyid: bytes = bytes(16)

    def pack(self) -> bytes:
        out = (
            _fixed(self.cpusvn, 16, "CPUSVN")
            + struct.pack("<I", self.miscselect)
            + bytes(12)
            + _fixed(self.isvextprodid, 16, "ISVEXTPRODID")
            + _fixed(self.attributes, 16, "attributes")
            + _fixed(self.mrenclave, 32, "MRENCLAVE")
            + bytes(32)
            + _fixed(self.mrsigner, 32, "MRSIGNER")
            + bytes(32)
            + _fixed(self.configid, 64, "CONFIGID")
            + struct.pack("<HHH", self.isvprodid, self.isvsvn, self.configsvn)
            + bytes(42)
            + _fixed(self.isvfamilyid, 16, "ISVFAMILYID")
            + _fixed(self.report_data, REPORT_DATA_SIZE, "report data")
        )
        assert len(out) == SGX_REPORT_SIZE
        return out


@dataclass(frozen=True, slots=True)
class TdBody:
    """Fields of a TD report body; ``tee_tcb_svn2``/``mrservicetd`` set make it a TDX 1.5 body."""

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
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mrservicetd: bytes | None = None

    def pack(self) -> bytes:
        out = (
            _fixed(self.tee_tcb_svn, 16, "TEE_TCB_SVN")
            + _fixed(self.mrseam, 48, "MRSEAM")
            + _fixed(self.mrsignerseam, 48, "MRSIGNERSEAM")
            + _fixed(self.seam_attributes, 8, "SEAM attributes")
            + _fixed(self.td_attributes, 8, "TD attributes")
            + _fixed(self.xfam, 8, "XFAM")
            + _fixed(self.mrtd, 48, "MRTD")
            + _fixed(self.mrconfigid, 48, "MRCONFIGID")
            + _fixed(self.mrowner, 48, "MROWNER")
            + _fixed(self.mrownerconfig, 48, "MROWNERCONFIG")
            + b"".join(_fixed(r, 48, f"RTMR{i}") for i, r in enumerate(self.rtmrs))
            + _fixed(self.report_data, REPORT_DATA_SIZE, "report data")
        )
        if (self.tee_tcb_svn2 is None) != (self.mrservicetd is None):
            raise ValueError("a TDX 1.5 body needs both TEE_TCB_SVN2 and MRSERVICETD")
        if self.tee_tcb_svn2 is not None and self.mrservicetd is not None:
            out += _fixed(self.tee_tcb_svn2, 16, "TEE_TCB_SVN2") + _fixed(self.mrservicetd, 48, "MRSERVICETD")
        assert len(out) in (TD10_REPORT_SIZE, TD15_REPORT_SIZE)
        return out


@dataclass(frozen=True, slots=True)
class SignedQeReport:
    """A quoting enclave's report over its attestation key, signed by the PCK key; fixed per QE."""

    attestation_key: ec.EllipticCurvePrivateKey
    attestation_public: bytes
    report: bytes
    signature: bytes
    auth_data: bytes


def qe_report_data(attestation_public: bytes, auth_data: bytes) -> bytes:
    """``SHA-256(attestation key x||y || QE auth data) || 32 zero bytes`` (QVL step 4.1.2.4.13)."""
    return hashlib.sha256(attestation_public + auth_data).digest() + bytes(32)


def header(*, version: int, tee_type: int, qe_id: bytes, qe_svn: int = 0, pce_svn: int = 0) -> bytes:
    """The 48-byte quote header. Bytes 8..12 are QE/PCE SVNs in v3 and reserved (zero) in v4/v5."""
    svns = struct.pack("<HH", qe_svn, pce_svn) if version == 3 else bytes(4)
    return (
        struct.pack("<HHI", version, ATT_KEY_TYPE_ECDSA_P256, tee_type)
        + svns
        + INTEL_QE_VENDOR_ID
        + _fixed(qe_id, 16, "QE ID")
        + bytes(4)
    )


def assemble(
    *,
    version: int,
    tee_type: int,
    body: bytes,
    body_type: BodyType,
    qe_id: bytes,
    qe: SignedQeReport,
    pck_chain_pem: bytes,
    qe_svn: int = 0,
    pce_svn: int = 0,
) -> bytes:
    """A complete signed quote; the only signature computed here is the attestation key's."""
    if version == 3 and tee_type != TEE_TYPE_SGX:
        raise ValueError("a version 3 quote is an SGX quote")
    if version == 4 and not (tee_type == TEE_TYPE_TDX and body_type == BodyType.TD10):
        raise ValueError("a version 4 quote carries a TDX 1.0 body here")
    if version not in (3, 4, 5):
        raise ValueError("quote version must be 3, 4 or 5")
    if (tee_type == TEE_TYPE_SGX) != (body_type == BodyType.SGX):
        raise ValueError("body type does not match the TEE type")
    signed = header(version=version, tee_type=tee_type, qe_id=qe_id, qe_svn=qe_svn, pce_svn=pce_svn)
    if version == 5:
        signed += struct.pack("<HI", int(body_type), len(body))
    signed += body
    pck_data = struct.pack("<HI", CERT_TYPE_PCK_CERT_CHAIN, len(pck_chain_pem)) + pck_chain_pem
    qe_part = qe.report + qe.signature + struct.pack("<H", len(qe.auth_data)) + qe.auth_data + pck_data
    certification = (
        qe_part if version == 3 else struct.pack("<HI", CERT_TYPE_QE_REPORT, len(qe_part)) + qe_part
    )
    sig_data = sign_raw(qe.attestation_key, signed) + qe.attestation_public + certification
    return signed + struct.pack("<I", len(sig_data)) + sig_data
