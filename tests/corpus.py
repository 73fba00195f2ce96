"""Access to the real-quote corpus in ``tests/data/dcap`` (provenance and licenses in its README)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from sealing_key_provider.dcap import Collateral

CORPUS = Path(__file__).resolve().parent / "data" / "dcap"


@dataclass(frozen=True)
class Case:
    name: str
    quote: bytes = field(repr=False)
    collateral_text: str = field(repr=False)
    now: int = 0
    expected: dict[str, Any] = field(repr=False, default_factory=dict)
    meta: dict[str, Any] = field(repr=False, default_factory=dict)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Hypothesis prints failing examples with this: the case name, not 20 KB of bytes."""
        printer.text(f"Case({self.name!r})")

    @property
    def collateral(self) -> Collateral:
        return Collateral.from_json(self.collateral_text)


@cache
def index() -> dict[str, Any]:
    path = CORPUS / "INDEX.json"
    if not path.exists():
        raise FileNotFoundError(
            f"the DCAP corpus is missing: expected {path} (tests/data/dcap in the repository)"
        )
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _case(entry: dict[str, Any]) -> Case:
    return Case(
        name=entry["name"],
        quote=(CORPUS / entry["files"]["quote"]).read_bytes(),
        collateral_text=(CORPUS / entry["files"]["collateral"]).read_text(),
        now=int(entry["verify_unix_time"]),
        expected=entry["expected"],
        meta=entry,
    )


@cache
def cases() -> tuple[Case, ...]:
    return tuple(_case(e) for e in index()["cases"])


@cache
def negative_cases() -> tuple[Case, ...]:
    return tuple(_case(e) for e in index()["negative"])


def case(name: str) -> Case:
    for c in cases():
        if c.name == name:
            return c
    raise KeyError(name)
