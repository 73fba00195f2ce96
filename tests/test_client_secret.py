"""The TD's ephemeral key pair: it opens sealed boxes made for it, then its private key is zeroed."""

from __future__ import annotations

import os

import nacl.exceptions
import nacl.public
import pytest

from sealing_key_provider.client.secret import EphemeralKeyPair, fill_random, wipe


def test_round_trip_with_libsodium_sealed_box() -> None:
    with EphemeralKeyPair() as pair:
        box = nacl.public.SealedBox(nacl.public.PublicKey(pair.public_key)).encrypt(b"k" * 32)
        assert pair.open_sealed_box(box) == b"k" * 32
        other = nacl.public.SealedBox(nacl.public.PrivateKey.generate().public_key).encrypt(b"k" * 32)
        with pytest.raises(nacl.exceptions.CryptoError):
            pair.open_sealed_box(other)


def test_private_key_is_zeroed_on_exit_and_unusable() -> None:
    with EphemeralKeyPair() as pair:
        box = nacl.public.SealedBox(nacl.public.PublicKey(pair.public_key)).encrypt(b"x" * 32)
        secret = pair._secret  # the buffer itself, to watch it being zeroed
        assert any(secret)
    assert secret == bytearray(32)
    with pytest.raises(nacl.exceptions.CryptoError):
        pair.open_sealed_box(box)


def test_wipe_zeroes_bytearrays_and_fresh_bytes() -> None:
    ba = bytearray(b"\xff" * 32)
    wipe(ba)
    assert ba == bytearray(32)
    fresh = bytes(bytearray(os.urandom(32)))
    wipe(fresh)
    assert fresh == bytes(32)  # CPython: zeroed in place


def test_wipe_leaves_shared_singletons_alone() -> None:
    one = b"\x07"
    wipe(one)
    assert one == b"\x07"


def test_repr_shows_only_the_public_key() -> None:
    pair = EphemeralKeyPair()
    assert repr(pair) == f"EphemeralKeyPair(public_key={pair.public_key.hex()})"
    assert bytes(pair._secret).hex() not in repr(pair)


def test_private_key_is_born_in_its_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """No immutable copy of the random private key: os.urandom (which returns bytes) is never used."""

    def refuse(n: int) -> bytes:
        raise AssertionError("the private key must be read into its buffer, not through os.urandom")

    monkeypatch.setattr(os, "urandom", refuse)
    pairs = [EphemeralKeyPair() for _ in range(2)]
    assert all(any(p._secret) for p in pairs) and pairs[0]._secret != pairs[1]._secret
    box = nacl.public.SealedBox(nacl.public.PublicKey(pairs[0].public_key)).encrypt(b"k" * 32)
    assert pairs[0].open_sealed_box(box) == b"k" * 32


def test_fill_random_fills_the_whole_buffer_in_place() -> None:
    buffer = bytearray(4096)
    fill_random(buffer)
    assert buffer.count(0) < 100  # 4096 random bytes: ~16 zeros expected, not a short read
