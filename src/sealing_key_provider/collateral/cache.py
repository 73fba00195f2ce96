"""An in-memory collateral cache that keeps serving through PCCS trouble without ever serving a
document past its own ``nextUpdate``.

Collateral changes rarely (TCB info monthly, CRLs when something is revoked), and a TD asking for its
key should not wait for four PCCS round trips every time, nor fail because the PCCS is down for an
hour. But expired collateral is how a revoked platform keeps getting keys. So:

- **Valid until the earliest nextUpdate.** An entry is never served at or past the earliest
  ``nextUpdate`` of the documents it holds (TCB info, QE identity, PCK CRL, root CA CRL): fail closed.
- **Refreshed at max_age, ahead of time.** After ``max_age`` seconds an entry is due for a fresh fetch
  (so a CRL published before the old one's ``nextUpdate`` is picked up in bounded time). At 90% of
  ``max_age`` a refresh starts in the background while requests keep the cached entry, so in the
  normal case no request ever waits for the PCCS once the cache is warm.
- **Stale but valid beats nothing.** When a refresh fails, the old entry is served for as long as it
  is valid (``nextUpdate``), counted in :attr:`CacheStats.stale` and logged once per failure window.
- **Single flight, remembered failure.** Concurrent misses for one key share one fetch and its
  outcome (no waiter retries in turn). A failed fetch is remembered for ``failure_backoff`` seconds:
  requests meanwhile get the stale-but-valid entry or fail at once with the remembered error, instead
  of each paying the PCCS timeout.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from cryptography import x509

from ..dcap.collateral import Collateral, parse_enclave_identity, parse_tcb_info
from ..dcap.lru import Lru
from ..errors import CollateralMalformed, CollateralUnavailable, ProviderError
from .source import CollateralKey, CollateralSource, check_key

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Spawn = Callable[[Callable[[], None]], None]

DEFAULT_MAX_ENTRIES: Final = 64
#: PCCS refreshes its own cache daily by default; we follow the same rhythm.
DEFAULT_MAX_AGE: Final = 24 * 3600
#: Seconds a failed fetch is remembered before the next one is tried.
DEFAULT_FAILURE_BACKOFF: Final = 10.0
#: Fraction of ``max_age`` after which a background refresh starts.
REFRESH_AHEAD_AT: Final = 0.9


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
    """Counters for metrics: ``hits`` served from memory, ``misses`` went to the inner source,
    ``errors`` failed fetches, ``stale`` lookups answered with stale-but-valid collateral."""

    hits: int
    misses: int
    errors: int
    entries: int
    stale: int = 0


@dataclass(frozen=True, slots=True)
class _Entry:
    collateral: Collateral
    #: Earliest nextUpdate (Unix seconds): never served at or after it.
    valid_until: float
    #: When it was fetched (Unix seconds): due for replacement at ``fetched + max_age``.
    fetched: float


@dataclass(slots=True)
class _Failure:
    until: float
    error: BaseException
    stale_logged: bool = False


@dataclass(slots=True)
class _Flight:
    """One fetch in progress; everyone asking for its key meanwhile waits for its outcome."""

    done: threading.Event = field(default_factory=threading.Event)
    collateral: Collateral | None = None
    error: BaseException | None = None


def _spawn_thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="skp-collateral-refresh", daemon=True).start()


def _copy_error(error: BaseException) -> ProviderError:
    """A fresh exception for another thread to raise (sharing one object would share its traceback)."""
    if isinstance(error, ProviderError):
        return type(error)(error.message, code=error.code)
    return CollateralUnavailable(f"collateral fetch failed: {type(error).__name__}")


class CachingSource:
    """Wrap a :class:`CollateralSource` with a bounded, thread-safe, expiry-aware cache.

    ``clock`` returns Unix seconds and is injected so tests control time; ``spawn`` runs a background
    refresh (a daemon thread by default; tests collect it and run it when they choose).
    """

    def __init__(
        self,
        inner: CollateralSource,
        clock: Clock,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_age: float | None = DEFAULT_MAX_AGE,
        failure_backoff: float = DEFAULT_FAILURE_BACKOFF,
        spawn: Spawn = _spawn_thread,
    ) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        if failure_backoff < 0:
            raise ValueError("failure_backoff must not be negative")
        self._inner = inner
        self._clock = clock
        self._max_entries = max_entries
        self._max_age = max_age
        self._backoff = failure_backoff
        self._spawn = spawn
        self._lock = threading.Lock()
        self._entries: Lru[CollateralKey, _Entry] = Lru(max_entries)
        self._flights: dict[CollateralKey, _Flight] = {}
        self._failures: dict[CollateralKey, _Failure] = {}
        self._hits = 0
        self._misses = 0
        self._errors = 0
        self._stale = 0

    # --- lookups ------------------------------------------------------------------------------------

    def get(self, tee: str, fmspc: bytes, ca: str) -> Collateral:
        check_key(tee, fmspc, ca)
        key = CollateralKey(tee, bytes(fmspc), ca)
        with self._lock:
            now = self._clock()
            entry = self._valid_entry(key, now)
            fresh = entry is not None and not self._due(entry, now)
            if fresh:
                assert entry is not None
                refresh = self._hit(key, entry, now)
            else:
                if self._in_backoff(key, now):
                    return self._stale_or_raise(key, entry, self._failures[key].error)
                existing = self._flights.get(key)
                owner = existing is None
                flight = existing if existing is not None else self._flights.setdefault(key, _Flight())
        if fresh:
            assert entry is not None
            if refresh is not None:
                # Started outside the lock (the fetch takes it), and a start that fails must not leave
                # a flight that nobody will ever finish.
                self._start_refresh(key, refresh)
            return entry.collateral
        return self._outcome(key, flight, owner)

    def _hit(self, key: CollateralKey, entry: _Entry, now: float) -> _Flight | None:
        """Under the lock: count a hit; the refresh to start ahead of max_age, if it is time."""
        self._hits += 1
        if self._refresh_ahead(entry, now) and key not in self._flights and not self._in_backoff(key, now):
            flight = self._flights[key] = _Flight()
            return flight
        return None

    def _start_refresh(self, key: CollateralKey, flight: _Flight) -> None:
        """Run ``flight``'s fetch in the background; if no background work can start (a thread cap),
        the flight ends now as a failure, so that nobody waits on it."""
        try:
            self._spawn(lambda: self._fetch(key, flight))
        except Exception as e:
            with self._lock:
                self._flights.pop(key, None)
            flight.error = CollateralUnavailable(f"collateral refresh could not start: {type(e).__name__}")
            flight.done.set()
            log.warning("collateral refresh could not start key=%s: %s", key, type(e).__name__)

    def _outcome(self, key: CollateralKey, flight: _Flight, owner: bool) -> Collateral:
        """Run (``owner``) or wait for ``flight``; its collateral, else stale-but-valid, else its error."""
        if owner:
            self._fetch(key, flight)
        else:
            flight.done.wait()
        if flight.collateral is not None:
            if not owner:
                with self._lock:
                    self._hits += 1
            return flight.collateral
        error = flight.error
        assert error is not None
        with self._lock:
            entry = self._valid_entry(key, self._clock())
            if entry is not None or not owner:
                return self._stale_or_raise(key, entry, error)
        raise error

    def _valid_entry(self, key: CollateralKey, now: float) -> _Entry | None:
        """Under the lock: the entry for ``key`` if it is still valid; an expired one is dropped."""
        entry = self._entries.get(key)
        if entry is not None and now >= entry.valid_until:
            self._entries.pop(key)
            return None
        return entry

    def _due(self, entry: _Entry, now: float) -> bool:
        return self._max_age is not None and now >= entry.fetched + self._max_age

    def _refresh_ahead(self, entry: _Entry, now: float) -> bool:
        return self._max_age is not None and now >= entry.fetched + REFRESH_AHEAD_AT * self._max_age

    def _in_backoff(self, key: CollateralKey, now: float) -> bool:
        failure = self._failures.get(key)
        return failure is not None and now < failure.until

    def _stale_or_raise(self, key: CollateralKey, entry: _Entry | None, error: BaseException) -> Collateral:
        """Under the lock: serve ``entry`` (stale but valid) after a failed refresh, or raise."""
        if entry is None:
            raise _copy_error(error) from None
        self._stale += 1
        self._entries.get(key)  # most recently used
        failure = self._failures.get(key)
        if failure is not None and not failure.stale_logged:
            failure.stale_logged = True
            log.warning(
                "serving stale-but-valid collateral key=%s valid_until=%d code=%s",
                key,
                int(entry.valid_until),
                getattr(error, "code", "INTERNAL_ERROR"),
            )
        return entry.collateral

    # --- fetching -----------------------------------------------------------------------------------

    def _fetch(self, key: CollateralKey, flight: _Flight) -> None:
        """Run one fetch for ``key`` and publish its outcome to everyone waiting on ``flight``."""
        with self._lock:
            self._misses += 1
        try:
            collateral = self._inner.get(key.tee, key.fmspc, key.ca)
            valid_until: float = collateral_next_update(collateral)
        except BaseException as e:
            with self._lock:
                self._errors += 1
                self._remember_failure(key, _Failure(self._clock() + self._backoff, e))
                self._flights.pop(key, None)
            flight.error = e
            log.warning(
                "collateral fetch failed key=%s code=%s retry_after_s=%g",
                key,
                getattr(e, "code", "INTERNAL_ERROR"),
                self._backoff,
            )
            flight.done.set()
            return
        with self._lock:
            now = self._clock()
            self._failures.pop(key, None)
            self._flights.pop(key, None)
            if now < valid_until:
                self._entries.put(key, _Entry(collateral, valid_until, now))
            else:
                # Already expired (the verifier will say so): returned, not cached.
                self._entries.pop(key)
        flight.collateral = collateral
        flight.done.set()

    def _remember_failure(self, key: CollateralKey, failure: _Failure) -> None:
        """Under the lock. Keys come from quotes (a forged PCK leaf can name any FMSPC), so the table
        is bounded: past failures are dropped first, then the oldest."""
        self._failures.pop(key, None)
        self._failures[key] = failure
        if len(self._failures) > 4 * self._max_entries:
            now = self._clock()
            for old in [k for k, f in self._failures.items() if f.until <= now]:
                del self._failures[old]
            while len(self._failures) > 4 * self._max_entries:
                del self._failures[next(iter(self._failures))]

    def clear(self) -> None:
        """Forget every entry and remembered failure (e.g. after an operator learns of a revocation)."""
        with self._lock:
            self._entries.clear()
            self._failures.clear()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._errors, len(self._entries), self._stale)
