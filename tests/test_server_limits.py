"""The limiters on their own, with a controlled clock (no sleeping for synchronisation): token-bucket
refill, burst and reservation (waiting for a token instead of refusal), relays, the bounded client
table, the fair worker gate, and connection shares with eviction of idle connections."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from sealing_key_provider.errors import Overloaded, RateLimited
from sealing_key_provider.server.limits import Admission, FairGate, RateLimiter, RelaySet


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
    assert limiter.refusal("a").code == "RATE_LIMITED"


def test_requests_over_the_rate_reserve_a_later_token_up_to_their_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, 20, clock=clock)
    waits = [limiter.reserve("relay", max_wait=15.0) for _ in range(48)]
    # The burst goes at once; the next 28 are spaced at the rate, in order: none is refused.
    assert waits[:20] == [0.0] * 20
    assert waits[20:] == pytest.approx([0.1 * (i + 1) for i in range(28)])
    # One that would have to wait longer than it may is refused and takes nothing.
    assert limiter.reserve("relay", max_wait=2.0) is None
    assert limiter.reserve("relay", max_wait=3.0) == pytest.approx(2.9)


def test_relays_get_a_larger_share() -> None:
    clock = Clock()
    relays = RelaySet(["10.0.0.0/24", "192.0.2.7"])
    assert "10.0.0.9" in relays and "192.0.2.7" in relays
    assert "10.0.1.1" not in relays and "::1" not in relays and "-" not in relays
    limiter = RateLimiter(1.0, 2, relays=relays, relay_share=4, clock=clock)
    assert sum(limiter.allow("10.0.0.9") for _ in range(10)) == 8
    assert sum(limiter.allow("10.0.1.1") for _ in range(10)) == 2


def test_waiting_for_a_token() -> None:
    async def scenario() -> None:
        limiter = RateLimiter(1000.0, 1)
        await limiter.wait("a", 1.0)
        await limiter.wait("a", 1.0)  # waits about a millisecond
        slow = RateLimiter(0.001, 1)
        await slow.wait("a", 1.0)
        with pytest.raises(RateLimited) as info:
            await slow.wait("a", 1.0)
        assert "before its deadline" in info.value.message

    asyncio.run(scenario())


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
        gate = FairGate(2)
        await gate.acquire("a", 1.0)
        await gate.acquire("a", 1.0)
        assert gate.in_use == 2
        with pytest.raises(Overloaded) as info:
            await gate.acquire("b", 0.01)
        assert info.value.code == "OVERLOADED"
        assert gate.waiting == 0  # the one that gave up left the queue
        gate.release()
        gate.release()
        assert gate.in_use == 0

    asyncio.run(scenario())


def test_gate_serves_addresses_in_turn() -> None:
    async def scenario() -> None:
        gate = FairGate(1)
        await gate.acquire("busy", 1.0)
        order: list[str] = []

        async def request(client: str) -> None:
            await gate.acquire(client, 10.0)
            order.append(client)
            gate.release()

        # One address queues five requests before another queues one.
        tasks = [asyncio.create_task(request("busy")) for _ in range(5)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(request("other")))
        await asyncio.sleep(0)
        assert gate.waiting == 6
        gate.release()
        await asyncio.gather(*tasks)
        # "other" waits for one of "busy"'s requests, not for all five.
        assert order.index("other") == 1
        assert gate.in_use == 0

    asyncio.run(scenario())


def test_gate_passes_on_a_slot_handed_to_a_waiter_that_gave_up() -> None:
    async def scenario() -> None:
        gate = FairGate(1)
        await gate.acquire("a", 1.0)
        waiter = asyncio.create_task(gate.acquire("b", 10.0))
        await asyncio.sleep(0)
        gate.release()  # handed to b ...
        waiter.cancel()  # ... which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert gate.in_use == 0
        await gate.acquire("c", 0.01)

    asyncio.run(scenario())


def test_each_address_holds_at_most_its_share() -> None:
    cut: list[int] = []
    admission = Admission(10, 3, relays=RelaySet(["10.0.0.1"]), relay_share=3)
    held = [admission.admit("10.0.0.2", "legacy", lambda i=i: cut.append(i)) for i in range(3)]  # type: ignore[misc]
    for ticket in held:
        ticket.active = True
    with pytest.raises(Overloaded, match="holds its share of 3"):
        admission.admit("10.0.0.2", "http", lambda: None)  # the share counts every listener
    assert admission.share("10.0.0.1") == 9
    held[0].release()
    held[0].release()  # idempotent
    assert admission.held("10.0.0.2") == 2 and admission.open == 2
    admission.admit("10.0.0.2", "http", lambda: None)
    # At its share, an address replaces its own oldest idle connection (a stale keep-alive pool).
    held[1].active = False
    admission.admit("10.0.0.2", "legacy", lambda: None)
    assert cut == [1] and admission.held("10.0.0.2") == 3 and not cut.count(0)


def test_a_full_budget_evicts_the_oldest_idle_connection_of_the_biggest_holder() -> None:
    cut: list[str] = []
    evicted: list[str] = []
    admission = Admission(4, 3, on_evict=lambda t: evicted.append(t.address))

    def cutter(name: str) -> Callable[[], None]:
        return lambda: cut.append(name)

    hog = [admission.admit("hog", "http", cutter(f"hog{i}")) for i in range(3)]
    admission.admit("b", "legacy", lambda: cut.append("b0"))
    hog[0].active = True  # serving a request: never cut
    admission.admit("c", "legacy", lambda: cut.append("c0"))
    assert cut == ["hog1"] and evicted == ["hog"] and admission.open == 4
    assert admission.held("hog") == 2
    # Every holder now has no more than the newcomer would: nothing to take, refused.
    hog[2].active = True
    with pytest.raises(Overloaded, match="all 4 connections are busy"):
        admission.admit("d", "legacy", lambda: None)


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0.0, 1)
    with pytest.raises(ValueError):
        FairGate(0)
    with pytest.raises(ValueError):
        Admission(0, 1)


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("127.0.0.1:4242", "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]:4242", "::1"),
        ("::1", "::1"),
        ("fe80::1:2", "fe80::1:2"),
        ("-", "-"),
    ],
)
def test_address_of_every_peer_form(peer: str, address: str) -> None:
    from sealing_key_provider.server.service import address_of

    assert address_of(peer) == address
