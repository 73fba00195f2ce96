"""The one bounded LRU map (``dcap.lru``) shared by the verifier's caches and the collateral cache."""

from __future__ import annotations

import pytest

from sealing_key_provider.dcap.lru import Lru


def test_bounded_and_least_recently_used_goes_first() -> None:
    lru: Lru[str, int] = Lru(2)
    assert lru.put("a", 1) is None
    assert lru.put("b", 2) is None
    assert lru.get("a") == 1  # "b" is now the least recently used
    assert lru.put("c", 3) == ("b", 2)
    assert len(lru) == 2 and "b" not in lru and lru.get("b") is None
    assert lru.put("a", 10) is None  # replacing a key evicts nothing
    assert lru.get("a") == 10 and lru.get("c") == 3
    assert lru.pop("a") == 10 and lru.pop("a") is None
    lru.clear()
    assert len(lru) == 0


def test_get_or_make_caches_values_but_never_failures() -> None:
    lru: Lru[int, str] = Lru(1)
    made: list[int] = []

    def make(n: int) -> str:
        made.append(n)
        if n < 0:
            raise ValueError("no")
        return str(n)

    assert lru.get_or_make(1, lambda: make(1)) == "1"
    assert lru.get_or_make(1, lambda: make(1)) == "1"
    with pytest.raises(ValueError):
        lru.get_or_make(-1, lambda: make(-1))
    assert -1 not in lru and 1 in lru
    assert lru.get_or_make(2, lambda: make(2)) == "2"  # evicts 1: size stays 1
    assert len(lru) == 1 and made == [1, -1, 2]


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Lru(0)
