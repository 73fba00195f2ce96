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


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


#: Inputs found by fuzzing (issue 15) that once escaped as untyped errors, per harness.
REGRESSIONS: list[tuple[str, bytes]] = [
    ("key_name", b"\xed\xa0\x80"),  # "\ud800": UnicodeEncodeError in validate_key_name
    ("key_name", b"app/\xff"),
    ("collateral", _deep(100_000)),  # RecursionError in Collateral.from_json
    ("collateral_bundle", _deep(100_000)),
    ("collateral", b'{"pck_crl_issuer_chain": "\\ud800"}'),  # lone surrogate in a string field
    ("tcb_info", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),  # RecursionError in the TCB info reader
    ("enclave_identity", _deep(100_000)),
    ("config", b"dev_mode = \xff\n"),  # UnicodeDecodeError
    ("config", b"[server]\nmax_connections = " + _deep(5000) + b"\n"),  # RecursionError
    ("config", b"[server]\nmax_connections = " + b"9" * 5000 + b"\n"),  # int() digit limit
    ("config", '[server]\nhttp_listen = "127.0.0.1:²"\n'.encode()),  # isdigit() before int()
    ("config", b"[server]\nio_timeout = nan\n"),
    ("config", b"[server]\nio_timeout = inf\n"),
    ("config", b'dev_mode = true\n[platform]\nsealing_key_policy = "mrsigner"\n'),
]


@pytest.mark.parametrize(
    ("name", "data"), REGRESSIONS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(REGRESSIONS)]
)
def test_regressions_found_by_fuzzing_are_typed_errors(name: str, data: bytes) -> None:
    from sealing_key_provider.errors import ProviderError

    result = TARGETS[name].run(data)
    assert isinstance(result, ProviderError), result
    check(TARGETS[name], data)
