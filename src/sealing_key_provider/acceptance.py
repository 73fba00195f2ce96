"""Whether a DCAP-verified platform is good enough: one rule for both sides of a key release.

The provider judges a TD's platform (:class:`~.policy.Policy`) and the TD judges the provider's
(:class:`~.client.trust.ProviderTrust`) with the same three questions, asked here once so the two can
never drift apart: is the TCB status accepted, is the platform affected by a denied advisory, and is
the enclave or TD a debug one (whose memory the host can read)?

Advisory IDs are matched case-insensitively: both the configured deny list and the verifier's IDs are
compared in upper case, Intel's spelling (``INTEL-SA-00615``). A deny list is a safety control, and an
exact-case match would let ``intel-sa-00615`` in a configuration file deny nothing, silently: the
case-insensitive rule fails closed. IDs on a deny list are ``A-Z a-z 0-9 -``, 1..64 characters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Final

from .dcap.tcb import TCB_STATUS_BY_NAME, TcbStatus
from .errors import AdvisoryDenied, ProviderError, TcbStatusRejected

#: Every status a verifier can report; ``Revoked`` is known but may never be accepted.
KNOWN_TCB_STATUSES: Final[frozenset[TcbStatus]] = frozenset(TcbStatus)
#: Up to date, or fixable by configuration or software hardening without a microcode update.
DEFAULT_ACCEPTED_TCB_STATUSES: Final[frozenset[TcbStatus]] = frozenset(
    {
        TcbStatus.UP_TO_DATE,
        TcbStatus.SW_HARDENING_NEEDED,
        TcbStatus.CONFIGURATION_NEEDED,
        TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
    }
)

_ADVISORY_RE = re.compile(r"[A-Za-z0-9-]{1,64}")


def accepted_tcb_statuses(values: Iterable[str]) -> frozenset[TcbStatus]:
    """The statuses named by ``values`` (Intel's names); ValueError if one is unknown or ``Revoked``,
    or if none is given (a policy that accepts nothing is a mistake, not a lock)."""
    if isinstance(values, str):  # one name is not a list of names (it would be one per character)
        raise ValueError(f"TCB statuses must be a list of names, not the string {values!r}")
    names = list(values)
    unknown = sorted({str(v) for v in names} - TCB_STATUS_BY_NAME.keys())
    if unknown:
        known = ", ".join(sorted(TCB_STATUS_BY_NAME))
        raise ValueError(f"unknown TCB status {unknown[0]!r} (known: {known})")
    statuses = frozenset(TCB_STATUS_BY_NAME[str(v)] for v in names)
    if TcbStatus.REVOKED in statuses:
        raise ValueError("a Revoked TCB can never be accepted")
    if not statuses:
        raise ValueError("at least one TCB status must be accepted")
    return statuses


def advisory_id(value: str) -> str:
    """An advisory ID in the form it is compared in (upper case)."""
    return value.upper()


def denied_advisory_ids(values: Iterable[str]) -> frozenset[str]:
    """A deny list in compared form; ValueError if an entry is not an advisory ID."""
    if isinstance(values, str):
        raise ValueError(f"advisory IDs must be a list of IDs, not the string {values!r}")
    out = set()
    for value in values:
        if not isinstance(value, str) or not _ADVISORY_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not an advisory ID")
        out.add(advisory_id(value))
    return frozenset(out)


def check_acceptable(
    *,
    status: str,
    advisory_ids: Iterable[str],
    debug: bool,
    accepted: frozenset[TcbStatus],
    denied: frozenset[str],
    allow_debug: bool,
    subject: str,
    debug_refused: Callable[[], ProviderError],
) -> None:
    """Raise the first reason a verified platform is not good enough, else return.

    In order: the TCB status is in ``accepted`` (:class:`TcbStatusRejected`), none of
    ``advisory_ids`` is in ``denied`` (:class:`AdvisoryDenied`, naming every denied one), and
    ``debug`` is false unless ``allow_debug`` (``debug_refused()``: a debug TD and a debug provider
    enclave are refused with their own codes). ``subject`` names the platform in messages
    ("platform", "provider platform"). ``denied`` must be in compared form (:func:`denied_advisory_ids`).
    """
    if status not in accepted:
        raise TcbStatusRejected(
            f"{subject} TCB status {str(status)!r} is not accepted "
            f"(accepted: {', '.join(sorted(str(s) for s in accepted))})"
        )
    if denied:
        hits = sorted({advisory_id(a) for a in advisory_ids} & denied)
        if hits:
            raise AdvisoryDenied(f"{subject} is affected by denied advisory ID(s): {', '.join(hits)}")
    if debug and not allow_debug:
        raise debug_refused()


__all__ = [
    "DEFAULT_ACCEPTED_TCB_STATUSES",
    "KNOWN_TCB_STATUSES",
    "accepted_tcb_statuses",
    "advisory_id",
    "check_acceptable",
    "denied_advisory_ids",
]
