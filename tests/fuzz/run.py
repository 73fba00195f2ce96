"""``make fuzz``: run every harness of :mod:`.targets` for a while (``--seconds``, split between them).

Each round is a fresh hypothesis run (new random inputs); rounds repeat until the target's share of
the time is used. A finding stops the run with hypothesis's shrunk example and exit status 1: turn it
into a regression test in ``tests/test_fuzz.py``.
"""

from __future__ import annotations

import argparse
import sys
import time

from hypothesis import HealthCheck, given, settings

from tests.fuzz.targets import TARGETS, Target, check, inputs


def fuzz(target: Target, seconds: float, examples: int) -> int:
    """Rounds of ``examples`` inputs until ``seconds`` pass; returns how many inputs were tried."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(inputs(target))
    def one(data: bytes) -> None:
        check(target, data)

    end = time.monotonic() + seconds
    tried = 0
    while time.monotonic() < end:
        one()
        tried += examples
    return tried


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="total time, split between targets")
    parser.add_argument("--examples", type=int, default=200, help="inputs per round")
    parser.add_argument("targets", nargs="*", choices=[[], *TARGETS], help="default: all")
    args = parser.parse_args(argv)
    names = args.targets or list(TARGETS)
    share = args.seconds / len(names)
    print(f"fuzzing {len(names)} target(s), {share:.0f} s each")
    for name in names:
        started = time.monotonic()
        try:
            tried = fuzz(TARGETS[name], share, args.examples)
        except Exception:
            print(f"{name}: FINDING (shrunk example above)", file=sys.stderr)
            raise
        print(f"{name:18s} {tried:8d} inputs in {time.monotonic() - started:5.1f} s: no finding")
    return 0


if __name__ == "__main__":
    sys.exit(main())
