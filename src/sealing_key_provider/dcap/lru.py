"""The one bounded LRU map of the project: memory must never grow with hostile input.

The verifier keeps its caches (checked chains, prepared collateral, QE signatures, attestation keys)
in these, the collateral cache keeps its entries in one. Thread-safe: every operation holds the map's
lock, and :meth:`Lru.get_or_make` builds a missing value outside it (a build that raises caches
nothing). Kept in ``dcap``, the lowest layer that needs it, so every layer above can share it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

_K = TypeVar("_K")
_V = TypeVar("_V")


class Lru(Generic[_K, _V]):
    """A bounded, thread-safe map that forgets its least recently used entry when full."""

    __slots__ = ("_data", "_lock", "_size")

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("an LRU map must hold at least one entry")
        self._size = size
        self._data: OrderedDict[_K, _V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _K) -> _V | None:
        """The value of ``key`` (now the most recently used), or None."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        return None

    def put(self, key: _K, value: _V) -> tuple[_K, _V] | None:
        """Store ``key`` as the most recently used; return the entry this evicted, if any."""
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            if len(self._data) > self._size:
                return self._data.popitem(last=False)
        return None

    def get_or_make(self, key: _K, make: Callable[[], _V]) -> _V:
        """The value of ``key``, made (outside the lock) and stored if missing; failures are not stored."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = make()
        with self._lock:
            self._data[key] = value
            if len(self._data) > self._size:
                self._data.popitem(last=False)
        return value

    def pop(self, key: _K) -> _V | None:
        """Remove ``key``; its value, or None if it was not there."""
        with self._lock:
            return self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data


__all__ = ["Lru"]
