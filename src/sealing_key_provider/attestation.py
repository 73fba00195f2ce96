"""The attested provider key: what its SGX quote binds and what each answer's signature covers.

An SGX quote costs the quoting enclave milliseconds to tens of milliseconds and AESM produces them one
at a time, so a quote per answer caps a provider at a few dozen answers per second. Instead the provider
generates a signing key pair in the enclave, gets *one* quote whose report data binds the public key
and its validity, publishes that pair as an *attestation* (``GET /v1/attestation``), and signs every v1
answer with the key. A client verifies the attestation once (DCAP, pinned identity, same platform) and
then each answer's signature. Both sides compute these bytes, so this module is pure and holds nothing
secret; the key pair lives in :mod:`.attested_key`.

Layouts (all framed by :func:`~.binding.encode_fields`, so distinct inputs never hash alike):

- statement: ``(ATTESTATION_LABEL, "ed25519", signing key (32), SHA-256 of the RA-TLS certificate's
  SubjectPublicKeyInfo (32, or empty without an HTTPS listener), u64be(not_before), u64be(not_after),
  policy digest (32))``; report data = ``SHA-256(statement) || 32 zero bytes``; the attestation id is
  the first 16 bytes of that hash, in hex (it names exactly one statement).
- signed message: ``(SIGNATURE_LABEL, attestation id, binding)`` where binding is the v1 report data
  of :func:`~.binding.report_data_v1`: ``SHA-256(encrypted_key) || SHA-256(request context)``. The
  label keeps a signature from ever being valid for anything else this key could sign.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .binding import SHA256_SIZE, encode_fields
from .dcap.abi import MAX_QUOTE_SIZE, REPORT_DATA_SIZE
from .errors import BadRequest, ResponseBindingInvalid

#: Domain-separation label of the attestation statement (part of the hashed bytes).
ATTESTATION_LABEL: Final = b"gramine-sealing-key-provider/attested-key-v1"
#: Domain-separation label of a response signature (part of the signed bytes).
SIGNATURE_LABEL: Final = b"gramine-sealing-key-provider/response-signature-v1"
SIGNING_ALGORITHM: Final = "ed25519"
SIGNING_KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
ATTESTATION_ID_SIZE: Final = 16
_U64_MAX: Final = 2**64 - 1
_ID_RE: Final = re.compile(r"[0-9a-f]{32}")


def _u64be(value: int) -> bytes:
    if not 0 <= value <= _U64_MAX:
        raise ValueError(f"{value} does not fit in an unsigned 64-bit integer")
    return struct.pack(">Q", value)


@dataclass(frozen=True, slots=True)
class AttestationStatement:
    """What the provider's attestation quote vouches for: its keys, their validity and its policy."""

    signing_key: bytes
    tls_spki_sha256: bytes
    not_before: int
    not_after: int
    policy_digest: bytes

    def __post_init__(self) -> None:
        if len(self.signing_key) != SIGNING_KEY_SIZE:
            raise ValueError(f"signing key must be {SIGNING_KEY_SIZE} bytes")
        if len(self.tls_spki_sha256) not in (0, SHA256_SIZE):
            raise ValueError("tls_spki_sha256 must be 32 bytes or empty")
        if len(self.policy_digest) != SHA256_SIZE:
            raise ValueError("policy digest must be 32 bytes")
        _u64be(self.not_before)
        _u64be(self.not_after)
        if self.not_after <= self.not_before:
            raise ValueError("not_after must be later than not_before")

    def encode(self) -> bytes:
        return encode_fields(
            ATTESTATION_LABEL,
            SIGNING_ALGORITHM.encode("ascii"),
            self.signing_key,
            self.tls_spki_sha256,
            _u64be(self.not_before),
            _u64be(self.not_after),
            self.policy_digest,
        )

    def digest(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()

    def report_data(self) -> bytes:
        """``SHA-256(statement) || 32 zero bytes``: the attestation quote's REPORTDATA."""
        return self.digest() + bytes(REPORT_DATA_SIZE - SHA256_SIZE)

    @property
    def attestation_id(self) -> str:
        return self.digest()[:ATTESTATION_ID_SIZE].hex()

    def valid_at(self, now: float) -> bool:
        return self.not_before <= now < self.not_after


def signed_message(attestation_id: str, binding: bytes) -> bytes:
    """The bytes an answer's signature covers (see the module docstring)."""
    if len(binding) != REPORT_DATA_SIZE:
        raise ValueError(f"binding must be {REPORT_DATA_SIZE} bytes")
    return encode_fields(SIGNATURE_LABEL, attestation_id.encode("ascii"), binding)


def verify_signature(statement: AttestationStatement, signature: bytes, binding: bytes) -> None:
    """Client side: ``signature`` is the attested key's over this binding; else RESPONSE_BINDING_INVALID."""
    if len(signature) != SIGNATURE_SIZE:
        raise ResponseBindingInvalid(f"answer signature is {len(signature)} bytes, expected {SIGNATURE_SIZE}")
    key = Ed25519PublicKey.from_public_bytes(statement.signing_key)
    try:
        key.verify(signature, signed_message(statement.attestation_id, binding))
    except InvalidSignature:
        raise ResponseBindingInvalid(
            "the answer's signature by the attested provider key does not cover this answer to this request"
        ) from None


@dataclass(frozen=True, slots=True)
class AttestationDocument:
    """``GET /v1/attestation``: the statement, the quote over it, and the id that answers name."""

    statement: AttestationStatement
    quote: bytes = field(repr=False)

    @property
    def attestation_id(self) -> str:
        return self.statement.attestation_id

    def to_json(self) -> dict[str, object]:
        s = self.statement
        return {
            "attestation_id": s.attestation_id,
            "signing_algorithm": SIGNING_ALGORITHM,
            "signing_key": s.signing_key.hex(),
            "tls_spki_sha256": s.tls_spki_sha256.hex(),
            "not_before": s.not_before,
            "not_after": s.not_after,
            "policy_digest": s.policy_digest.hex(),
            "quote": base64.b64encode(self.quote).decode("ascii"),
        }

    @classmethod
    def from_json(cls, obj: object) -> AttestationDocument:
        """Strict parse (types, sizes, the id recomputed); :class:`BadRequest` for anything else."""
        if not isinstance(obj, dict):
            raise BadRequest("attestation must be a JSON object")
        known = {
            "attestation_id",
            "signing_algorithm",
            "signing_key",
            "tls_spki_sha256",
            "not_before",
            "not_after",
            "policy_digest",
            "quote",
        }
        missing = sorted(known - set(obj))
        if missing:
            raise BadRequest(f"attestation lacks {missing[0]!r}")
        if obj["signing_algorithm"] != SIGNING_ALGORITHM:
            raise BadRequest(f"attestation signing algorithm must be {SIGNING_ALGORITHM!r}")
        for name in ("not_before", "not_after"):
            value = obj[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadRequest(f"attestation {name} must be an integer")
        try:
            statement = AttestationStatement(
                signing_key=_hex(obj, "signing_key"),
                tls_spki_sha256=_hex(obj, "tls_spki_sha256"),
                not_before=obj["not_before"],
                not_after=obj["not_after"],
                policy_digest=_hex(obj, "policy_digest"),
            )
        except ValueError as e:
            raise BadRequest(f"attestation: {e}") from None
        claimed = obj["attestation_id"]
        if not isinstance(claimed, str) or not _ID_RE.fullmatch(claimed):
            raise BadRequest("attestation_id must be 32 lower-case hex digits")
        if not hmac.compare_digest(claimed, statement.attestation_id):
            raise BadRequest("attestation_id is not the id of the attestation's statement")
        return cls(statement, _b64(obj["quote"]))


def _b64(value: object) -> bytes:
    """The attestation quote: strict standard base64, bounded before decoding."""
    if not isinstance(value, str):
        raise BadRequest("attestation quote must be a base64 string")
    if len(value) > (MAX_QUOTE_SIZE * 4) // 3 + 4:
        raise BadRequest(f"attestation quote is larger than {MAX_QUOTE_SIZE} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("attestation quote is not valid base64") from None


def _hex(obj: dict[str, Any], name: str) -> bytes:
    value = obj[name]
    if not isinstance(value, str):
        raise BadRequest(f"attestation {name} must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise BadRequest(f"attestation {name} must be hex") from None


__all__ = [
    "ATTESTATION_LABEL",
    "SIGNATURE_LABEL",
    "AttestationDocument",
    "AttestationStatement",
    "signed_message",
    "verify_signature",
]
