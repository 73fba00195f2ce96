"""What a TD requires of the provider before it believes a key came from it.

The provider's answer is only worth what the client checks. DCAP proves *some* genuine SGX enclave on
*some* genuine platform produced the quote; only a pinned enclave identity says it is *the* provider
(any enclave, including a malicious one on the same host, can produce a valid quote). So at least one
of MRENCLAVE and MRSIGNER is required: there is no trust on first use, because a TD that learns the
identity from the answer it is checking has checked nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from .. import acceptance
from ..acceptance import DEFAULT_ACCEPTED_TCB_STATUSES
from ..dcap.tcb import TcbStatus

MEASUREMENT_SIZE: Final = 32
POLICY_DIGEST_SIZE: Final = 32
_U16_MAX: Final = 0xFFFF


def _hex(value: str | None, what: str, size: int) -> bytes | None:
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{what} must be hex") from None
    if len(raw) != size:
        raise ValueError(f"{what} must be {size} bytes ({2 * size} hex digits), got {len(raw)} bytes")
    return raw


@dataclass(frozen=True, slots=True)
class ProviderTrust:
    """The TD's expectations of the provider enclave and its platform.

    - ``mrenclave`` / ``mrsigner``: the provider's identity (32 bytes each); at least one is required.
      MRENCLAVE pins one exact build; MRSIGNER (usually with ``isvprodid`` and ``min_isvsvn``) accepts
      every build signed by that key, which survives provider upgrades but trusts the signer.
    - ``accepted_tcb_statuses``: DCAP TCB statuses of the provider's platform that are good enough.
      ``Revoked`` can never be accepted.
    - ``denied_advisory_ids``: Intel advisories (e.g. ``INTEL-SA-00615``) that refuse a platform even
      when its status is accepted; matched case-insensitively, like the provider's policy
      (:mod:`sealing_key_provider.acceptance`).
    - ``expected_policy_digest``: the provider's release policy digest (``/v1/info``), v1 API only.
    - ``allow_debug_provider``: a DEBUG enclave's memory can be read by the host, so its keys are not
      secret; refused unless explicitly allowed (tests on debug builds).
    - ``allow_dev_mode_provider``: a provider that says it runs in development mode skips TD
      verification; refused unless explicitly allowed (demos). Its MRENCLAVE differs anyway.
    """

    mrenclave: bytes | None = None
    mrsigner: bytes | None = None
    isvprodid: int | None = None
    min_isvsvn: int | None = None
    accepted_tcb_statuses: frozenset[TcbStatus] = field(default=DEFAULT_ACCEPTED_TCB_STATUSES)
    denied_advisory_ids: frozenset[str] = field(default=frozenset())
    expected_policy_digest: bytes | None = None
    allow_debug_provider: bool = False
    allow_dev_mode_provider: bool = False

    def __post_init__(self) -> None:
        if self.mrenclave is None and self.mrsigner is None:
            raise ValueError(
                "the provider's MRENCLAVE or MRSIGNER must be pinned (no trust on first use): "
                "without it any enclave on any genuine platform could hand out keys"
            )
        for name in ("mrenclave", "mrsigner"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, bytes) or len(value) != MEASUREMENT_SIZE):
                raise ValueError(f"{name} must be {MEASUREMENT_SIZE} bytes")
        for name in ("isvprodid", "min_isvsvn"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not 0 <= value <= _U16_MAX):
                raise ValueError(f"{name} must be an integer 0..65535")
        # The same vocabulary and rules as the provider's policy: ValueError on an unknown or
        # Revoked status, an empty list, or an entry that is not an advisory ID.
        try:
            statuses = acceptance.accepted_tcb_statuses(self.accepted_tcb_statuses)
            denied = acceptance.denied_advisory_ids(self.denied_advisory_ids)
        except ValueError as e:
            raise ValueError(f"provider trust: {e}") from None
        object.__setattr__(self, "accepted_tcb_statuses", statuses)
        object.__setattr__(self, "denied_advisory_ids", denied)
        digest = self.expected_policy_digest
        if digest is not None and (not isinstance(digest, bytes) or len(digest) != POLICY_DIGEST_SIZE):
            raise ValueError(f"expected_policy_digest must be {POLICY_DIGEST_SIZE} bytes")

    @classmethod
    def from_hex(
        cls,
        *,
        mrenclave: str | None = None,
        mrsigner: str | None = None,
        isvprodid: int | None = None,
        min_isvsvn: int | None = None,
        accepted_tcb_statuses: Iterable[str] = DEFAULT_ACCEPTED_TCB_STATUSES,
        denied_advisory_ids: Iterable[str] = (),
        expected_policy_digest: str | None = None,
        allow_debug_provider: bool = False,
        allow_dev_mode_provider: bool = False,
    ) -> ProviderTrust:
        """Build from hex strings as they appear in ``/v1/info``, configuration and the CLI."""
        return cls(
            mrenclave=_hex(mrenclave, "MRENCLAVE", MEASUREMENT_SIZE),
            mrsigner=_hex(mrsigner, "MRSIGNER", MEASUREMENT_SIZE),
            isvprodid=isvprodid,
            min_isvsvn=min_isvsvn,
            accepted_tcb_statuses=acceptance.accepted_tcb_statuses(accepted_tcb_statuses),
            denied_advisory_ids=acceptance.denied_advisory_ids(denied_advisory_ids),
            expected_policy_digest=_hex(expected_policy_digest, "policy digest", POLICY_DIGEST_SIZE),
            allow_debug_provider=allow_debug_provider,
            allow_dev_mode_provider=allow_dev_mode_provider,
        )
