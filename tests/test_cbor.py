"""The CBOR subset: RFC 8949 Appendix A vectors, round trips, and bounded refusal of everything else."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealing_key_provider.cbor import CborError, Tag, Value, decode, encode

# (value, hex) from RFC 8949, Appendix A (the items of the supported subset).
VECTORS: list[tuple[Value, str]] = [
    (0, "00"),
    (1, "01"),
    (10, "0a"),
    (23, "17"),
    (24, "1818"),
    (25, "1819"),
    (100, "1864"),
    (1000, "1903e8"),
    (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-1, "20"),
    (-10, "29"),
    (-100, "3863"),
    (-1000, "3903e7"),
    (b"", "40"),
    (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"),
    ("a", "6161"),
    ("IETF", "6449455446"),
    ("\u00fc", "62c3bc"),
    ([], "80"),
    ([1, 2, 3], "83010203"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"),
    ({1: 2, 3: 4}, "a201020304"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    (Tag(1, 1363896240), "c11a514b67b0"),
    (Tag(23, b"\x01\x02\x03\x04"), "d74401020304"),
    (Tag(60000, [b"q", b"c"]), "d9ea60824171416" + "3"),
]


@pytest.mark.parametrize(("value", "hex_"), VECTORS)
def test_rfc_vectors(value: Value, hex_: str) -> None:
    assert encode(value).hex() == hex_
    assert decode(bytes.fromhex(hex_)) == value


values: st.SearchStrategy[Any] = st.recursive(
    st.integers(min_value=-(2**64), max_value=2**64 - 1) | st.binary(max_size=40) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.integers(0, 99), inner, max_size=4)
        | st.builds(Tag, st.integers(0, 2**64 - 1), inner)
    ),
    max_leaves=20,
)


@given(values)
def test_round_trip(value: Value) -> None:
    assert decode(encode(value)) == value


@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_fail_typed(data: bytes) -> None:
    with contextlib.suppress(CborError):
        decode(data)


@pytest.mark.parametrize(
    ("hex_", "reason"),
    [
        ("", "needs 1 bytes"),
        ("18", "needs 1 bytes"),
        ("1b0000", "needs 8 bytes"),
        ("4501020304", "needs 5 bytes"),
        ("0000", "trailing"),
        ("9f01ff", "additional information 31"),  # indefinite-length array
        ("5f4101ff", "additional information 31"),  # indefinite-length byte string
        ("f4", "major type 7"),  # false
        ("f93c00", "major type 7"),  # half float 1.0
        ("9bffffffffffffffff", "announces"),  # 2^64-1 items, nothing behind
        ("bbffffffffffffffff", "announces"),
        ("62c328", "not UTF-8"),
        ("a2616101616102", "repeats a key"),
        ("a18001", "not an integer or string"),
        ("1c", "additional information 28"),
    ],
)
def test_refusals(hex_: str, reason: str) -> None:
    with pytest.raises(CborError, match=reason):
        decode(bytes.fromhex(hex_))


def test_depth_and_item_bounds() -> None:
    deep = bytes.fromhex("81" * 40 + "00")
    with pytest.raises(CborError, match="nesting too deep"):
        decode(deep)
    many = bytes.fromhex("98ff" + "00" * 255)
    assert decode(many) == [0] * 255
    with pytest.raises(CborError, match="too many items"):
        decode(many, max_items=100)
    with pytest.raises(CborError):
        encode(True)
    with pytest.raises(CborError):
        encode(2**64)
