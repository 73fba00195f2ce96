"""Where collateral comes from: the ``CollateralSource`` interface, the quote → lookup key helper, and
the offline file bundle.

The provider and the TD-side client only ever ask "collateral for (tee, FMSPC, CA)"; whether the answer
comes from a PCCS, Intel PCS, a cache or a file on disk is decided once, at the edge, when the source is
built. Everything here raises :mod:`sealing_key_provider.errors` types with stable codes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from ..dcap.abi import Quote
from ..dcap.collateral import MAX_COLLATERAL_JSON, Collateral
from ..dcap.pck import pck_leaf_identity
from ..errors import CollateralMalformed, CollateralUnavailable

TEE_TYPES: Final = ("sgx", "tdx")
CA_TYPES: Final = ("platform", "processor")

#: Marks a multi-entry bundle file; a plain collateral object (the corpus shape) has no such key.
BUNDLE_FORMAT: Final = "sealing-key-provider/collateral-bundle/v1"


def check_key(tee: str, fmspc: bytes, ca: str) -> None:
    """Refuse lookup keys that cannot name real collateral, before any I/O happens."""
    if tee not in TEE_TYPES:
        raise CollateralUnavailable(f"unknown TEE type {tee!r} (expected sgx or tdx)")
    if len(fmspc) != 6:
        raise CollateralUnavailable(f"FMSPC must be 6 bytes, got {len(fmspc)}")
    if ca not in CA_TYPES:
        raise CollateralUnavailable(f"unknown PCK CA type {ca!r} (expected platform or processor)")


@runtime_checkable
class CollateralSource(Protocol):
    """Collateral for one platform kind: TEE type ("sgx"/"tdx"), FMSPC (6 bytes), PCK CA type."""

    def get(self, tee: str, fmspc: bytes, ca: str) -> Collateral: ...


@dataclass(frozen=True, slots=True)
class CollateralKey:
    """The lookup key of a quote's collateral; hashable, so caches and bundles can index by it."""

    tee: str
    fmspc: bytes
    ca: str

    def __str__(self) -> str:
        return f"{self.tee}/{self.fmspc.hex().upper()}/{self.ca}"


def for_quote(quote: Quote) -> tuple[str, bytes, str]:
    """(tee, FMSPC, CA type) of a parsed quote, read from the PCK leaf certificate it carries.

    Only the leaf is read; whether the chain is genuine is the verifier's business, so a forged leaf
    can at worst make us fetch the wrong (and then non-verifying) collateral.
    """
    ident = pck_leaf_identity(quote.pck_chain_pem)
    return ("tdx" if quote.is_tdx else "sgx", ident.fmspc, ident.ca_type)


def _entry_key(entry: Mapping[str, Any], index: int) -> CollateralKey:
    tee, fmspc_hex, ca = entry.get("tee"), entry.get("fmspc"), entry.get("ca")
    if not isinstance(tee, str) or not isinstance(fmspc_hex, str) or not isinstance(ca, str):
        raise CollateralMalformed(f"bundle entry {index} needs string fields tee, fmspc, ca")
    try:
        fmspc = bytes.fromhex(fmspc_hex)
    except ValueError as e:
        raise CollateralMalformed(f"bundle entry {index}: fmspc is not hex") from e
    try:
        check_key(tee, fmspc, ca)
    except CollateralUnavailable as e:
        raise CollateralMalformed(f"bundle entry {index}: {e.message}") from e
    return CollateralKey(tee, fmspc, ca)


def load_bundle(text: str | bytes) -> tuple[Collateral | None, dict[CollateralKey, Collateral]]:
    """Read a collateral file: either one collateral object (returned first) or a bundle of entries."""
    if len(text) > MAX_COLLATERAL_JSON:
        raise CollateralMalformed(f"collateral file is larger than {MAX_COLLATERAL_JSON} bytes")
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise CollateralMalformed(f"collateral file is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise CollateralMalformed("collateral file must hold a JSON object")
    if "format" not in obj:
        return Collateral.from_mapping(obj), {}
    if obj["format"] != BUNDLE_FORMAT:
        raise CollateralMalformed(f"unknown collateral bundle format {obj['format']!r}")
    entries = obj.get("entries")
    if not isinstance(entries, list) or not entries:
        raise CollateralMalformed("collateral bundle needs a non-empty 'entries' list")
    out: dict[CollateralKey, Collateral] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("collateral"), dict):
            raise CollateralMalformed(f"bundle entry {i} must be an object with a 'collateral' object")
        key = _entry_key(entry, i)
        if key in out:
            raise CollateralMalformed(f"bundle entry {i} repeats {key}")
        out[key] = Collateral.from_mapping(entry["collateral"])
    return None, out


def bundle_json(entries: Mapping[CollateralKey, Collateral]) -> str:
    """Serialise several collaterals as a bundle that :class:`FileSource` reads back."""
    doc = {
        "format": BUNDLE_FORMAT,
        "entries": [
            {"tee": k.tee, "fmspc": k.fmspc.hex().upper(), "ca": k.ca, "collateral": c.to_dict()}
            for k, c in entries.items()
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


class FileSource:
    """Collateral from a file, for offline hosts and reproducible tests.

    A file holding one collateral object (the corpus / dcap-qvl shape) answers every lookup with it: the
    operator chose that file, and the verifier still refuses it if the FMSPC or TEE type does not match.
    A bundle answers only the keys it lists. The file is read once, when the source is built, so a
    broken file fails at start-up rather than on the first request.

    ``data``, when given, is the file's content already read by the caller (a CLI that reads its
    inputs itself, with its own size bound and error reporting); ``path`` then only names it.
    """

    def __init__(self, path: str | Path, data: bytes | None = None) -> None:
        self.path = Path(path)
        if data is None:
            try:
                data = self.path.read_bytes()
            except OSError as e:
                raise CollateralUnavailable(f"cannot read collateral file {self.path}: {e.strerror}") from e
        self._single, self._entries = load_bundle(data)

    @property
    def entries(self) -> Mapping[CollateralKey, Collateral]:
        return dict(self._entries)

    @property
    def single(self) -> Collateral | None:
        return self._single

    def get(self, tee: str, fmspc: bytes, ca: str) -> Collateral:
        check_key(tee, fmspc, ca)
        if self._single is not None:
            return self._single
        key = CollateralKey(tee, fmspc, ca)
        try:
            return self._entries[key]
        except KeyError:
            raise CollateralUnavailable(f"collateral file {self.path} has no entry for {key}") from None
