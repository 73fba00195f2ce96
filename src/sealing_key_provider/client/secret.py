"""Short-lived secrets on the TD side: an X25519 key pair whose private half is zeroed after use.

Python gives no guarantee about copies of immutable objects, and PyNaCl's bindings take ``bytes``
only. What can be done: the private key is born in a ``bytearray`` we own and zero (the random
bytes are read straight into it, never through an immutable ``bytes`` as ``os.urandom`` returns);
the one ``bytes`` copy handed to libsodium is created here, used, and then zeroed in place (CPython
only: its buffer is reached with ``ctypes``; elsewhere it is merely dropped). libsodium zeroes its own intermediates (the
shared secret and the box key) itself.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Final

import nacl.bindings
import nacl.exceptions

X25519_KEY_SIZE: Final = 32
_CPYTHON: Final = sys.implementation.name == "cpython"
#: Offset of a bytes object's data from its address in CPython: the object header (size - len - NUL).
_BYTES_DATA_OFFSET: Final = sys.getsizeof(b"") - 1


def wipe(buffer: bytes | bytearray) -> None:
    """Zero ``buffer`` in place: a bytearray always; a bytes object on CPython.

    Only call it on ``bytes`` this module created and nobody else references: CPython shares some
    bytes objects (the empty one, single bytes), which is why those are never touched.
    """
    if isinstance(buffer, bytearray):
        buffer[:] = bytes(len(buffer))
    elif _CPYTHON and len(buffer) > 1:
        ctypes.memset(id(buffer) + _BYTES_DATA_OFFSET, 0, len(buffer))


def fill_random(buffer: bytearray) -> None:
    """Fill ``buffer`` in place from the kernel's CSPRNG (``getrandom``, via ``/dev/urandom``).

    ``readinto`` writes into the buffer we own, so no other copy of the random bytes is made."""
    view = memoryview(buffer)
    with open("/dev/urandom", "rb", buffering=0) as f:
        while view:
            got = f.readinto(view)
            if not got:
                raise OSError("/dev/urandom returned no bytes")
            view = view[got:]


class EphemeralKeyPair:
    """One request's X25519 key pair. Use as a context manager: the private key is zeroed on exit."""

    __slots__ = ("_secret", "public_key")

    def __init__(self) -> None:
        self._secret = bytearray(X25519_KEY_SIZE)
        fill_random(self._secret)
        sk = bytes(self._secret)
        try:
            self.public_key: bytes = nacl.bindings.crypto_scalarmult_base(sk)
        finally:
            wipe(sk)

    def open_sealed_box(self, ciphertext: bytes) -> bytes:
        """libsodium ``crypto_box_seal_open``; raises ``nacl.exceptions.CryptoError`` if it does not open."""
        if not any(self._secret):
            raise nacl.exceptions.CryptoError("the key pair was already wiped")
        sk = bytes(self._secret)
        try:
            plaintext: bytes = nacl.bindings.crypto_box_seal_open(ciphertext, self.public_key, sk)
        finally:
            wipe(sk)
        return plaintext

    def wipe(self) -> None:
        wipe(self._secret)

    def __enter__(self) -> EphemeralKeyPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wipe()

    def __repr__(self) -> str:
        return f"EphemeralKeyPair(public_key={self.public_key.hex()})"
