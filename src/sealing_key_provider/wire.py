"""Wire formats shared by the server and the TD-side client: the legacy TCP frames and the v1 JSON.

Legacy (byte-compatible with the original and its clients, e.g. dstack): a request is a 4-byte
big-endian length and that many bytes of JSON ``{"quote": [ints 0..255]}``; the response is a 4-byte
big-endian length and compact JSON ``{"encrypted_key":[...],"provider_quote":[...]}``. The original
allocated the announced length before reading; here the length is bounded first and zero is refused.

HTTP API v1: JSON with base64 byte strings (see :class:`KeyRequestV1`, :class:`KeyResponseV1`).
Parsing is strict: wrong types are refused, never coerced.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .dcap.abi import MAX_QUOTE_SIZE
from .errors import BadRequest, RequestTooLarge

#: How a v1 answer is authenticated: a per-request SGX quote, the attested key's signature (default
#: over plain HTTP), or the attested RA-TLS channel it travels on (see :class:`KeyResponseV1`).
EVIDENCE_QUOTE: Final = "quote"
EVIDENCE_SIGNATURE: Final = "signature"
EVIDENCE_RATLS: Final = "ratls"
#: What a v1 request may ask for (absent: the channel's default), and what a v1 answer may carry.
REQUESTABLE_EVIDENCE: Final = (EVIDENCE_QUOTE, EVIDENCE_SIGNATURE)
RESPONSE_EVIDENCE: Final = (EVIDENCE_QUOTE, EVIDENCE_SIGNATURE, EVIDENCE_RATLS)

#: Largest legacy frame we accept (the original accepted 4 GiB and allocated it up front).
MAX_LEGACY_FRAME: Final = 1024 * 1024
LENGTH_PREFIX: Final = struct.Struct(">I")


# --- Legacy TCP protocol -----------------------------------------------------------------------------


def check_frame_length(length: int, limit: int = MAX_LEGACY_FRAME) -> int:
    """Bound a frame's announced length before anything is allocated or read."""
    if length == 0:
        raise BadRequest("empty frame (length 0)")
    if length > limit:
        raise RequestTooLarge(f"frame of {length} bytes is larger than the {limit}-byte limit")
    return length


