"""An in-memory collateral cache that never serves a document past its own ``nextUpdate``.

Collateral changes rarely (TCB info monthly, CRLs when something is revoked), and a TD asking for its
key should not wait for four PCCS round trips every time. But stale collateral is how a revoked
platform keeps getting keys, so every entry expires at the earliest ``nextUpdate`` of the documents it
holds (TCB info, QE identity, PCK CRL, root CA CRL), and additionally after ``max_age`` seconds so a
CRL published before the old one's ``nextUpdate`` is picked up within a bounded time.

Failures are never cached and a failed refresh never falls back to an expired entry: fail closed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from ..dcap.collateral import Collateral, parse_enclave_identity, parse_tcb_info
from ..dcap.lru import Lru
from ..errors import CollateralMalformed
from .source import CollateralKey, CollateralSource, check_key

Clock = Callable[[], float]

DEFAULT_MAX_ENTRIES = 64
#: PCCS refreshes its own cache daily by default; we follow the same rhythm.
DEFAULT_MAX_AGE = 24 * 3600


def _crl_next_update(data: bytes, what: str) -> int:
    try:
        crl = (
            x509.load_pem_x509_crl(data)
            if data.lstrip().startswith(b"-----BEGIN")
            else x509.load_der_x509_crl(data)
        )
    except ValueError as e:
        raise CollateralMalformed(f"{what} is not a CRL: {e}") from e
    next_update = crl.next_update_utc
    if next_update is None:
        raise CollateralMalformed(f"{what} has no nextUpdate")
    return int(next_update.timestamp())


def collateral_next_update(collateral: Collateral) -> int:
    """Unix time at which the first document of ``collateral`` needs replacing."""
    return min(
        parse_tcb_info(collateral.tcb_info).next_update,
        parse_enclave_identity(collateral.qe_identity).next_update,
        _crl_next_update(collateral.pck_crl, "PCK CRL"),
        _crl_next_update(collateral.root_ca_crl, "root CA CRL"),
    )


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters for metrics: ``hits`` served from memory, ``misses`` went to the inner source."""

    hits: int
    misses: int
    errors: int
    entries: int


@dataclass(frozen=True, slots=True)
class _Entry:
    collateral: Collateral
    expires: float


class CachingSource:
    """Wrap a :class:`CollateralSource` with a bounded, thread-safe, expiry-aware cache.

    Concurrent misses for the same key wait for one fetch instead of stampeding the PCCS; different
    keys fetch in parallel. ``clock`` returns Unix seconds and is injected so tests control time.
    """

    def __init__(
        self,
        inner: CollateralSource,
        clock: Clock,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_age: float | None = DEFAULT_MAX_AGE,
    ) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self._inner = inner
        self._clock = clock
        self._max_age = max_age
        self._lock = threading.Lock()
        self._entries: Lru[CollateralKey, _Entry] = Lru(max_entries)
        self._fetch_locks: dict[CollateralKey, threading.Lock] = {}
        self._hits = 0
        self._misses = 0
        self._errors = 0

    def _lookup(self, key: CollateralKey, now: float) -> Collateral | None:
        """Under ``self._lock``: a fresh entry (counted as a hit) or None; drops an expired one."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.expires:
            self._entries.pop(key)
            return None
        self._hits += 1
        return entry.collateral

    def get(self, tee: str, fmspc: bytes, ca: str) -> Collateral:
        check_key(tee, fmspc, ca)
        key = CollateralKey(tee, bytes(fmspc), ca)
        with self._lock:
            found = self._lookup(key, self._clock())
            if found is not None:
                return found
            fetch_lock = self._fetch_locks.setdefault(key, threading.Lock())
        with fetch_lock:
            with self._lock:
                # Another thread may have fetched it while we waited.
                found = self._lookup(key, self._clock())
                if found is not None:
                    return found
                self._misses += 1
            try:
                collateral = self._inner.get(tee, fmspc, ca)
                expires: float = collateral_next_update(collateral)
            except Exception:
                with self._lock:
                    self._errors += 1
                    self._fetch_locks.pop(key, None)
                raise
            now = self._clock()
            if self._max_age is not None:
                expires = min(expires, now + self._max_age)
            with self._lock:
                if now < expires:
                    evicted = self._entries.put(key, _Entry(collateral, expires))
                    if evicted is not None:
                        self._fetch_locks.pop(evicted[0], None)
                if key not in self._entries:
                    # Already expired (the verifier will say so): not cached, and no lock kept for it.
                    self._fetch_locks.pop(key, None)
            return collateral

    def clear(self) -> None:
        """Forget every entry (e.g. after an operator learns of a revocation)."""
        with self._lock:
            self._entries.clear()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._errors, len(self._entries))
