"""Collateral documents: the raw signed bytes, and the typed TCB info / enclave identity read from them.

``Collateral`` keeps the exact bytes Intel signed (``tcb_info``, ``qe_identity``): signatures are checked
over those bytes, never over a re-serialisation. Parsing of their JSON content happens only after the
signature is known good (see ``verify``), but the parser here is strict on its own and raises
:class:`CollateralMalformed` for anything unexpected.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from ..errors import CollateralMalformed

#: A real collateral bundle is about 20 KB; PCK CRLs grow, but not past this.
MAX_COLLATERAL_JSON = 4 * 1024 * 1024

_FIELDS = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)


def _crl_bytes(value: str, name: str) -> bytes:
    """CRLs travel as hex DER (dcap-qvl, PCCS rootcacrl) or PEM (PCS with encoding=pem)."""
    text = value.strip()
    if text.startswith("-----BEGIN"):
        return text.encode("ascii", "replace")
    try:
        return binascii.unhexlify(text)
    except (binascii.Error, ValueError) as e:
        raise CollateralMalformed(f"collateral field {name} is neither hex DER nor PEM") from e


def _sig_bytes(value: str, name: str) -> bytes:
    try:
        sig = binascii.unhexlify(value.strip())
    except (binascii.Error, ValueError) as e:
        raise CollateralMalformed(f"collateral field {name} is not hex") from e
    if len(sig) != 64:
        raise CollateralMalformed(f"collateral field {name} must be 64 bytes (r||s), got {len(sig)}")
    return sig


@dataclass(frozen=True, slots=True)
class Collateral:
    """Everything a quote needs besides itself, as fetched: issuer chains (PEM), CRLs (DER or PEM),
    the signed TCB info and QE identity JSON bytes, and their raw r||s signatures.

    Instances are hashable and compare by bytes, which is what the verifier's cache keys on.
    """

    pck_crl_issuer_chain: bytes
    root_ca_crl: bytes
    pck_crl: bytes
    tcb_info_issuer_chain: bytes
    tcb_info: bytes
    tcb_info_signature: bytes
    qe_identity_issuer_chain: bytes
    qe_identity: bytes
    qe_identity_signature: bytes

    @classmethod
    def from_json(cls, text: str | bytes) -> Collateral:
        """Read the corpus / dcap-qvl ``QuoteCollateralV3`` JSON shape (PCCS v4 field names)."""
        if len(text) > MAX_COLLATERAL_JSON:
            raise CollateralMalformed(f"collateral JSON is larger than {MAX_COLLATERAL_JSON} bytes")
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise CollateralMalformed(f"collateral is not valid JSON: {e}") from e
        except RecursionError:  # nesting deeper than the interpreter's stack: hostile, never Intel's
            raise CollateralMalformed("collateral JSON nests too deeply") from None
        if not isinstance(obj, dict):
            raise CollateralMalformed("collateral JSON must be an object")
        return cls.from_mapping(obj)

    @classmethod
    def from_mapping(cls, obj: Mapping[str, Any]) -> Collateral:
        missing = [f for f in _FIELDS if f not in obj]
        if missing:
            raise CollateralMalformed(f"collateral lacks field(s): {', '.join(missing)}")
        for f in _FIELDS:
            if not isinstance(obj[f], str):
                raise CollateralMalformed(f"collateral field {f} must be a string")
            try:
                obj[f].encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate ("\ud800") from a JSON escape
                raise CollateralMalformed(f"collateral field {f} is not valid Unicode text") from None
        return cls(
            pck_crl_issuer_chain=obj["pck_crl_issuer_chain"].encode("utf-8"),
            root_ca_crl=_crl_bytes(obj["root_ca_crl"], "root_ca_crl"),
            pck_crl=_crl_bytes(obj["pck_crl"], "pck_crl"),
            tcb_info_issuer_chain=obj["tcb_info_issuer_chain"].encode("utf-8"),
            tcb_info=obj["tcb_info"].encode("utf-8"),
            tcb_info_signature=_sig_bytes(obj["tcb_info_signature"], "tcb_info_signature"),
            qe_identity_issuer_chain=obj["qe_identity_issuer_chain"].encode("utf-8"),
            qe_identity=obj["qe_identity"].encode("utf-8"),
            qe_identity_signature=_sig_bytes(obj["qe_identity_signature"], "qe_identity_signature"),
        )

    def to_dict(self) -> dict[str, str]:
        def crl(b: bytes) -> str:
            return b.decode("ascii") if b.startswith(b"-----BEGIN") else b.hex()

        return {
            "pck_crl_issuer_chain": self.pck_crl_issuer_chain.decode("utf-8"),
            "root_ca_crl": crl(self.root_ca_crl),
            "pck_crl": crl(self.pck_crl),
            "tcb_info_issuer_chain": self.tcb_info_issuer_chain.decode("utf-8"),
            "tcb_info": self.tcb_info.decode("utf-8"),
            "tcb_info_signature": self.tcb_info_signature.hex(),
            "qe_identity_issuer_chain": self.qe_identity_issuer_chain.decode("utf-8"),
            "qe_identity": self.qe_identity.decode("utf-8"),
            "qe_identity_signature": self.qe_identity_signature.hex(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


# --- Typed content of the signed documents -------------------------------------------------------


def parse_time(value: object, what: str) -> int:
    """ISO 8601 UTC ("2025-06-19T10:16:03Z") to Unix seconds."""
    if not isinstance(value, str) or not value.endswith("Z"):
        raise CollateralMalformed(f"{what} must be an ISO 8601 UTC time ending in Z")
    try:
        return int(datetime.fromisoformat(value[:-1] + "+00:00").timestamp())
    except ValueError as e:
        raise CollateralMalformed(f"{what} is not a valid time: {value!r}") from e


def _get(obj: Mapping[str, Any], key: str, typ: type, what: str) -> Any:
    if key not in obj:
        raise CollateralMalformed(f"{what} lacks {key!r}")
    value = obj[key]
    if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise CollateralMalformed(f"{what}.{key} must be an integer")
    if not isinstance(value, typ):
        raise CollateralMalformed(f"{what}.{key} must be of type {typ.__name__}")
    return value


def _hex(obj: Mapping[str, Any], key: str, size: int, what: str) -> bytes:
    text = _get(obj, key, str, what)
    try:
        raw = bytes.fromhex(text)
    except ValueError as e:
        raise CollateralMalformed(f"{what}.{key} is not hex") from e
    if len(raw) != size:
        raise CollateralMalformed(f"{what}.{key} must be {size} bytes, got {len(raw)}")
    return raw


def _svn(value: object, what: str, limit: int = 255) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise CollateralMalformed(f"{what} must be an integer in 0..{limit}")
    return value


def _advisories(obj: Mapping[str, Any], what: str) -> tuple[str, ...]:
    ids = obj.get("advisoryIDs", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise CollateralMalformed(f"{what}.advisoryIDs must be a list of strings")
    return tuple(ids)


def _components(tcb: Mapping[str, Any], key: str, what: str) -> tuple[int, ...]:
    comps = _get(tcb, key, list, what)
    if len(comps) != 16:
        raise CollateralMalformed(f"{what}.{key} must have 16 components, got {len(comps)}")
    out: list[int] = []
    for c in comps:
        svn = c.get("svn") if isinstance(c, dict) else None
        # Checked inline (no per-component helper call or message): this loop runs 16 times per level.
        if type(svn) is not int or not 0 <= svn <= 255:
            raise CollateralMalformed(f"{what}.{key}[{len(out)}].svn must be an integer in 0..255")
        out.append(svn)
    return tuple(out)


def _fast_svns(comps: object) -> tuple[int, ...] | None:
    """16 ``{"svn": 0..255, ...}`` objects to their SVNs, or None: then :func:`_components` decides
    (and names what is wrong). Written for speed: a TCB info holds up to ~30 such lists."""
    if type(comps) is not list or len(comps) != 16:
        return None
    try:
        svns = tuple([c["svn"] for c in comps])
    except (TypeError, KeyError):
        return None
    for svn in svns:
        if type(svn) is not int or not 0 <= svn <= 255:
            return None
    return svns


# TCB levels are NamedTuples rather than frozen dataclasses: a cold verification builds dozens of them,
# and a frozen dataclass costs ~0.5 us more per instance (one object.__setattr__ per field).


class TcbLevel(NamedTuple):
    sgx_components: tuple[int, ...]
    pcesvn: int
    tdx_components: tuple[int, ...] | None
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


class ModuleTcbLevel(NamedTuple):
    isvsvn: int
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TdxModuleIdentity:
    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[ModuleTcbLevel, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class TcbInfo:
    id: str
    version: int
    issue_date: int
    next_update: int
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    tdx_module: TdxModuleIdentity | None
    tdx_module_identities: tuple[TdxModuleIdentity, ...]
    tcb_levels: tuple[TcbLevel, ...]


@dataclass(frozen=True, slots=True)
class EnclaveIdentity:
    id: str
    version: int
    issue_date: int
    next_update: int
    tcb_evaluation_data_number: int
    miscselect: bytes
    miscselect_mask: bytes
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isvprodid: int
    tcb_levels: tuple[ModuleTcbLevel, ...]


def _load_object(raw: bytes, what: str) -> Mapping[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CollateralMalformed(f"{what} is not valid JSON") from e
    except RecursionError:
        raise CollateralMalformed(f"{what} JSON nests too deeply") from None
    if not isinstance(obj, dict):
        raise CollateralMalformed(f"{what} must be a JSON object")
    return obj


def _module_levels(obj: Mapping[str, Any], what: str) -> tuple[ModuleTcbLevel, ...]:
    return tuple(
        _fast_module_level(lvl) or _module_level(lvl, f"{what}.tcbLevels[{i}]")
        for i, lvl in enumerate(_get(obj, "tcbLevels", list, what))
    )


def _module_level(lvl: object, w: str) -> ModuleTcbLevel:
    """One QE / TDX module TCB level, every field checked with a message naming it."""
    if not isinstance(lvl, dict):
        raise CollateralMalformed(f"{w} must be an object")
    tcb = _get(lvl, "tcb", dict, w)
    return ModuleTcbLevel(
        isvsvn=_svn(tcb.get("isvsvn"), f"{w}.tcb.isvsvn", 0xFFFF),
        tcb_date=_get(lvl, "tcbDate", str, w),
        status=_get(lvl, "tcbStatus", str, w),
        advisory_ids=_advisories(lvl, w),
    )


def _fast_module_level(lvl: object) -> ModuleTcbLevel | None:
    """:func:`_module_level` for a well-formed level, else None (then that function names the error)."""
    if type(lvl) is not dict:
        return None
    tcb = lvl.get("tcb")
    if type(tcb) is not dict:
        return None
    isvsvn = tcb.get("isvsvn")
    tail = _fast_tail(lvl)
    if tail is None or type(isvsvn) is not int or not 0 <= isvsvn <= 0xFFFF:
        return None
    return ModuleTcbLevel(isvsvn, *tail)


def _fast_tail(lvl: dict[str, Any]) -> tuple[str, str, tuple[str, ...]] | None:
    """(tcbDate, tcbStatus, advisoryIDs) of a well-formed level of any kind, else None."""
    date, status = lvl.get("tcbDate"), lvl.get("tcbStatus")
    ids = lvl.get("advisoryIDs", [])
    if type(date) is not str or type(status) is not str or type(ids) is not list:
        return None
    for a in ids:
        if type(a) is not str:
            return None
    return date, status, tuple(ids)


def _module_identity(obj: Mapping[str, Any], what: str, with_levels: bool) -> TdxModuleIdentity:
    return TdxModuleIdentity(
        id=obj.get("id", "") if isinstance(obj.get("id", ""), str) else "",
        mrsigner=_hex(obj, "mrsigner", 48, what),
        attributes=_hex(obj, "attributes", 8, what),
        attributes_mask=_hex(obj, "attributesMask", 8, what),
        tcb_levels=_module_levels(obj, what) if with_levels else (),
    )


def parse_tcb_info(raw: bytes) -> TcbInfo:
    what = "tcbInfo"
    obj = _load_object(raw, what)
    tcb_id = _get(obj, "id", str, what)
    if tcb_id not in ("SGX", "TDX"):
        raise CollateralMalformed(f"tcbInfo.id {tcb_id!r} is neither SGX nor TDX")
    version = _get(obj, "version", int, what)
    if version != 3:
        raise CollateralMalformed(f"tcbInfo version {version} is not supported (3 is)")
    is_tdx = tcb_id == "TDX"
    levels = [
        _fast_tcb_level(lvl, is_tdx) or _tcb_level(lvl, i, is_tdx)
        for i, lvl in enumerate(_get(obj, "tcbLevels", list, what))
    ]
    module = None
    identities: tuple[TdxModuleIdentity, ...] = ()
    if is_tdx:
        module = _module_identity(_get(obj, "tdxModule", dict, what), "tcbInfo.tdxModule", False)
        ids = obj.get("tdxModuleIdentities", [])
        if not isinstance(ids, list):
            raise CollateralMalformed("tcbInfo.tdxModuleIdentities must be a list")
        identities = tuple(
            _module_identity(m, f"tcbInfo.tdxModuleIdentities[{i}]", True)
            if isinstance(m, dict)
            else _bad(f"tcbInfo.tdxModuleIdentities[{i}] must be an object")
            for i, m in enumerate(ids)
        )
    return TcbInfo(
        id=tcb_id,
        version=version,
        issue_date=parse_time(obj.get("issueDate"), "tcbInfo.issueDate"),
        next_update=parse_time(obj.get("nextUpdate"), "tcbInfo.nextUpdate"),
        fmspc=_hex(obj, "fmspc", 6, what),
        pce_id=_hex(obj, "pceId", 2, what),
        tcb_type=_get(obj, "tcbType", int, what),
        tcb_evaluation_data_number=_get(obj, "tcbEvaluationDataNumber", int, what),
        tdx_module=module,
        tdx_module_identities=identities,
        tcb_levels=tuple(levels),
    )


def _tcb_level(lvl: object, i: int, is_tdx: bool) -> TcbLevel:
    """One TCB level, every field checked with a message naming it."""
    w = f"tcbInfo.tcbLevels[{i}]"
    if not isinstance(lvl, dict):
        raise CollateralMalformed(f"{w} must be an object")
    tcb = _get(lvl, "tcb", dict, w)
    return TcbLevel(
        sgx_components=_components(tcb, "sgxtcbcomponents", f"{w}.tcb"),
        pcesvn=_svn(tcb.get("pcesvn"), f"{w}.tcb.pcesvn", 0xFFFF),
        tdx_components=_components(tcb, "tdxtcbcomponents", f"{w}.tcb") if is_tdx else None,
        tcb_date=_get(lvl, "tcbDate", str, w),
        status=_get(lvl, "tcbStatus", str, w),
        advisory_ids=_advisories(lvl, w),
    )


def _fast_tcb_level(lvl: object, is_tdx: bool) -> TcbLevel | None:
    """The same level as :func:`_tcb_level` when the level is well formed, else None (and then
    :func:`_tcb_level` raises the precise error). It accepts nothing :func:`_tcb_level` refuses:
    ``tests/test_dcap_collateral_fast.py`` holds the two to the same results."""
    if type(lvl) is not dict:
        return None
    tcb = lvl.get("tcb")
    if type(tcb) is not dict:
        return None
    sgx = _fast_svns(tcb.get("sgxtcbcomponents"))
    tdx = _fast_svns(tcb.get("tdxtcbcomponents")) if is_tdx else None
    pcesvn = tcb.get("pcesvn")
    tail = _fast_tail(lvl)
    if (
        tail is None
        or sgx is None
        or (is_tdx and tdx is None)
        or type(pcesvn) is not int
        or not 0 <= pcesvn <= 0xFFFF
    ):
        return None
    return TcbLevel(sgx, pcesvn, tdx, *tail)


def _bad(message: str) -> TdxModuleIdentity:
    raise CollateralMalformed(message)


def parse_enclave_identity(raw: bytes) -> EnclaveIdentity:
    what = "enclaveIdentity"
    obj = _load_object(raw, what)
    ident_id = _get(obj, "id", str, what)
    version = _get(obj, "version", int, what)
    if version != 2:
        raise CollateralMalformed(f"enclaveIdentity version {version} is not supported (2 is)")
    return EnclaveIdentity(
        id=ident_id,
        version=version,
        issue_date=parse_time(obj.get("issueDate"), "enclaveIdentity.issueDate"),
        next_update=parse_time(obj.get("nextUpdate"), "enclaveIdentity.nextUpdate"),
        tcb_evaluation_data_number=_get(obj, "tcbEvaluationDataNumber", int, what),
        miscselect=_hex(obj, "miscselect", 4, what),
        miscselect_mask=_hex(obj, "miscselectMask", 4, what),
        attributes=_hex(obj, "attributes", 16, what),
        attributes_mask=_hex(obj, "attributesMask", 16, what),
        mrsigner=_hex(obj, "mrsigner", 32, what),
        isvprodid=_svn(obj.get("isvprodid"), "enclaveIdentity.isvprodid", 0xFFFF),
        tcb_levels=_module_levels(obj, what),
    )
