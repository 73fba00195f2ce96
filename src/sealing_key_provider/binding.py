"""What the provider's SGX quote binds: report data for the legacy protocol and for the v1 API.

Both sides compute these bytes: the provider writes them into its own quote's report data, and the
TD-side client recomputes them from the response to check that the quote it received was made for this
very answer. That is why this module is tiny, pure and free of anything secret: the client imports it
without pulling in the provider.

Layouts (64 bytes, the SGX REPORTDATA):

- legacy: ``SHA-256(encrypted_key) || 32 zero bytes``, byte-compatible with the original and with
  clients built for it (dstack checks bytes 368..400 of the v3 quote).
- v1: ``SHA-256(encrypted_key) || SHA-256(request context)``. The second half pins *which* request was
  answered (the TD quote, scheme, key name, key version), under *which* policy, and everything else the
  response reports (measurements used, TCB status and advisories the provider saw, development mode),
  so a response cannot be replayed as the answer to another request and no reported field can be
  altered on the way.

Every variable-length value is framed by :func:`encode_fields` (count and length prefixes), so distinct
inputs can never produce the same bytes to be hashed.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from .dcap.abi import REPORT_DATA_SIZE
from .errors import ResponseBindingInvalid

SHA256_SIZE = 32

#: Domain-separation label of the v1 request context; part of the hashed bytes.
REQUEST_CONTEXT_LABEL = b"gramine-sealing-key-provider/request-context-v1"

_U32_MAX = 0xFFFFFFFF


def encode_fields(*fields: bytes) -> bytes:
    """Unambiguous framing: ``u32be(count) || for each field: u32be(len) || field``.

    Length prefixes make the encoding injective: no two different tuples of byte strings give the same
    output (a plain concatenation would let ``("ab", "c")`` collide with ``("a", "bc")``).
    """
    if len(fields) > _U32_MAX:
        raise ValueError("too many fields to encode")
    out = [struct.pack(">I", len(fields))]
    for field in fields:
        if len(field) > _U32_MAX:
            raise ValueError("field too long to encode")
        out.append(struct.pack(">I", len(field)))
        out.append(bytes(field))
    return b"".join(out)


def u32be(value: int) -> bytes:
    """A 0..2^32-1 integer as 4 big-endian bytes (key versions, counts)."""
    if not 0 <= value <= _U32_MAX:
        raise ValueError(f"{value} does not fit in an unsigned 32-bit integer")
    return struct.pack(">I", value)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The request a v1 response answers and what the response reports, as both sides know it.

    ``td_quote_sha256`` is SHA-256 over the exact TD quote bytes the client sent (see
    :meth:`for_quote`); ``policy_digest`` is the provider's :meth:`Policy.digest`, also published by
    ``/v1/info`` so a client can pin it. ``measurements``, ``tcb_status``, ``advisory_ids`` and
    ``dev_mode`` are the response's own report of what was applied: binding them means a client can rely
    on them, not only on the key.
    """

    td_quote_sha256: bytes
    scheme: str
    key_name: str
    key_version: int
    policy_digest: bytes
    measurements: tuple[str, ...]
    tcb_status: str
    advisory_ids: tuple[str, ...]
    dev_mode: bool

    def __post_init__(self) -> None:
        if len(self.td_quote_sha256) != SHA256_SIZE:
            raise ValueError("td_quote_sha256 must be 32 bytes")
        if len(self.policy_digest) != SHA256_SIZE:
            raise ValueError("policy_digest must be 32 bytes")
        u32be(self.key_version)

    @classmethod
    def for_quote(
        cls,
        td_quote: bytes,
        *,
        scheme: str,
        key_name: str,
        key_version: int,
        policy_digest: bytes,
        measurements: tuple[str, ...],
        tcb_status: str,
        advisory_ids: tuple[str, ...],
        dev_mode: bool,
    ) -> RequestContext:
        return cls(
            td_quote_sha256=hashlib.sha256(td_quote).digest(),
            scheme=scheme,
            key_name=key_name,
            key_version=key_version,
            policy_digest=policy_digest,
            measurements=tuple(measurements),
            tcb_status=tcb_status,
            advisory_ids=tuple(advisory_ids),
            dev_mode=dev_mode,
        )

    def encode(self) -> bytes:
        """The canonical bytes that are hashed into report_data[32:64]."""
        return encode_fields(
            REQUEST_CONTEXT_LABEL,
            self.td_quote_sha256,
            self.scheme.encode("utf-8"),
            self.key_name.encode("utf-8"),
            u32be(self.key_version),
            self.policy_digest,
            encode_fields(*(m.encode("utf-8") for m in self.measurements)),
            self.tcb_status.encode("utf-8"),
            encode_fields(*(a.encode("utf-8") for a in self.advisory_ids)),
            b"\x01" if self.dev_mode else b"\x00",
        )

    def digest(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()


def report_data_legacy(encrypted_key: bytes) -> bytes:
    """``SHA-256(encrypted_key) || 32 zero bytes``: exactly what the original put in its quote."""
    return hashlib.sha256(encrypted_key).digest() + bytes(SHA256_SIZE)


def report_data_v1(encrypted_key: bytes, context: RequestContext) -> bytes:
    """``SHA-256(encrypted_key) || SHA-256(context.encode())``."""
    return hashlib.sha256(encrypted_key).digest() + context.digest()


def verify_report_data_legacy(report_data: bytes, encrypted_key: bytes) -> None:
    """Client-side check of a legacy response; raises :class:`ResponseBindingInvalid`."""
    _check(report_data, report_data_legacy(encrypted_key))


def verify_report_data_v1(report_data: bytes, encrypted_key: bytes, context: RequestContext) -> None:
    """Client-side check of a v1 response; raises :class:`ResponseBindingInvalid`.

    The two halves are compared separately so the error says whether the ciphertext or the request
    context differs (the latter usually means another policy or another request).
    """
    if len(report_data) != REPORT_DATA_SIZE:
        raise ResponseBindingInvalid(f"provider report data is {len(report_data)} bytes, expected 64")
    expected = report_data_v1(encrypted_key, context)
    if not hmac.compare_digest(report_data[:SHA256_SIZE], expected[:SHA256_SIZE]):
        raise ResponseBindingInvalid("provider quote does not bind the encrypted key")
    if not hmac.compare_digest(report_data[SHA256_SIZE:], expected[SHA256_SIZE:]):
        raise ResponseBindingInvalid(
            "provider quote does not bind this request and answer (TD quote, scheme, key name, version, "
            "policy, measurements, TCB status, advisories or development mode)"
        )


def _check(report_data: bytes, expected: bytes) -> None:
    if len(report_data) != REPORT_DATA_SIZE:
        raise ResponseBindingInvalid(f"provider report data is {len(report_data)} bytes, expected 64")
    if not hmac.compare_digest(report_data, expected):
        raise ResponseBindingInvalid("provider quote does not bind the encrypted key")
