"""The raw-JSON slicer: signatures cover served bytes, so the slice must be exact or refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealing_key_provider.collateral.rawjson import extract_raw_value, split_signed_document, top_level_spans
from sealing_key_provider.errors import CollateralMalformed

SIG = "ab" * 64


def test_plain_document() -> None:
    body = b'{"tcbInfo":{"id":"TDX","version":3},"signature":"' + SIG.encode() + b'"}'
    raw, sig = split_signed_document(body, "tcbInfo")
    assert raw == b'{"id":"TDX","version":3}'
    assert sig == bytes.fromhex(SIG)


def test_whitespace_and_key_order_are_kept_byte_for_byte() -> None:
    inner = b'{ "b" : [ 1 , 2 ],\n\t"a":{ } }'
    body = b'\n {\r\n  "signature" :\t"' + SIG.encode() + b'" ,\n  "tcbInfo"  :  ' + inner + b"  \n} \n"
    raw, _ = split_signed_document(body, "tcbInfo")
    assert raw == inner


def test_escaped_quotes_and_braces_inside_strings() -> None:
    inner = rb'{"x":"a\"}b{\\","y":"\\\"","z":"]}[{","w":"\u00e9\n"}'
    body = b'{"decoy":"\\"tcbInfo\\":{}","tcbInfo":' + inner + b',"signature":"' + SIG.encode() + b'"}'
    assert extract_raw_value(body, "tcbInfo") == inner


def test_nested_key_with_the_same_name_is_not_the_top_level_one() -> None:
    body = b'{"outer":{"tcbInfo":{"evil":1}},"tcbInfo":{"good":1},"signature":"' + SIG.encode() + b'"}'
    assert extract_raw_value(body, "tcbInfo") == b'{"good":1}'


def test_multibyte_utf8_is_sliced_as_bytes() -> None:
    inner = '{"name":"Zürich ✓ 𝄞","n":1}'.encode()
    body = b'{"enclaveIdentity":' + inner + b',"signature":"' + SIG.encode() + b'"}'
    assert split_signed_document(body, "enclaveIdentity")[0] == inner


def test_escaped_key_is_the_same_key_as_for_the_json_parser() -> None:
    body = b'{"\\u0074cbInfo":{"a":1},"signature":"' + SIG.encode() + b'"}'
    assert extract_raw_value(body, "tcbInfo") == b'{"a":1}'


def test_scalar_values_and_empty_containers() -> None:
    body = b'{"a":-1.5e3,"b":true,"c":null,"d":[],"e":{},"f":"","g":false}'
    spans = top_level_spans(body)
    assert [body[s:e] for s, e in spans.values()] == [
        b"-1.5e3",
        b"true",
        b"null",
        b"[]",
        b"{}",
        b'""',
        b"false",
    ]
    assert top_level_spans(b" {} ") == {}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"tcbInfo":{"a":1},"tcbInfo":{"a":2},"signature":"' + SIG.encode() + b'"}', "duplicate"),
        (b'{"signature":"' + SIG.encode() + b'"}', "lacks"),
        (b'[{"tcbInfo":{}}]', "not a JSON object"),
        (b'{"tcbInfo":{"a":1}} x', "not valid"),
        (b'{"tcbInfo":{"a":1}', "not valid"),
        (b'{"tcbInfo":{"a":"\xff"},"signature":"00"}', "not valid"),
        (b"", "not valid"),
        (b'{"tcbInfo":[1],"signature":"' + SIG.encode() + b'"}', "must be a JSON object"),
        (b'{"tcbInfo":{},"signature":"zz"}', "not hex"),
        (b'{"tcbInfo":{},"signature":"abcd"}', "64 bytes"),
        (b'{"tcbInfo":{},"signature":42}', "hex string"),
    ],
)
def test_refusals(body: bytes, reason: str) -> None:
    with pytest.raises(CollateralMalformed, match=reason):
        split_signed_document(body, "tcbInfo")


# --- properties ------------------------------------------------------------------------------------

_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_ws = st.text(alphabet=" \t\r\n", max_size=3)


def _dump(value: Any, data: st.DataObject, ascii_only: bool) -> str:
    """Serialise with random whitespace between tokens, so we know the exact text of every value."""
    if isinstance(value, dict):
        items = [
            data.draw(_ws)
            + json.dumps(k, ensure_ascii=ascii_only)
            + data.draw(_ws)
            + ":"
            + data.draw(_ws)
            + _dump(v, data, ascii_only)
            + data.draw(_ws)
            for k, v in value.items()
        ]
        return "{" + ",".join(items) + (data.draw(_ws) if not items else "") + "}"
    if isinstance(value, list):
        parts = [data.draw(_ws) + _dump(v, data, ascii_only) + data.draw(_ws) for v in value]
        return "[" + ",".join(parts) + (data.draw(_ws) if not parts else "") + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


@settings(max_examples=200, deadline=None)
@given(
    target=st.dictionaries(st.text(max_size=8), _values, max_size=5),
    others=st.dictionaries(st.text(max_size=8).filter(lambda k: k != "tcbInfo"), _values, max_size=4),
    position=st.integers(min_value=0, max_value=4),
    ascii_only=st.booleans(),
    data=st.data(),
)
def test_slice_is_exactly_the_served_text(
    target: dict[str, Any], others: dict[str, Any], position: int, ascii_only: bool, data: st.DataObject
) -> None:
    keys = list(others)
    keys.insert(min(position, len(keys)), "tcbInfo")
    texts = {k: _dump(target if k == "tcbInfo" else others[k], data, ascii_only) for k in keys}
    members = [
        data.draw(_ws)
        + json.dumps(k, ensure_ascii=ascii_only)
        + data.draw(_ws)
        + ":"
        + data.draw(_ws)
        + texts[k]
        + data.draw(_ws)
        for k in keys
    ]
    body = (data.draw(_ws) + "{" + ",".join(members) + "}" + data.draw(_ws)).encode("utf-8")
    raw = extract_raw_value(body, "tcbInfo")
    assert raw == texts["tcbInfo"].encode("utf-8")
    assert json.loads(raw) == target
    spans = top_level_spans(body)
    assert list(spans) == keys
    for k, (start, end) in spans.items():
        assert body[start:end] == texts[k].encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_are_sliced_or_refused_never_crash(junk: bytes) -> None:
    body = b'{"tcbInfo":' + junk + b',"signature":"' + SIG.encode() + b'"}'
    try:
        raw, _ = split_signed_document(body, "tcbInfo")
    except CollateralMalformed:
        return
    assert raw == junk.strip(b" \t\r\n")
