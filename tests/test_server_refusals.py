"""Summarised refusal lines under an injected clock: the first of each (listener, code) at once, then
one summary per interval with the count and the number of addresses; nothing for a quiet interval."""

from __future__ import annotations

import logging

import pytest

from sealing_key_provider.server.refusals import RefusalLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_first_at_once_then_one_summary_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = RefusalLog(logging.getLogger("test.refusals"), interval=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.refusals"):
        for i in range(1000):
            log.record("legacy", "OVERLOADED", f"10.0.0.{i % 7}", f"10.0.0.{i % 7}:1", "full")
        log.record("http", "RATE_LIMITED", "10.0.0.1", "10.0.0.1", "slow down")
        assert [r.getMessage() for r in caplog.records] == [
            "refused protocol=legacy code=OVERLOADED peer=10.0.0.0:1 reason=full",
            "refused protocol=http code=RATE_LIMITED peer=10.0.0.1 reason=slow down",
        ]
        clock.now += 5
        log.flush()
        assert len(caplog.records) == 2  # the interval is not over
        clock.now += 5
        log.flush()
        assert caplog.records[-1].getMessage() == (
            "refused protocol=legacy code=OVERLOADED count=999 addresses=7 seconds=10 "
            "(summary of refusals after the first one logged)"
        )
        assert len(caplog.records) == 3  # RATE_LIMITED had nothing after its first line
        # A new interval starts with a line of its own again.
        log.record("legacy", "OVERLOADED", "10.0.0.9", "10.0.0.9:2", "full")
        assert caplog.records[-1].getMessage().endswith("peer=10.0.0.9:2 reason=full")
        log.record("legacy", "OVERLOADED", "10.0.0.9", "10.0.0.9:3", "full")
        log.flush(force=True)
        assert "count=1 addresses=1" in caplog.records[-1].getMessage()
        assert len(caplog.records) == 5


def test_a_late_refusal_closes_the_previous_window_itself(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = RefusalLog(logging.getLogger("test.refusals"), interval=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.refusals"):
        log.record("legacy", "BAD_REQUEST", "a", "a:1", "x")
        log.record("legacy", "BAD_REQUEST", "a", "a:1", "x")
        clock.now += 30  # no flush ran meanwhile
        log.record("legacy", "BAD_REQUEST", "b", "b:1", "y")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[1].startswith("refused protocol=legacy code=BAD_REQUEST count=1 addresses=1 seconds=30")
    assert messages[2] == "refused protocol=legacy code=BAD_REQUEST peer=b:1 reason=y"
