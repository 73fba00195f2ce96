"""Property tests: arbitrary damage to real quotes and collateral gives only this package's typed errors.

Never another exception, never a hang: each example is bounded by the deadline below.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from datetime import timedelta
from typing import NamedTuple

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


#: Codes of a damaged length, type or version field: the quote no longer parses as what it was.
_LAYOUT = frozenset({"QUOTE_MALFORMED", "UNSUPPORTED_QUOTE"})
_QUOTE_SIG = frozenset({"QUOTE_SIGNATURE_INVALID"})
_QE_SIG = frozenset({"QE_REPORT_SIGNATURE_INVALID"})


class Region(NamedTuple):
    """Bytes ``start:end`` of a quote, and the codes a change there may be refused with."""

    name: str
    start: int
    end: int
    codes: frozenset[str]


def signed_regions(quote: bytes) -> list[Region]:
    """The quote, cut into what protects each byte, up to its PCK certificate chain.

    The header and body are signed by the attestation key, which the QE report binds (through its
    report data, with the QE authentication data), which the PCK key signs. A changed layout field
    (a size, a type) is refused by the parser before any signature is looked at.
    """
    q = parse_quote(quote)
    header_codes = _LAYOUT | _QUOTE_SIG  # version and types: the parser; the rest: the signature
    out = [Region("header", 0, 48, header_codes)]
    pos = 48
    if q.header.version == 5:
        out.append(Region("body type and size", pos, pos + 6, _LAYOUT))
        pos += 6
    end = len(q.signed_data)
    out.append(Region("report body", pos, end, _QUOTE_SIG))
    pos = end

    def add(name: str, size: int, codes: frozenset[str], field: bytes | None = None) -> None:
        nonlocal pos
        if field is not None:  # the cut is checked against the parser's own fields
            assert quote[pos : pos + size] == field, name
        out.append(Region(name, pos, pos + size, codes))
        pos += size

    add("signature data size", 4, _LAYOUT)
    add("quote signature", 64, _QUOTE_SIG, q.signature)
    add("attestation key", 64, _QUOTE_SIG, q.attestation_key)
    if q.header.version != 3:
        add("certification data type and size", 6, _LAYOUT)
    add("QE report", 384, _QE_SIG, q.qe_report.raw)
    add("QE report signature", 64, _QE_SIG, q.qe_report_signature)
    add("QE authentication data size", 2, _LAYOUT)
    add("QE authentication data", len(q.qe_auth_data), frozenset({"QE_REPORT_DATA_MISMATCH"}), q.qe_auth_data)
    add("PCK certification data type and size", 6, _LAYOUT)
    return out


def _refused_with(c: Case, quote: bytes, codes: frozenset[str]) -> str:
    with pytest.raises(ProviderError) as e:
        VERIFIER.verify(quote, c.collateral, c.now)
    assert e.value.code in codes, e.value
    assert str(e.value).startswith(e.value.code)
    return e.value.code


def _flipped(quote: bytes, pos: int, mask: int) -> bytes:
    q = bytearray(quote)
    q[pos] ^= mask
    return bytes(q)


@pytest.mark.parametrize("c", cases(), ids=lambda c: c.name)
def test_regions_cover_the_quote_up_to_its_certificate_chain(c: Case) -> None:
    regions = signed_regions(c.quote)
    assert regions[0].start == 0
    assert all(a.end == b.start for a, b in itertools.pairwise(regions))
    q = parse_quote(c.quote)
    assert c.quote[regions[-1].end : q.size].rstrip(b"\x00") == q.pck_chain_pem


@pytest.mark.parametrize("c", cases(), ids=lambda c: c.name)
def test_every_region_refuses_a_flip_of_its_first_and_last_byte(c: Case) -> None:
    for region in signed_regions(c.quote):
        for pos in (region.start, region.end - 1):
            for mask in (0x01, 0x80):
                _refused_with(c, _flipped(c.quote, pos, mask), region.codes)


@pytest.mark.parametrize("c", cases(), ids=lambda c: c.name)
@SETTINGS
@given(data=st.data())
def test_byte_flips_in_signed_regions_are_refused_with_their_code(c: Case, data: st.DataObject) -> None:
    region = data.draw(st.sampled_from(signed_regions(c.quote)))
    pos = data.draw(st.integers(region.start, region.end - 1))
    mask = data.draw(st.integers(1, 255))
    _refused_with(c, _flipped(c.quote, pos, mask), region.codes)


@pytest.mark.parametrize("c", cases(), ids=lambda c: c.name)
@SETTINGS
@given(data=st.data())
def test_byte_flips_anywhere_give_typed_errors_or_change_nothing(c: Case, data: st.DataObject) -> None:
    """Up to four flips anywhere in the quote (PCK chain and padding included): a typed error, or,
    when none of them touched a signed region (e.g. whitespace in the PEM chain, padding after the
    quote), the original's verdict exactly."""
    size = parse_quote(c.quote).size
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=1, max_size=4)
    )
    q = c.quote
    for pos, mask in flips:
        q = _flipped(q, pos, mask)
    try:
        result = VERIFIER.verify(q, c.collateral, c.now)
    except ProviderError as e:
        assert e.code and e.message
        assert str(e).startswith(e.code)
        return
    chain_start = signed_regions(c.quote)[-1].end
    assert all(q[pos] == c.quote[pos] for pos in range(chain_start)), "a changed signed byte was accepted"
    original = VERIFIER.verify(c.quote, c.collateral, c.now)
    assert result.to_dict() == original.to_dict()
    assert result.quote.signed_data == original.quote.signed_data


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
