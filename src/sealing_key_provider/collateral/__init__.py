"""Collateral sources: PCCS / Intel PCS over HTTP, an expiry-aware cache, offline files, and a PCCS.

The ``dcap`` package verifies collateral it is handed and never fetches anything; this package is the
edge that fetches it. Everything a caller needs is re-exported here.
"""

from __future__ import annotations

from .build import build_source
from .cache import CacheStats, CachingSource, collateral_next_update
from .pccs_client import PccsClient
from .rawjson import extract_raw_value, split_signed_document
from .source import CollateralKey, CollateralSource, FileSource, for_quote

__all__ = [
    "CacheStats",
    "CachingSource",
    "CollateralKey",
    "CollateralSource",
    "FileSource",
    "PccsClient",
    "build_source",
    "collateral_next_update",
    "extract_raw_value",
    "for_quote",
    "split_signed_document",
]
