"""The fast readers of TCB levels accept exactly what the checked readers accept, with equal results."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from sealing_key_provider.dcap import collateral as col
from sealing_key_provider.errors import CollateralMalformed
from sealing_key_provider.sim import Scenario, SimPlatform

from .corpus import cases

NOW = 1_780_000_000


def _documents(tmp_path: Path) -> list[tuple[bytes, bytes]]:
    docs = [(c.collateral.tcb_info, c.collateral.qe_identity) for c in cases()]
    p = SimPlatform.init(tmp_path)
    for tee in ("sgx", "tdx"):
        for scenario in Scenario:
            if tee == "sgx" and scenario is Scenario.TDX_MODULE_OUT_OF_DATE:
                continue  # TDX collateral only
            sim = p.collateral(tee, now=NOW, scenario=scenario)
            docs.append((sim.tcb_info, sim.qe_identity))
    return docs


def test_fast_and_checked_readers_agree_on_every_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = _documents(tmp_path)
    fast = [(col.parse_tcb_info(t), col.parse_enclave_identity(q)) for t, q in docs]
    monkeypatch.setattr(col, "_fast_tcb_level", lambda lvl, is_tdx: None)
    monkeypatch.setattr(col, "_fast_module_level", lambda lvl: None)
    checked = [(col.parse_tcb_info(t), col.parse_enclave_identity(q)) for t, q in docs]
    assert fast == checked


def _mutations(level: dict[str, Any]) -> list[dict[str, Any] | Any]:
    """A well-formed level and many ways to damage one field of it."""
    out: list[Any] = [level, [], "x", None]
    bad_values: list[Any] = [None, True, False, -1, 256, 65536, 1.0, "1", [], {}]
    for key in ("tcb", "tcbDate", "tcbStatus", "advisoryIDs"):
        m = copy.deepcopy(level)
        m.pop(key, None)
        out.append(m)
        for v in bad_values:
            m = copy.deepcopy(level)
            m[key] = v
            out.append(m)
    m = copy.deepcopy(level)
    m["advisoryIDs"] = ["INTEL-SA-1", 7]
    out.append(m)
    tcb = level["tcb"]
    for key in list(tcb):
        m = copy.deepcopy(level)
        del m["tcb"][key]
        out.append(m)
        for v in bad_values:
            m = copy.deepcopy(level)
            m["tcb"][key] = v
            out.append(m)
        if isinstance(tcb[key], list):
            for i in (0, 15):
                for v in [*bad_values, 255, 0]:
                    m = copy.deepcopy(level)
                    m["tcb"][key][i]["svn"] = v
                    out.append(m)
                m = copy.deepcopy(level)
                m["tcb"][key][i] = 5
                out.append(m)
                m = copy.deepcopy(level)
                del m["tcb"][key][i]["svn"]
                out.append(m)
            m = copy.deepcopy(level)
            m["tcb"][key].pop()
            out.append(m)
            m = copy.deepcopy(level)
            m["tcb"][key].append({"svn": 1})
            out.append(m)
    return out


def _same_outcome(fast: Callable[[], object], checked: Callable[[], object]) -> None:
    try:
        expected = checked()
    except CollateralMalformed:
        assert fast() is None
        return
    got = fast()
    assert got is None or got == expected


@pytest.mark.parametrize("name", ["sgx-v3-phala-1", "tdx-v4-phala-1"])
def test_fast_readers_never_accept_what_the_checked_readers_refuse(name: str) -> None:
    c = next(c for c in cases() if c.name == name)
    tcb_info = json.loads(c.collateral.tcb_info)
    is_tdx = tcb_info["id"] == "TDX"
    for lvl in _mutations(tcb_info["tcbLevels"][0]):
        _same_outcome(partial(col._fast_tcb_level, lvl, is_tdx), partial(col._tcb_level, lvl, 0, is_tdx))
    qe = json.loads(c.collateral.qe_identity)
    for lvl in _mutations(qe["tcbLevels"][0]):
        _same_outcome(partial(col._fast_module_level, lvl), partial(col._module_level, lvl, "x"))
