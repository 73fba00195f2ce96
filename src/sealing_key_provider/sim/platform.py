"""``SimPlatform``: one simulated SGX+TDX machine (quoting enclaves, EGETKEY, collateral).

Loading is the expensive part (parse the state, derive the PCK and attestation keys, sign the two QE
reports); it happens once per object. After that a quote costs one ECDSA signature plus assembly, and
a sealing key one HMAC, so the provider can ask for a quote per request.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..dcap.abi import SGX_FLAG_DEBUG, TD_ATTR_DEBUG, TEE_TYPE_SGX, TEE_TYPE_TDX, BodyType
from ..dcap.collateral import Collateral
from ..dcap.pck import PckIdentity
from . import collateral as sim_collateral
from . import quote as q
from .collateral import Scenario
from .state import (
    Authority,
    PlatformState,
    default_state_dir,
    derive_p256_key,
    expected_identity,
    init_state,
    public_raw,
    read_state,
)

#: Intel's public QE MRSIGNERs (hash of Intel's enclave signing key), carried by the simulated QEs so
#: that QE identities look exactly like Intel's; the collateral that vouches for them is simulated.
SGX_QE_MRSIGNER = bytes.fromhex("8C4F5775D796503E96137F77C68A829A0056AC8DED70140B081B094490C57BFF")
TD_QE_MRSIGNER = bytes.fromhex("DC9E2A7C6F948F17474E34A7FC43ED030F7C1563F1BABDDF6340C82E0E54A8C5")
SGX_QE_ISVPRODID = 1
TD_QE_ISVPRODID = 2
#: Simulated QE measurements (no real QE binary is measured here).
SGX_QE_MRENCLAVE = hashlib.sha256(b"sealing-key-provider/sim/QE3").digest()
TD_QE_MRENCLAVE = hashlib.sha256(b"sealing-key-provider/sim/TD_QE").digest()
#: A QE that is not Intel's: what ``rogue_qe=True`` puts in the QE report.
ROGUE_QE_MRSIGNER = hashlib.sha256(b"sealing-key-provider/sim/rogue-QE").digest()
#: QE attributes as in Intel's quotes: INITTED | MODE64BIT | PROVISION_KEY, XFRM 0xe7.
QE_ATTRIBUTES = bytes.fromhex("1500000000000000e700000000000000")

#: Gramine-like enclave attributes: INITTED | MODE64BIT, XFRM 0xe7 (x87, SSE, AVX, AVX-512).
DEFAULT_SGX_ATTRIBUTES = bytes.fromhex("0500000000000000e700000000000000")
DEBUG_SGX_ATTRIBUTES = bytes([DEFAULT_SGX_ATTRIBUTES[0] | SGX_FLAG_DEBUG]) + DEFAULT_SGX_ATTRIBUTES[1:]

#: TD attributes with SEPT_VE_DISABLE (bit 28) set and DEBUG (bit 0) clear, as production TDs run.
DEFAULT_TD_ATTRIBUTES = (1 << 28).to_bytes(8, "little")
#: XFAM of a typical TD (x87, SSE, AVX, AVX-512 state, PK, ...), as in Intel's sample quotes.
DEFAULT_XFAM = bytes.fromhex("e702060000000000")

#: EGETKEY masks Gramine uses by default (``sgx.seal_key.*_mask``).
SEAL_FLAGS_MASK = 0xFFFFFFFFFFFFFFFF
SEAL_XFRM_MASK = 0xFFFFFFFFFFF9FF1B
SEAL_MISC_MASK = 0xFFFFFFFF

SEAL_POLICIES = ("mrenclave", "mrsigner")


def _check(value: bytes, size: int, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != size:
        raise ValueError(f"{what} must be exactly {size} bytes")
    return bytes(value)


@dataclass(frozen=True, slots=True)
class SgxEnclaveIdentity:
    """The identity of an SGX enclave as EREPORT/EGETKEY see it (what SIGSTRUCT and EINIT fixed)."""

    mrenclave: bytes
    mrsigner: bytes
    isvprodid: int = 0
    isvsvn: int = 0
    attributes: bytes = DEFAULT_SGX_ATTRIBUTES
    miscselect: int = 0
    configid: bytes = field(default=bytes(64))
    configsvn: int = 0

    def __post_init__(self) -> None:
        _check(self.mrenclave, 32, "MRENCLAVE")
        _check(self.mrsigner, 32, "MRSIGNER")
        _check(self.attributes, 16, "attributes")
        _check(self.configid, 64, "CONFIGID")
        for name in ("isvprodid", "isvsvn", "configsvn"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
                raise ValueError(f"{name} must be an integer in 0..65535")
        if not 0 <= self.miscselect <= 0xFFFFFFFF:
            raise ValueError("miscselect must be a 32-bit value")

    @property
    def debug(self) -> bool:
        return bool(self.attributes[0] & SGX_FLAG_DEBUG)


class SimPlatform:
    """A simulated SGX+TDX platform backed by a state directory. See the package docstring."""

    def __init__(self, state: PlatformState, state_dir: Path) -> None:
        """Prefer :meth:`init` / :meth:`load`; this wraps already validated state."""
        self._state = state
        self.state_dir = state_dir
        self._pck_key = state.pck_key
        root = state.authority.root_cert
        self._chain_pem = b"".join(
            c.public_bytes(Encoding.PEM) for c in (state.pck_cert, state.authority.platform_ca_cert, root)
        )
        self._qe: dict[tuple[str, bool], q.SignedQeReport] = {}

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        state_dir: str | Path | None = None,
        *,
        fmspc: bytes | None = None,
        share_ca_with: SimPlatform | None = None,
        tdx_module_major: int | None = None,
    ) -> SimPlatform:
        """Create the platform in ``state_dir`` unless it exists; return it either way (idempotent).

        ``share_ca_with`` makes a second machine under the same simulated Intel CAs (one trust
        anchor verifies both); ``fmspc`` chooses its CPU family (default ``90C06F000000``);
        ``tdx_module_major`` (1 or 3) the TDX module major version in ``tee_tcb_svn[1]``.
        Options that contradict an existing state raise :class:`SimStateError`.
        """
        directory = Path(state_dir) if state_dir is not None else default_state_dir()
        authority: Authority | None = share_ca_with._state.authority if share_ca_with else None
        state = init_state(directory, fmspc=fmspc, authority=authority, tdx_module_major=tdx_module_major)
        return cls(state, directory)

    @classmethod
    def load(cls, state_dir: str | Path | None = None) -> SimPlatform:
        """Load an initialised platform; :class:`SimStateNotFound` / :class:`SimStateError` otherwise."""
        directory = Path(state_dir) if state_dir is not None else default_state_dir()
        return cls(read_state(directory), directory)

    # --- identity ----------------------------------------------------------------------------

    @property
    def root_certificate(self) -> x509.Certificate:
        """The simulated SGX Root CA: the trust anchor to configure for simulated quotes."""
        return self._state.authority.root_cert

    @property
    def root_ca_pem_path(self) -> Path:
        return self.state_dir / "root-ca.pem"

    @property
    def pck_certificate(self) -> x509.Certificate:
        return self._state.pck_cert

    @property
    def platform_ca_certificate(self) -> x509.Certificate:
        return self._state.authority.platform_ca_cert

    @property
    def tcb_signing_certificate(self) -> x509.Certificate:
        return self._state.authority.tcb_signing_cert

    @property
    def pck_chain_pem(self) -> bytes:
        """PCK leaf, PCK Platform CA, root (PEM), as carried in every quote's certification data."""
        return self._chain_pem

    @property
    def pck_identity(self) -> PckIdentity:
        return expected_identity(self._state)

    @property
    def ppid(self) -> bytes:
        return self._state.ppid

    @property
    def fmspc(self) -> bytes:
        return self._state.fmspc

    @property
    def qe_id(self) -> bytes:
        """QE ID (quote header user_data[0:16]); the same for the SGX QE and the TD QE."""
        return self._state.qe_id

    @property
    def pce_id(self) -> bytes:
        return self._state.pce_id

    @property
    def cpusvn(self) -> bytes:
        return self._state.cpusvn

    @property
    def pcesvn(self) -> int:
        return self._state.pcesvn

    @property
    def tee_tcb_svn(self) -> bytes:
        return self._state.tee_tcb_svn

    # --- quoting enclaves ----------------------------------------------------------------------

    def _signed_qe(self, tee: str, rogue: bool) -> q.SignedQeReport:
        cached = self._qe.get((tee, rogue))
        if cached is not None:
            return cached
        s = self._state
        key = derive_p256_key(s.secret, "td-qe-attestation" if tee == "tdx" else "qe3-attestation")
        public = public_raw(key.public_key())
        report = q.EnclaveBody(
            cpusvn=s.cpusvn,
            attributes=QE_ATTRIBUTES,
            mrenclave=TD_QE_MRENCLAVE if tee == "tdx" else SGX_QE_MRENCLAVE,
            mrsigner=ROGUE_QE_MRSIGNER if rogue else (TD_QE_MRSIGNER if tee == "tdx" else SGX_QE_MRSIGNER),
            isvprodid=TD_QE_ISVPRODID if tee == "tdx" else SGX_QE_ISVPRODID,
            isvsvn=s.td_qe_isvsvn if tee == "tdx" else s.sgx_qe_isvsvn,
            report_data=q.qe_report_data(public, q.QE_AUTH_DATA),
        ).pack()
        signed = q.SignedQeReport(
            attestation_key=key,
            attestation_public=public,
            report=report,
            signature=q.sign_raw(self._pck_key, report),
            auth_data=q.QE_AUTH_DATA,
        )
        self._qe[(tee, rogue)] = signed
        return signed

    def tdx_quote(
        self,
        *,
        report_data: bytes = b"",
        mrtd: bytes = bytes(48),
        rtmrs: Sequence[bytes] = (bytes(48),) * 4,
        mrconfigid: bytes = bytes(48),
        mrowner: bytes = bytes(48),
        mrownerconfig: bytes = bytes(48),
        xfam: bytes = DEFAULT_XFAM,
        td_attributes: bytes = DEFAULT_TD_ATTRIBUTES,
        debug: bool = False,
        version: int = 4,
        body: BodyType | None = None,
        mrservicetd: bytes = bytes(48),
        rogue_qe: bool = False,
    ) -> bytes:
        """A TDX quote from the TD QE: v4 (TDX 1.0 body) or v5 (``body`` TD10 or TD15, default TD15).

        ``report_data`` (up to 64 bytes, zero-padded) and the measurements are the TD's; ``debug``
        sets TUD.DEBUG in the TD attributes. ``rogue_qe`` makes the QE report name a QE signer that
        Intel's QE identity does not vouch for (verification fails with QE_IDENTITY_MISMATCH).
        """
        if version not in (4, 5):
            raise ValueError("TDX quotes are version 4 or 5")
        if body is None:
            body = BodyType.TD10 if version == 4 else BodyType.TD15
        if body not in (BodyType.TD10, BodyType.TD15) or (version == 4 and body != BodyType.TD10):
            raise ValueError("a v4 TDX quote has a TDX 1.0 body; v5 has TDX 1.0 or 1.5")
        rtmr_tuple = tuple(rtmrs)
        if len(rtmr_tuple) != 4:
            raise ValueError("exactly four RTMRs are needed")
        attributes = _check(td_attributes, 8, "TD attributes")
        if debug:
            attributes = bytes([attributes[0] | TD_ATTR_DEBUG]) + attributes[1:]
        s = self._state
        td15 = body == BodyType.TD15
        raw = q.TdBody(
            tee_tcb_svn=s.tee_tcb_svn,
            mrseam=_mrseam(s.tee_tcb_svn),
            mrsignerseam=sim_collateral.SEAM_MRSIGNER,
            seam_attributes=bytes(8),
            td_attributes=attributes,
            xfam=xfam,
            mrtd=mrtd,
            mrconfigid=mrconfigid,
            mrowner=mrowner,
            mrownerconfig=mrownerconfig,
            rtmrs=(rtmr_tuple[0], rtmr_tuple[1], rtmr_tuple[2], rtmr_tuple[3]),
            report_data=q.report_data_bytes(report_data),
            tee_tcb_svn2=s.tee_tcb_svn if td15 else None,
            mrservicetd=mrservicetd if td15 else None,
        ).pack()
        return q.assemble(
            version=version,
            tee_type=TEE_TYPE_TDX,
            body=raw,
            body_type=body,
            qe_id=s.qe_id,
            qe=self._signed_qe("tdx", rogue_qe),
            pck_chain_pem=self._chain_pem,
        )

    def sgx_report(self, report_data: bytes = b"", *, enclave: SgxEnclaveIdentity) -> bytes:
        """The body (384 bytes) of the EREPORT ``enclave`` makes on this machine over ``report_data``:
        what Gramine's ``/dev/attestation/report`` gives, and exactly the body of :meth:`sgx_quote`."""
        s = self._state
        return q.EnclaveBody(
            cpusvn=s.cpusvn,
            attributes=enclave.attributes,
            mrenclave=enclave.mrenclave,
            mrsigner=enclave.mrsigner,
            isvprodid=enclave.isvprodid,
            isvsvn=enclave.isvsvn,
            report_data=q.report_data_bytes(report_data),
            miscselect=enclave.miscselect,
            configid=enclave.configid,
            configsvn=enclave.configsvn,
        ).pack()

    def sgx_quote(
        self,
        report_data: bytes = b"",
        *,
        enclave: SgxEnclaveIdentity,
        version: int = 3,
        rogue_qe: bool = False,
    ) -> bytes:
        """An SGX quote for ``enclave`` from the SGX QE: v3 (as Gramine's /dev/attestation/quote) or
        v5 with body type 1. ``report_data`` is up to 64 bytes, zero-padded."""
        if version not in (3, 5):
            raise ValueError("SGX quotes are version 3 (or 5 with body type 1)")
        s = self._state
        body = self.sgx_report(report_data, enclave=enclave)
        return q.assemble(
            version=version,
            tee_type=TEE_TYPE_SGX,
            body=body,
            body_type=BodyType.SGX,
            qe_id=s.qe_id,
            qe=self._signed_qe("sgx", rogue_qe),
            pck_chain_pem=self._chain_pem,
            qe_svn=s.sgx_qe_isvsvn,
            pce_svn=s.pcesvn,
        )

    # --- EGETKEY -----------------------------------------------------------------------------------

    def sealing_key(self, enclave: SgxEnclaveIdentity, policy: str = "mrenclave") -> bytes:
        """The 16-byte SGX seal key ``enclave`` gets from EGETKEY with KEYPOLICY ``policy``.

        Like the hardware key it depends on the platform secret, the policy, MRENCLAVE (policy
        "mrenclave") or MRSIGNER and ISVPRODID ("mrsigner"), the enclave's ISVSVN and CONFIGSVN, the
        platform CPUSVN and the masked attributes and MISCSELECT (so a debug enclave gets another key),
        with KEYID 0 as Gramine uses. It is stable across restarts because all of that is.
        """
        if policy not in SEAL_POLICIES:
            raise ValueError(f"seal key policy must be one of {', '.join(SEAL_POLICIES)}")
        s = self._state
        flags, xfrm = struct.unpack("<QQ", enclave.attributes)
        if policy == "mrenclave":
            measurement = b"\x01" + enclave.mrenclave
        else:
            measurement = b"\x02" + enclave.mrsigner + struct.pack("<H", enclave.isvprodid)
        request = (
            b"sealing-key-provider/sim/egetkey/seal\x00"
            + measurement
            + struct.pack("<HH", enclave.isvsvn, enclave.configsvn)
            + s.cpusvn
            + struct.pack(
                "<QQI", flags & SEAL_FLAGS_MASK, xfrm & SEAL_XFRM_MASK, enclave.miscselect & SEAL_MISC_MASK
            )
            + bytes(32)  # KEYID
        )
        return hmac.new(s.secret, request, hashlib.sha256).digest()[:16]

    # --- collateral ----------------------------------------------------------------------------------

    def collateral(self, tee: str, *, now: int, scenario: Scenario | str = Scenario.UP_TO_DATE) -> Collateral:
        """Collateral for this platform's FMSPC as the PCCS would serve it at ``now`` (Unix seconds).

        ``scenario`` (a :class:`Scenario` or its name, e.g. "out-of-date") shapes it; each scenario's
        ``expected`` says what the verifier must conclude for a default quote of this platform.
        """
        chosen = Scenario(scenario)
        tdx = tee == "tdx"
        return sim_collateral.build(
            self._state,
            tee,
            now=now,
            scenario=chosen,
            qe_mrsigner=TD_QE_MRSIGNER if tdx else SGX_QE_MRSIGNER,
            qe_isvprodid=TD_QE_ISVPRODID if tdx else SGX_QE_ISVPRODID,
        )


def _mrseam(tee_tcb_svn: bytes) -> bytes:
    """A stand-in MRSEAM per module version (the real one is the SHA-384 of Intel's module)."""
    return hashlib.sha384(b"sealing-key-provider/sim/tdx-module/" + tee_tcb_svn[:2]).digest()
