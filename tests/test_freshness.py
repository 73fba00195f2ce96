"""Stateless freshness tokens."""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealing_key_provider.errors import FreshnessError
from sealing_key_provider.freshness import (
    NONCE_KEY_LABEL,
    TOKEN_SIZE,
    FreshnessTokens,
    derive_nonce_key,
    token_binding,
)

SEALING_KEY = bytes(range(16))
NOW = 1_800_000_000


def fixed_random(n: int) -> bytes:
    return bytes(range(n))


@pytest.fixture
def tokens() -> FreshnessTokens:
    return FreshnessTokens(derive_nonce_key(SEALING_KEY), random_bytes=fixed_random)


def test_nonce_key_frozen_and_not_the_sealing_key() -> None:
    key = derive_nonce_key(SEALING_KEY)
    assert key.hex() == "1a238629bc96c0e7efe31f628da99210c034aa8e3e4f78b9faa462e79bb07cad"
    assert key != SEALING_KEY and SEALING_KEY not in key
    assert NONCE_KEY_LABEL == b"gramine-sealing-key-provider/freshness-nonce-key-v1"
    assert derive_nonce_key(bytes(16)) != key


def test_token_layout(tokens: FreshnessTokens) -> None:
    token = tokens.issue(NOW + 0.9)
    assert len(token) == TOKEN_SIZE == 57
    version, issued = struct.unpack(">BQ", token[:9])
    assert (version, issued) == (1, NOW)
    assert token[9:25] == bytes(range(16))
    expected_mac = hmac.new(derive_nonce_key(SEALING_KEY), token[:25], hashlib.sha256).digest()
    assert token[25:] == expected_mac


def test_verify_within_window(tokens: FreshnessTokens) -> None:
    token = tokens.issue(NOW)
    assert tokens.verify(token, NOW) == NOW
    assert tokens.verify(token, NOW + 300) == NOW
    assert tokens.verify(token, NOW - 5) == NOW  # issuing clock stepped back a little


def test_expired(tokens: FreshnessTokens) -> None:
    token = tokens.issue(NOW)
    with pytest.raises(FreshnessError, match="expired"):
        tokens.verify(token, NOW + 301)


def test_future(tokens: FreshnessTokens) -> None:
    token = tokens.issue(NOW + 60)
    with pytest.raises(FreshnessError, match="future"):
        tokens.verify(token, NOW)


def test_custom_window() -> None:
    t = FreshnessTokens.from_sealing_key(SEALING_KEY, window_seconds=10)
    token = t.issue(NOW)
    assert t.verify(token, NOW + 10) == NOW
    with pytest.raises(FreshnessError):
        t.verify(token, NOW + 11)


def test_tokens_survive_restart_with_same_sealing_key() -> None:
    token = FreshnessTokens.from_sealing_key(SEALING_KEY).issue(NOW)
    assert FreshnessTokens.from_sealing_key(SEALING_KEY).verify(token, NOW + 1) == NOW
    with pytest.raises(FreshnessError, match="authentic"):
        FreshnessTokens.from_sealing_key(bytes(16)).verify(token, NOW + 1)


@pytest.mark.parametrize("position", range(57))
def test_any_bit_flip_is_refused(tokens: FreshnessTokens, position: int) -> None:
    token = bytearray(tokens.issue(NOW))
    token[position] ^= 0x01
    with pytest.raises(FreshnessError):
        tokens.verify(bytes(token), NOW)


def test_forged_timestamp_refused(tokens: FreshnessTokens) -> None:
    token = tokens.issue(NOW - 10_000)
    forged = struct.pack(">BQ", 1, NOW) + token[9:]
    with pytest.raises(FreshnessError, match="authentic"):
        tokens.verify(forged, NOW)


def test_unknown_version_with_valid_mac(tokens: FreshnessTokens) -> None:
    body = struct.pack(">BQ", 2, NOW) + bytes(16)
    token = body + hmac.new(tokens.nonce_key, body, hashlib.sha256).digest()
    with pytest.raises(FreshnessError, match="version"):
        tokens.verify(token, NOW)


@given(st.binary(max_size=80))
def test_garbage_refused(data: bytes) -> None:
    t = FreshnessTokens(derive_nonce_key(SEALING_KEY))
    with pytest.raises(FreshnessError):
        t.verify(data, NOW)


def test_wrong_type_refused(tokens: FreshnessTokens) -> None:
    with pytest.raises(FreshnessError):
        tokens.verify("00" * 57, NOW)  # type: ignore[arg-type]


def test_bound_to_report_data(tokens: FreshnessTokens) -> None:
    token = tokens.issue(NOW)
    pk = b"\x09" * 32
    assert tokens.verify_bound(token, pk + token_binding(token), NOW) == NOW
    assert token_binding(token) == hashlib.sha256(token).digest()
    with pytest.raises(FreshnessError, match="report_data"):
        tokens.verify_bound(token, pk + bytes(32), NOW)
    with pytest.raises(FreshnessError):
        tokens.verify_bound(token, pk, NOW)


def test_random_part_differs_by_default() -> None:
    t = FreshnessTokens.from_sealing_key(SEALING_KEY)
    assert t.issue(NOW) != t.issue(NOW)


def test_construction_checks() -> None:
    with pytest.raises(ValueError):
        FreshnessTokens(bytes(16))
    with pytest.raises(ValueError):
        FreshnessTokens(bytes(32), window_seconds=0)
    with pytest.raises(ValueError):
        FreshnessTokens(bytes(32), max_future_skew=-1)
    with pytest.raises(ValueError):
        FreshnessTokens(bytes(32)).issue(-1)
    with pytest.raises(ValueError):
        FreshnessTokens(bytes(32), random_bytes=lambda n: b"").issue(NOW)


def test_no_key_material_in_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    t = FreshnessTokens.from_sealing_key(SEALING_KEY)
    token = t.issue(NOW)
    texts: list[str] = [repr(t)]
    for bad, now in ((token, NOW + 10_000), (token[:-1] + b"\x00", NOW), (b"x", NOW)):
        with pytest.raises(FreshnessError) as info:
            t.verify(bad, now)
        texts += [str(info.value), repr(info.value)]
    texts += [r.getMessage() for r in caplog.records]
    for text in texts:
        for secret in (SEALING_KEY.hex(), t.nonce_key.hex(), repr(t.nonce_key), token.hex()):
            assert secret not in text
