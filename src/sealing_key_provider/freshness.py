"""Stateless freshness tokens: prove that a TD quote was made after the provider issued a token.

Flow: the TD asks ``/v1/nonce`` for a token, puts ``SHA-256(token)`` into ``report_data[32:64]`` of its
quote, and sends the token with the key request. With freshness required, the provider accepts the
quote only if the token is authentic (its own HMAC), not expired, and hashed into the quote. A quote
captured earlier can then no longer be replayed after the window.

The provider keeps no state (it runs in an enclave and restarts freely), so the token carries its own
issue time and is authenticated with an HMAC key. That key is derived from the SGX sealing key with
HKDF under its own label, never the sealing key itself, so that nothing which verifies tokens can be
turned into an oracle on key material and tokens survive restarts on the same enclave. Within the
window a token can be reused; it bounds the *age* of a quote, it is not a one-time nonce.

Time is a parameter here; under Gramine the host sets the clock, so a clock set back would keep an
expired token valid. The provider therefore passes only times that are not below its time floor
(:mod:`.timefloor`), which every clock reading it has acted on raises.

Token layout (57 bytes): ``version (1) || issued_at (u64 big-endian, Unix seconds) || random (16) ||
HMAC-SHA256(nonce_key, version || issued_at || random)``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import FreshnessError

TOKEN_VERSION: Final = 1
RANDOM_SIZE: Final = 16
MAC_SIZE: Final = 32
_HEADER = struct.Struct(">BQ")
TOKEN_SIZE: Final = _HEADER.size + RANDOM_SIZE + MAC_SIZE

DEFAULT_WINDOW_SECONDS: Final = 300
#: Tokens stamped a little in the future are tolerated: the clock that issued them may since have been
#: stepped back by NTP. Nothing else issues them, so a larger lead means a forged or broken clock.
DEFAULT_MAX_FUTURE_SKEW: Final = 5

NONCE_KEY_LABEL: Final = b"gramine-sealing-key-provider/freshness-nonce-key-v1"


def derive_nonce_key(sealing_key: bytes) -> bytes:
    """The HMAC key of freshness tokens, HKDF-SHA256(sealing key) under its own label."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=NONCE_KEY_LABEL, info=b"hmac-sha256").derive(
        sealing_key
    )


def token_binding(token: bytes) -> bytes:
    """What the TD puts in ``report_data[32:64]``: ``SHA-256(token)``."""
    return hashlib.sha256(token).digest()


@dataclass(frozen=True, slots=True)
class FreshnessTokens:
    """Issues and verifies tokens. Time is always a parameter (Unix seconds), never read here."""

    nonce_key: bytes = field(repr=False)
    window_seconds: int = DEFAULT_WINDOW_SECONDS
    max_future_skew: int = DEFAULT_MAX_FUTURE_SKEW
    random_bytes: Callable[[int], bytes] = field(default=os.urandom, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.nonce_key) < 32:
            raise ValueError("nonce key must be at least 32 bytes")
        if self.window_seconds <= 0:
            raise ValueError("freshness window must be positive")
        if self.max_future_skew < 0:
            raise ValueError("future skew must not be negative")

    @classmethod
    def from_sealing_key(
        cls, sealing_key: bytes, window_seconds: int = DEFAULT_WINDOW_SECONDS
    ) -> FreshnessTokens:
        return cls(derive_nonce_key(sealing_key), window_seconds)

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self.nonce_key, body, hashlib.sha256).digest()

    def issue(self, now: float) -> bytes:
        issued_at = int(now)
        if issued_at < 0:
            raise ValueError("time must not be negative")
        rand = self.random_bytes(RANDOM_SIZE)
        if len(rand) != RANDOM_SIZE:
            raise ValueError("random source returned the wrong number of bytes")
        body = _HEADER.pack(TOKEN_VERSION, issued_at) + rand
        return body + self._mac(body)

    def verify(self, token: bytes, now: float) -> int:
        """Check a token; return its issue time. Raises :class:`FreshnessError` with the reason.

        The MAC is checked before the time, so nothing about an unauthenticated token's content is
        reported back.
        """
        if not isinstance(token, (bytes, bytearray)) or len(token) != TOKEN_SIZE:
            raise FreshnessError(f"freshness token must be {TOKEN_SIZE} bytes")
        token = bytes(token)
        body, mac = token[:-MAC_SIZE], token[-MAC_SIZE:]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise FreshnessError("freshness token is not authentic (not issued by this provider)")
        version, issued_at = _HEADER.unpack_from(body)
        if version != TOKEN_VERSION:
            raise FreshnessError(f"freshness token version {version} is not supported")
        if issued_at > now + self.max_future_skew:
            raise FreshnessError("freshness token is issued in the future")
        if now - issued_at > self.window_seconds:
            raise FreshnessError(
                f"freshness token expired ({int(now - issued_at)} s old, window {self.window_seconds} s)"
            )
        return int(issued_at)

    def verify_bound(self, token: bytes, report_data: bytes, now: float) -> int:
        """Verify ``token`` and that the TD quote's ``report_data[32:64]`` is ``SHA-256(token)``."""
        issued_at = self.verify(token, now)
        if len(report_data) != 64:
            raise FreshnessError(f"report data must be 64 bytes, got {len(report_data)}")
        if not hmac.compare_digest(report_data[32:64], token_binding(token)):
            raise FreshnessError("TD quote report_data[32:64] is not SHA-256 of the freshness token")
        return issued_at
