"""A short bounded pass of every fuzz harness (``make fuzz`` runs them for longer), and the regression
inputs fuzzing found."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz.targets import TARGETS, check, inputs

#: Inputs per harness in ``make test``: a few seconds in all.
EXAMPLES = int(os.environ.get("SKP_FUZZ_EXAMPLES", "40"))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_short_fuzz_pass(name: str) -> None:
    target = TARGETS[name]

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(inputs(target))
    def one(data: bytes) -> None:
        check(target, data)

    one()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_parse(name: str) -> None:
    """The seeds are valid inputs: mutations start from something the parser accepts."""
    target = TARGETS[name]
    from sealing_key_provider.errors import ProviderError

    results = [target.run(seed) for seed in target.seeds()]
    assert results and not any(isinstance(r, ProviderError) for r in results)
