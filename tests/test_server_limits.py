"""The limiters on their own: token-bucket refill and burst, the bounded client table, and the
concurrency gate's bounded wait (with a controlled clock; no sleeping for synchronisation)."""

from __future__ import annotations

import asyncio

import pytest

from sealing_key_provider.errors import Overloaded, RateLimited
from sealing_key_provider.server.limits import ConcurrencyGate, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # another address has its own bucket
    clock.now += 0.5  # one token at 2/s
    assert limiter.allow("a") and not limiter.allow("a")
    clock.now += 100  # refill is capped at the burst
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    with pytest.raises(RateLimited) as info:
        limiter.check("a")
    assert info.value.code == "RATE_LIMITED" and info.value.http_status == 429


def test_client_table_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 1, max_clients=100, clock=clock)
    for i in range(10_000):
        limiter.allow(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100
    # The most recently seen addresses are kept (and still limited); the oldest were forgotten.
    assert not limiter.allow("10.0.39.15")  # i = 9999
    assert limiter.allow("10.0.0.0")  # evicted long ago: starts with a full bucket again


def test_clock_going_backwards_does_not_mint_tokens() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 1, clock=clock)
    assert limiter.allow("a")
    clock.now -= 1000
    assert not limiter.allow("a")


def test_gate_bounds_concurrency_and_the_wait() -> None:
    async def scenario() -> None:
        gate = ConcurrencyGate(2, 0.05)
        release = asyncio.Event()
        entered = asyncio.Queue[int]()

        async def hold(i: int) -> None:
            async with gate.slot():
                await entered.put(i)
                await release.wait()

        holders = [asyncio.create_task(hold(i)) for i in range(2)]
        await entered.get()
        await entered.get()
        assert gate.in_use == 2
        with pytest.raises(Overloaded) as info:
            async with gate.slot():
                raise AssertionError("a third request got a slot")
        assert info.value.code == "OVERLOADED" and info.value.http_status == 503
        release.set()
        await asyncio.gather(*holders)
        assert gate.in_use == 0
        async with gate.slot():
            assert gate.in_use == 1

    asyncio.run(scenario())


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0.0, 1)
    with pytest.raises(ValueError):
        ConcurrencyGate(0, 1.0)
