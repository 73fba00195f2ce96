"""Property tests: arbitrary damage to real quotes and collateral gives only this package's typed errors.

Never another exception, never a hang: each example is bounded by the deadline below.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealing_key_provider.dcap import Collateral, Verifier, parse_quote
from sealing_key_provider.errors import ProviderError

from .corpus import Case, cases

SETTINGS = settings(
    max_examples=150,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
VERIFIER = Verifier()


def _check(c: Case, quote: bytes) -> None:
    try:
        VERIFIER.verify(quote, c.collateral, c.now)
    except ProviderError as e:
        assert e.code and e.message
        assert str(e).startswith(e.code)


@pytest.mark.parametrize("c", cases(), ids=lambda c: c.name)
@SETTINGS
@given(data=st.data())
def test_byte_flips_give_typed_errors(c: Case, data: st.DataObject) -> None:
    size = parse_quote(c.quote).size
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=1, max_size=4)
    )
    q = bytearray(c.quote)
    for pos, mask in flips:
        q[pos] ^= mask
    _check(c, bytes(q))


@pytest.mark.parametrize("c", cases(), ids=lambda c: c.name)
@SETTINGS
@given(data=st.data())
def test_truncations_and_extensions_give_typed_errors(c: Case, data: st.DataObject) -> None:
    size = parse_quote(c.quote).size
    cut = data.draw(st.integers(0, size))
    tail = data.draw(st.binary(max_size=64))
    _check(c, c.quote[:cut] + tail)


@SETTINGS
@given(blob=st.binary(max_size=6000))
def test_random_bytes_give_typed_errors(blob: bytes) -> None:
    try:
        parse_quote(blob)
    except ProviderError as e:
        assert e.code in ("QUOTE_MALFORMED", "UNSUPPORTED_QUOTE")


_FIELDS = [f.name for f in dataclasses.fields(Collateral)]


@pytest.mark.parametrize("c", cases()[:4], ids=lambda c: c.name)
@SETTINGS
@given(data=st.data())
def test_collateral_edits_give_typed_errors(c: Case, data: st.DataObject) -> None:
    field = data.draw(st.sampled_from(_FIELDS))
    value: bytes = getattr(c.collateral, field)
    action = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    b = bytearray(value)
    if action == "flip" and b:
        pos = data.draw(st.integers(0, len(b) - 1))
        b[pos] ^= data.draw(st.integers(1, 255))
    elif action == "truncate":
        del b[data.draw(st.integers(0, len(b))) :]
    else:
        b += data.draw(st.binary(min_size=1, max_size=32))
    edited = dataclasses.replace(c.collateral, **{field: bytes(b)})
    try:
        VERIFIER.verify(c.quote, edited, c.now)
    except ProviderError as e:
        assert e.code


@SETTINGS
@given(text=st.text(max_size=300))
def test_collateral_json_garbage_is_malformed(text: str) -> None:
    try:
        Collateral.from_json(text)
    except ProviderError as e:
        assert e.code == "COLLATERAL_MALFORMED"


@SETTINGS
@given(data=st.data())
def test_collateral_json_field_damage(data: st.DataObject) -> None:
    c = cases()[0]
    obj = json.loads(c.collateral_text)
    key = data.draw(st.sampled_from(sorted(obj)))
    obj[key] = data.draw(
        st.one_of(st.none(), st.integers(), st.text(max_size=40), st.lists(st.integers(), max_size=3))
    )
    try:
        VERIFIER.verify(c.quote, Collateral.from_json(json.dumps(obj)), c.now)
    except ProviderError as e:
        assert e.code
