"""Collateral for a simulated platform, signed the way Intel signs it, plus named test scenarios.

TCB info v3 (``id`` "SGX" or "TDX") and QE identity v2 (``id`` "QE" or "TD_QE") are compact JSON
(Intel's key order), signed with ECDSA-P256-SHA256 over the exact bytes by the TCB signing key (raw
``r||s``); the Root CA CRL and the PCK CRL are DER with CRL Number and Authority Key Identifier, signed
by the root and the PCK Platform CA. The TCB levels are laid out *around the platform's own SVNs*, so
each :class:`Scenario` puts the platform on exactly the level it names. Time is always a parameter.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from ..dcap.collateral import Collateral
from ..dcap.tcb import TcbStatus
from . import pki
from .quote import sign_raw
from .state import PlatformState

DAY = 86400
#: Intel publishes TCB info / QE identity / CRLs valid for 30 days.
VALIDITY = 30 * DAY
TCB_EVALUATION_DATA_NUMBER = 17

#: Attributes/masks of Intel's QE identities (PROVISION_KEY etc. ignored, DEBUG must be clear).
QE_ATTRIBUTES = "11000000000000000000000000000000"
QE_ATTRIBUTES_MASK = "FBFFFFFFFFFFFFFF0000000000000000"
SEAM_MRSIGNER = bytes(48)

_ADVISORIES: dict[TcbStatus, tuple[str, ...]] = {
    TcbStatus.UP_TO_DATE: (),
    TcbStatus.SW_HARDENING_NEEDED: ("INTEL-SA-00615",),
    TcbStatus.CONFIGURATION_NEEDED: ("INTEL-SA-00289",),
    TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED: ("INTEL-SA-00289", "INTEL-SA-00615"),
    TcbStatus.OUT_OF_DATE: ("INTEL-SA-00828", "INTEL-SA-00615"),
    TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED: ("INTEL-SA-00289", "INTEL-SA-00828"),
    TcbStatus.REVOKED: ("INTEL-SA-00220", "INTEL-SA-00233"),
}
#: Advisories on the older platform levels below the platform (never matched, there for realism).
_OLD_ADVISORIES = ("INTEL-SA-00106", "INTEL-SA-00115", "INTEL-SA-00828")
QE_OUT_OF_DATE_ADVISORIES = ("INTEL-SA-00477",)
MODULE_OUT_OF_DATE_ADVISORIES = ("INTEL-SA-01036",)


class Scenario(StrEnum):
    """Named collateral situations; see :attr:`expected` for what a DCAP verifier must conclude."""

    UP_TO_DATE = "up-to-date"
    SW_HARDENING_NEEDED = "sw-hardening-needed"
    CONFIGURATION_NEEDED = "configuration-needed"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "configuration-and-sw-hardening-needed"
    OUT_OF_DATE = "out-of-date"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "out-of-date-configuration-needed"
    REVOKED_TCB = "revoked-tcb"
    QE_OUT_OF_DATE = "qe-out-of-date"
    TDX_MODULE_OUT_OF_DATE = "tdx-module-out-of-date"
    REVOKED_PCK = "revoked-pck"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    QE_IDENTITY_MISMATCH = "qe-identity-mismatch"
    TCB_LEVEL_NOT_FOUND = "tcb-level-not-found"

    @property
    def expected(self) -> Expected:
        return EXPECTED[self]

    @property
    def tdx_only(self) -> bool:
        return self is Scenario.TDX_MODULE_OUT_OF_DATE


@dataclass(frozen=True, slots=True)
class Expected:
    """Outcome of verifying a default quote of the platform against the scenario's collateral.

    Exactly one of ``status`` (verification succeeds with this TCB status and these advisory IDs,
    as a set) and ``code`` (verification fails with this ``ProviderError.code``) is set.
    """

    status: TcbStatus | None = None
    advisory_ids: frozenset[str] = frozenset()
    code: str | None = None


def _status(status: TcbStatus) -> Expected:
    return Expected(status=status, advisory_ids=frozenset(_ADVISORIES[status]))


_PLATFORM_STATUS: dict[Scenario, TcbStatus] = {
    Scenario.UP_TO_DATE: TcbStatus.UP_TO_DATE,
    Scenario.SW_HARDENING_NEEDED: TcbStatus.SW_HARDENING_NEEDED,
    Scenario.CONFIGURATION_NEEDED: TcbStatus.CONFIGURATION_NEEDED,
    Scenario.CONFIGURATION_AND_SW_HARDENING_NEEDED: TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
    Scenario.OUT_OF_DATE: TcbStatus.OUT_OF_DATE,
    Scenario.OUT_OF_DATE_CONFIGURATION_NEEDED: TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED,
    Scenario.REVOKED_TCB: TcbStatus.REVOKED,
}

EXPECTED: dict[Scenario, Expected] = {
    **{s: _status(st) for s, st in _PLATFORM_STATUS.items()},
    Scenario.QE_OUT_OF_DATE: Expected(TcbStatus.OUT_OF_DATE, frozenset(QE_OUT_OF_DATE_ADVISORIES)),
    Scenario.TDX_MODULE_OUT_OF_DATE: Expected(
        TcbStatus.OUT_OF_DATE, frozenset(MODULE_OUT_OF_DATE_ADVISORIES)
    ),
    Scenario.REVOKED_PCK: Expected(code="PCK_REVOKED"),
    Scenario.EXPIRED: Expected(code="COLLATERAL_EXPIRED"),
    Scenario.NOT_YET_VALID: Expected(code="COLLATERAL_NOT_YET_VALID"),
    Scenario.QE_IDENTITY_MISMATCH: Expected(code="QE_IDENTITY_MISMATCH"),
    Scenario.TCB_LEVEL_NOT_FOUND: Expected(code="TCB_LEVEL_NOT_FOUND"),
}

_SGX_COMPONENT_NAMES: dict[int, tuple[str, str | None]] = {
    0: ("BIOS", "Early Microcode Update"),
    1: ("OS/VMM", "SGX Late Microcode Update"),
    2: ("OS/VMM", "TXT SINIT"),
    3: ("BIOS", None),
    4: ("BIOS", None),
    5: ("BIOS", None),
    7: ("OS/VMM", "SEAMLDR ACM"),
}
_TDX_COMPONENT_NAMES: dict[int, tuple[str, str | None]] = {
    0: ("OS/VMM", "TDX Module"),
    1: ("OS/VMM", "TDX Module"),
    2: ("OS/VMM", "TDX Late Microcode Update"),
}


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _components(svns: tuple[int, ...], names: dict[int, tuple[str, str | None]] | None) -> list[Any]:
    out: list[dict[str, Any]] = []
    for i, svn in enumerate(svns):
        item: dict[str, Any] = {"svn": svn}
        if names and i in names:
            item["category"] = names[i][0]
            if names[i][1] is not None:
                item["type"] = names[i][1]
        out.append(item)
    return out


@dataclass(frozen=True, slots=True)
class _Level:
    sgx: tuple[int, ...]
    pcesvn: int
    tdx: tuple[int, ...]
    date: str
    status: TcbStatus
    advisories: tuple[str, ...]


def _bump(svns: tuple[int, ...], index: int, delta: int) -> tuple[int, ...]:
    out = list(svns)
    out[index] = max(0, min(255, out[index] + delta))
    return tuple(out)


def _platform_levels(state: PlatformState, scenario: Scenario, tdx_info: bool) -> list[_Level]:
    """TCB levels in descending order, placed so the platform lands where ``scenario`` says.

    "Newer" levels raise the SGX late-microcode component and PCESVN above the platform's; the
    platform's own level carries the scenario's status; "older" levels sit below it.
    """
    sgx, pce = state.sgx_components, state.pcesvn
    # With a module major version in tee_tcb_svn[1], bytes 0..1 are judged by the module identity,
    # and Intel's levels carry the minor in byte 0 and 0 in byte 1; do the same.
    tdx = (state.tee_tcb_svn[0], 0, *state.tee_tcb_svn[2:])
    newer_sgx = _bump(sgx, 1, +1)
    newer = _Level(
        newer_sgx, min(pce + 1, 0xFFFF), _bump(tdx, 2, +1), "2025-11-12T00:00:00Z", TcbStatus.UP_TO_DATE, ()
    )
    older = _Level(
        _bump(_bump(sgx, 0, -1), 1, -1),
        pce // 2,
        _bump(tdx, 2, -1),
        "2018-01-04T00:00:00Z",
        TcbStatus.OUT_OF_DATE,
        _OLD_ADVISORIES,
    )
    if scenario is Scenario.TCB_LEVEL_NOT_FOUND:
        levels = [
            newer,
            _Level(
                newer_sgx,
                pce,
                tdx,
                "2024-11-13T00:00:00Z",
                TcbStatus.SW_HARDENING_NEEDED,
                _ADVISORIES[TcbStatus.SW_HARDENING_NEEDED],
            ),
        ]
        # The platform's SGX SVNs meet this one but its TDX SVNs do not: for TDX there is still no level.
        if tdx_info and state.tee_tcb_svn[2] < 255:
            levels.append(
                _Level(
                    sgx,
                    pce,
                    _bump(tdx, 2, +1),
                    "2024-08-14T00:00:00Z",
                    TcbStatus.OUT_OF_DATE,
                    _ADVISORIES[TcbStatus.OUT_OF_DATE],
                )
            )
        return levels
    status = _PLATFORM_STATUS.get(scenario, TcbStatus.UP_TO_DATE)
    own = _Level(sgx, pce, tdx, "2025-05-14T00:00:00Z", status, _ADVISORIES[status])
    return ([] if status is TcbStatus.UP_TO_DATE else [newer]) + [own, older]


def _levels_json(levels: list[_Level], tdx: bool) -> list[Any]:
    out = []
    for lvl in levels:
        tcb: dict[str, Any] = {
            "sgxtcbcomponents": _components(lvl.sgx, _SGX_COMPONENT_NAMES if tdx else None),
            "pcesvn": lvl.pcesvn,
        }
        if tdx:
            tcb["tdxtcbcomponents"] = _components(lvl.tdx, _TDX_COMPONENT_NAMES)
        item: dict[str, Any] = {"tcb": tcb, "tcbDate": lvl.date, "tcbStatus": lvl.status}
        if lvl.advisories:
            item["advisoryIDs"] = list(lvl.advisories)
        out.append(item)
    return out


def _module_identity(state: PlatformState, major: int, scenario: Scenario) -> dict[str, Any]:
    minor = state.tee_tcb_svn[0]
    if major == state.tee_tcb_svn[1]:
        if scenario is Scenario.TDX_MODULE_OUT_OF_DATE:
            levels = [
                {
                    "tcb": {"isvsvn": minor + 1},
                    "tcbDate": "2025-11-12T00:00:00Z",
                    "tcbStatus": TcbStatus.UP_TO_DATE,
                },
                {
                    "tcb": {"isvsvn": minor},
                    "tcbDate": "2025-05-14T00:00:00Z",
                    "tcbStatus": TcbStatus.OUT_OF_DATE,
                    "advisoryIDs": list(MODULE_OUT_OF_DATE_ADVISORIES),
                },
            ]
        else:
            levels = [
                {
                    "tcb": {"isvsvn": minor},
                    "tcbDate": "2025-05-14T00:00:00Z",
                    "tcbStatus": TcbStatus.UP_TO_DATE,
                }
            ]
            if minor >= 2:
                levels.append(
                    {
                        "tcb": {"isvsvn": minor - 2},
                        "tcbDate": "2023-08-09T00:00:00Z",
                        "tcbStatus": TcbStatus.OUT_OF_DATE,
                        "advisoryIDs": list(MODULE_OUT_OF_DATE_ADVISORIES),
                    }
                )
    else:
        levels = [
            {"tcb": {"isvsvn": 3}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": TcbStatus.UP_TO_DATE}
        ]
    return {
        "id": f"TDX_{major:02X}",
        "mrsigner": SEAM_MRSIGNER.hex().upper(),
        "attributes": "0000000000000000",
        "attributesMask": "FFFFFFFFFFFFFFFF",
        "tcbLevels": levels,
    }


def tcb_info_json(
    state: PlatformState, tee: str, *, issue: int, next_update: int, scenario: Scenario
) -> bytes:
    tdx = tee == "tdx"
    doc: dict[str, Any] = {
        "id": "TDX" if tdx else "SGX",
        "version": 3,
        "issueDate": iso(issue),
        "nextUpdate": iso(next_update),
        "fmspc": state.fmspc.hex().upper(),
        "pceId": state.pce_id.hex().upper(),
        "tcbType": 0,
        "tcbEvaluationDataNumber": TCB_EVALUATION_DATA_NUMBER,
    }
    if tdx:
        doc["tdxModule"] = {
            "mrsigner": SEAM_MRSIGNER.hex().upper(),
            "attributes": "0000000000000000",
            "attributesMask": "FFFFFFFFFFFFFFFF",
        }
        doc["tdxModuleIdentities"] = [_module_identity(state, m, scenario) for m in (3, 1)]
    doc["tcbLevels"] = _levels_json(_platform_levels(state, scenario, tdx), tdx)
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def qe_identity_json(
    state: PlatformState,
    tee: str,
    *,
    issue: int,
    next_update: int,
    scenario: Scenario,
    mrsigner: bytes,
    isvprodid: int,
) -> bytes:
    isvsvn = state.td_qe_isvsvn if tee == "tdx" else state.sgx_qe_isvsvn
    if scenario is Scenario.QE_OUT_OF_DATE:
        levels: list[dict[str, Any]] = [
            {
                "tcb": {"isvsvn": isvsvn + 1},
                "tcbDate": "2025-11-12T00:00:00Z",
                "tcbStatus": TcbStatus.UP_TO_DATE,
            },
            {
                "tcb": {"isvsvn": isvsvn},
                "tcbDate": "2025-05-14T00:00:00Z",
                "tcbStatus": TcbStatus.OUT_OF_DATE,
                "advisoryIDs": list(QE_OUT_OF_DATE_ADVISORIES),
            },
        ]
    else:
        levels = [
            {"tcb": {"isvsvn": isvsvn}, "tcbDate": "2025-05-14T00:00:00Z", "tcbStatus": TcbStatus.UP_TO_DATE}
        ]
        if isvsvn >= 2:
            levels.append(
                {
                    "tcb": {"isvsvn": isvsvn - 2},
                    "tcbDate": "2021-11-10T00:00:00Z",
                    "tcbStatus": TcbStatus.OUT_OF_DATE,
                    "advisoryIDs": list(QE_OUT_OF_DATE_ADVISORIES),
                }
            )
    if scenario is Scenario.QE_IDENTITY_MISMATCH:
        # The identity names another signer: the platform's QE is not the one Intel vouches for.
        mrsigner = hashlib.sha256(b"sealing-key-provider/sim/some-other-qe-signer").digest()
    doc = {
        "id": "TD_QE" if tee == "tdx" else "QE",
        "version": 2,
        "issueDate": iso(issue),
        "nextUpdate": iso(next_update),
        "tcbEvaluationDataNumber": TCB_EVALUATION_DATA_NUMBER,
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": QE_ATTRIBUTES,
        "attributesMask": QE_ATTRIBUTES_MASK,
        "mrsigner": mrsigner.hex().upper(),
        "isvprodid": isvprodid,
        "tcbLevels": levels,
    }
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def decoy_serials(state: PlatformState) -> tuple[int, ...]:
    """Serials of other (fictitious) revoked PCK certificates, so a PCK CRL is never trivially empty."""
    seed = state.authority.platform_ca_cert.fingerprint(hashes.SHA256())
    return tuple(int.from_bytes(hashlib.sha256(seed + bytes([i])).digest()[:19], "big") | 1 for i in range(2))


def build(
    state: PlatformState,
    tee: str,
    *,
    now: int,
    scenario: Scenario,
    qe_mrsigner: bytes,
    qe_isvprodid: int,
) -> Collateral:
    """The full collateral for ``tee`` ("tdx" or "sgx") as a PCCS would serve it at ``now``."""
    if tee not in ("tdx", "sgx"):
        raise ValueError("tee must be 'tdx' or 'sgx'")
    if scenario.tdx_only and tee != "tdx":
        raise ValueError(f"scenario {scenario.value} applies to TDX collateral only")
    if scenario is Scenario.EXPIRED:
        issue = now - VALIDITY - DAY
    elif scenario is Scenario.NOT_YET_VALID:
        issue = now + DAY
    else:
        issue = now - 3600
    next_update = issue + VALIDITY
    a = state.authority
    root_pem = a.root_cert.public_bytes(Encoding.PEM)
    signing_chain = a.tcb_signing_cert.public_bytes(Encoding.PEM) + root_pem
    tcb_info = tcb_info_json(state, tee, issue=issue, next_update=next_update, scenario=scenario)
    qe_identity = qe_identity_json(
        state,
        tee,
        issue=issue,
        next_update=next_update,
        scenario=scenario,
        mrsigner=qe_mrsigner,
        isvprodid=qe_isvprodid,
    )
    revoked = list(decoy_serials(state))
    if scenario is Scenario.REVOKED_PCK:
        revoked.insert(1, state.pck_cert.serial_number)
    return Collateral(
        pck_crl_issuer_chain=a.platform_ca_cert.public_bytes(Encoding.PEM) + root_pem,
        root_ca_crl=pki.crl(a.root_cert, a.root_key, this_update=issue, next_update=next_update),
        pck_crl=pki.crl(
            a.platform_ca_cert, a.platform_ca_key, this_update=issue, next_update=next_update, revoked=revoked
        ),
        tcb_info_issuer_chain=signing_chain,
        tcb_info=tcb_info,
        tcb_info_signature=sign_raw(a.tcb_signing_key, tcb_info),
        qe_identity_issuer_chain=signing_chain,
        qe_identity=qe_identity,
        qe_identity_signature=sign_raw(a.tcb_signing_key, qe_identity),
    )
