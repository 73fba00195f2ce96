"""Wire formats: the legacy frames stay byte-compatible with the original, and parsing is strict."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealing_key_provider.errors import ProviderError
from sealing_key_provider.wire import (
    MAX_LEGACY_FRAME,
    check_frame_length,
    decode_legacy_request,
    decode_legacy_response,
    encode_legacy_request,
    encode_legacy_response,
)


@settings(max_examples=200, derandomize=True)
@given(ek=st.binary(max_size=100), pq=st.binary(max_size=6000))
def test_legacy_response_is_exactly_serde_compact_json(ek: bytes, pq: bytes) -> None:
    frame = encode_legacy_response(ek, pq)
    body = json.dumps({"encrypted_key": list(ek), "provider_quote": list(pq)}, separators=(",", ":")).encode()
    assert frame == len(body).to_bytes(4, "big") + body
    assert decode_legacy_response(frame[4:]) == (ek, pq)


def test_dstack_compatibility_example() -> None:
    assert (
        encode_legacy_response(bytes([1, 2]), bytes([3, 4]))[4:]
        == b'{"encrypted_key":[1,2],"provider_quote":[3,4]}'
    )


def test_request_as_the_original_client_sends_it() -> None:
    frame = encode_legacy_request(bytes([4, 0, 2]))
    assert frame[4:] == b'{"quote": [4, 0, 2]}' and int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert decode_legacy_request(frame[4:]) == bytes([4, 0, 2])
    assert decode_legacy_request(b'{"quote":[1],"extra":"ignored"}') == b"\x01"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1,2]",
        b'{"quote": "AAEC"}',
        b'{"quote": [256]}',
        b'{"quote": [-1]}',
        b'{"quote": [1.5]}',
        b'{"quote": [true]}',
        b'{"quote": [1, false]}',
        b'{"quote": null}',
        b'{"other": [1]}',
        b'{"quote": [1], "quote": [2]}',
        b'{"quote": [1]} trailing',
    ],
)
def test_bad_legacy_requests_are_typed_errors(body: bytes) -> None:
    with pytest.raises(ProviderError) as err:
        decode_legacy_request(body)
    assert err.value.code == "BAD_REQUEST"


def test_frame_length_is_bounded_before_reading() -> None:
    assert check_frame_length(5) == 5
    with pytest.raises(ProviderError) as err:
        check_frame_length(0)
    assert err.value.code == "BAD_REQUEST"
    with pytest.raises(ProviderError) as err:
        check_frame_length(MAX_LEGACY_FRAME + 1)
    assert err.value.code == "REQUEST_TOO_LARGE"