def _byte_array(value: object, what: str) -> bytes:
    if not isinstance(value, list):
        raise BadRequest(f"{what} must be a JSON array of integers 0..255")
    try:
        return bytes(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{what} must be a JSON array of integers 0..255") from None


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BadRequest(f"duplicate key {key!r} in JSON object")
        out[key] = value
    return out


def _load_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(body, object_pairs_hook=_reject_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest(f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return obj


def decode_legacy_request(body: bytes) -> bytes:
    """The quote of a legacy request body. Extra fields are ignored, as serde did in the original."""
    obj = _load_object(body, "legacy request")
    if "quote" not in obj:
        raise BadRequest("legacy request lacks the 'quote' field")
    quote = obj["quote"]
    # bool is an int subclass in Python but not a number in serde: refuse it like the original did.
    # A JSON boolean needs the literal true/false in the text, so most bodies skip the per-item scan.
    if (
        isinstance(quote, list)
        and (b"true" in body or b"false" in body)
        and any(isinstance(v, bool) for v in quote)
    ):
        raise BadRequest("quote must be a JSON array of integers 0..255")
    return _byte_array(quote, "quote")


def encode_legacy_request(quote: bytes) -> bytes:
    """A full request frame, as the original's clients send it."""
    body = json.dumps({"quote": list(quote)}).encode()
    return LENGTH_PREFIX.pack(len(body)) + body


#: Decimal text of every byte value, for encoding byte arrays as JSON integer lists without json.dumps.
_DECIMAL: Final = tuple(str(i) for i in range(256))


def _int_list(data: bytes) -> str:
    return ",".join([_DECIMAL[b] for b in data])


def encode_legacy_response(encrypted_key: bytes, provider_quote: bytes) -> bytes:
    """A full response frame: compact JSON with keys in this order, exactly as serde_json wrote it
    (byte-identical to ``json.dumps(..., separators=(",", ":"))``, three times faster)."""
    body = f'{{"encrypted_key":[{_int_list(encrypted_key)}],"provider_quote":[{_int_list(provider_quote)}]}}'.encode()
    return LENGTH_PREFIX.pack(len(body)) + body


def decode_legacy_response(body: bytes) -> tuple[bytes, bytes]:
    """(encrypted_key, provider_quote) from a response body (without its length prefix)."""
    obj = _load_object(body, "legacy response")
    return _byte_array(obj.get("encrypted_key"), "encrypted_key"), _byte_array(
        obj.get("provider_quote"), "provider_quote"
    )


# --- HTTP API v1 ----------------------------------------------------------------------------------


def b64decode(value: object, what: str, max_bytes: int) -> bytes:
    """Strict standard base64 (padding required), bounded before decoding."""
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a base64 string")
    if len(value) > (max_bytes * 4) // 3 + 4:
        raise RequestTooLarge(f"{what} is larger than {max_bytes} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what} is not valid base64") from None


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class KeyRequestV1:
    """``POST /v1/keys`` body: ``{"quote": b64, "key_name"?: str, "key_version"?: int, "scheme"?: str,
    "nonce"?: b64, "evidence"?: "quote" | "signature"}``."""

    quote: bytes = field(repr=False)
    key_name: str | None = None
    key_version: int | None = None
    scheme: str | None = None
    nonce: bytes | None = None
    evidence: str | None = None

    @classmethod
    def from_json(cls, body: bytes, max_quote: int) -> KeyRequestV1:
        obj = _load_object(body, "request body")
        return cls.from_mapping(obj, max_quote)

    @classmethod
    def from_mapping(cls, obj: Mapping[str, Any], max_quote: int) -> KeyRequestV1:
        unknown = sorted(set(obj) - {"quote", "key_name", "key_version", "scheme", "nonce", "evidence"})
        if unknown:
            raise BadRequest(f"unknown field {unknown[0]!r} in key request")
        if "quote" not in obj:
            raise BadRequest("key request lacks the 'quote' field")
        key_name = obj.get("key_name")
        if key_name is not None and not isinstance(key_name, str):
            raise BadRequest("key_name must be a string")
        key_version = obj.get("key_version")
        if key_version is not None and (isinstance(key_version, bool) or not isinstance(key_version, int)):
            raise BadRequest("key_version must be an integer")
        scheme = obj.get("scheme")
        if scheme is not None and not isinstance(scheme, str):
            raise BadRequest("scheme must be a string")
        nonce = obj.get("nonce")
        evidence = obj.get("evidence")
        if evidence is not None and evidence not in REQUESTABLE_EVIDENCE:
            raise BadRequest(f"evidence must be one of {', '.join(map(repr, REQUESTABLE_EVIDENCE))}")
        return cls(
            quote=b64decode(obj["quote"], "quote", max_quote),
            key_name=key_name,
            key_version=key_version,
            scheme=scheme,
            nonce=None if nonce is None else b64decode(nonce, "nonce", 256),
            evidence=evidence,
        )

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"quote": b64encode(self.quote)}
        if self.key_name is not None:
            out["key_name"] = self.key_name
        if self.key_version is not None:
            out["key_version"] = self.key_version
        if self.scheme is not None:
            out["scheme"] = self.scheme
        if self.nonce is not None:
            out["nonce"] = b64encode(self.nonce)
        if self.evidence is not None:
            out["evidence"] = self.evidence
        return out


@dataclass(frozen=True, slots=True)
class KeyResponseV1:
    """``POST /v1/keys`` answer. ``policy_digest`` lets the client recompute the binding.

    ``evidence`` says what authenticates it: ``"quote"`` (``provider_quote``, a per-request SGX quote
    over ``binding``), ``"signature"`` (``signature`` by the key of attestation ``attestation_id``) or
    ``"ratls"`` (nothing in the body: the RA-TLS channel it came on is attested). ``binding`` is the
    provider's statement of the v1 report data; a client recomputes it and never takes it on trust.
    """

    encrypted_key: bytes
    provider_quote: bytes = field(repr=False)
    scheme: str
    measurements: tuple[str, ...]
    key_name: str
    key_version: int
    tcb_status: str
    advisory_ids: tuple[str, ...]
    policy_digest: bytes
    dev_mode: bool
    evidence: str = "quote"
    binding: bytes = b""
    signature: bytes = b""
    attestation_id: str = ""

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "encrypted_key": b64encode(self.encrypted_key),
            "evidence": self.evidence,
            "binding": self.binding.hex(),
        }
        if self.evidence == "quote":
            out["provider_quote"] = b64encode(self.provider_quote)
        elif self.evidence == "signature":
            out["signature"] = b64encode(self.signature)
            out["attestation_id"] = self.attestation_id
        return out | {
            "scheme": self.scheme,
            "measurements": list(self.measurements),
            "key_name": self.key_name,
            "key_version": self.key_version,
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            "policy_digest": self.policy_digest.hex(),
            "dev_mode": self.dev_mode,
        }

    @classmethod
    def from_json(cls, obj: object) -> KeyResponseV1:
        if not isinstance(obj, dict):
            raise BadRequest("key response must be a JSON object")
        try:
            measurements = obj["measurements"]
            advisories = obj["advisory_ids"]
            if not isinstance(measurements, list) or not all(isinstance(m, str) for m in measurements):
                raise BadRequest("measurements must be a list of strings")
            if not isinstance(advisories, list) or not all(isinstance(a, str) for a in advisories):
                raise BadRequest("advisory_ids must be a list of strings")
            for name in ("scheme", "key_name", "tcb_status", "policy_digest"):
                if not isinstance(obj[name], str):
                    raise BadRequest(f"{name} must be a string")
            if isinstance(obj["key_version"], bool) or not isinstance(obj["key_version"], int):
                raise BadRequest("key_version must be an integer")
            if not isinstance(obj["dev_mode"], bool):
                raise BadRequest("dev_mode must be a boolean")
            digest = bytes.fromhex(obj["policy_digest"])
        except KeyError as e:
            raise BadRequest(f"key response lacks {e.args[0]!r}") from None
        except ValueError:
            raise BadRequest("policy_digest must be hex") from None
        evidence = obj.get("evidence", "quote")  # answers of providers before the attested key
        if evidence not in RESPONSE_EVIDENCE:
            raise BadRequest(f"evidence must be one of {', '.join(map(repr, RESPONSE_EVIDENCE))}")
        binding_hex = obj.get("binding", "")
        if not isinstance(binding_hex, str) or len(binding_hex) not in (0, 128):
            raise BadRequest("binding must be 64 bytes in hex")
        try:
            binding = bytes.fromhex(binding_hex)
        except ValueError:
            raise BadRequest("binding must be 64 bytes in hex") from None
        quote, signature, attestation_id = b"", b"", ""
        if evidence == "quote":
            quote = b64decode(obj.get("provider_quote"), "provider_quote", MAX_QUOTE_SIZE)
        elif evidence == "signature":
            signature = b64decode(obj.get("signature"), "signature", 1024)
            claimed_id = obj.get("attestation_id")
            if not isinstance(claimed_id, str) or not 0 < len(claimed_id) <= 64:
                raise BadRequest("attestation_id must be a string")
            attestation_id = claimed_id
        return cls(
            encrypted_key=b64decode(obj.get("encrypted_key"), "encrypted_key", 1024),
            provider_quote=quote,
            scheme=obj["scheme"],
            measurements=tuple(measurements),
            key_name=obj["key_name"],
            key_version=obj["key_version"],
            tcb_status=obj["tcb_status"],
            advisory_ids=tuple(advisories),
            policy_digest=digest,
            dev_mode=obj["dev_mode"],
            evidence=evidence,
            binding=binding,
            signature=signature,
            attestation_id=attestation_id,
        )


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The JSON error shape of every non-2xx HTTP answer."""
    return {"error": {"code": code, "message": message}}
