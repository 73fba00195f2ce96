"""Which verified TD quotes get which keys.

DCAP verification says *what* a TD is (its measurements, its platform's TCB status); the policy says
whether that is good enough. It is built once from configuration, is immutable, and has a
:meth:`Policy.digest` that ``/v1/info`` publishes and the v1 report data binds, so a client can pin the
exact policy its key was released under.

Checks, in order (the first failure is reported, with a message naming what failed and never any key
material): TCB status accepted, no denied advisory, not a debug TD (unless allowed), measurement
allow-lists, key name allowed for this TD's MRTD.

Key-name patterns are ``/``-separated like key names. In a segment, ``*`` matches any run of
characters and ``?`` one character, never crossing ``/``; a whole segment ``**`` matches any number of
segments, including none (``app/**`` matches ``app``, ``app/db`` and ``app/db/wal``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from .dcap.abi import Quote, TdReport
from .errors import AdvisoryDenied, CollateralOutdated, ConfigError, PolicyDenied, TcbStatusRejected, TdDebug

#: TCB statuses a verifier reports (Intel's names). ``Revoked`` is known but may never be accepted.
KNOWN_TCB_STATUSES: Final[frozenset[str]] = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    }
)
DEFAULT_ACCEPTED_TCB_STATUSES: Final[frozenset[str]] = frozenset(
    {"UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"}
)
DEFAULT_FRESHNESS_WINDOW_SECONDS: Final = 300

#: Measurements that can be restricted to an allow-list, in report order; all are 48 bytes.
ALLOWLIST_FIELDS: Final[tuple[str, ...]] = (
    "mrtd",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "mrconfigid",
    "mrowner",
)
_MEASUREMENT_HEX_LEN: Final = 96

ANY_TD: Final = "*"
POLICY_DIGEST_LABEL: Final = "gramine-sealing-key-provider/policy-v1"

_PATTERN_SEGMENT_RE = re.compile(r"[A-Za-z0-9._*?-]+")
_ADVISORY_RE = re.compile(r"[A-Za-z0-9-]{1,64}")
_HEX_RE = re.compile(r"[0-9a-f]+")


class VerifiedTdQuote(Protocol):
    """What the policy needs from the DCAP verifier's result (``dcap`` ``VerifiedQuote``)."""

    @property
    def quote(self) -> Quote: ...

    @property
    def status(self) -> str: ...

    @property
    def advisory_ids(self) -> tuple[str, ...]: ...


def _segments_match(pattern: list[str], name: list[str]) -> bool:
    """Segment-wise glob match in O(len(pattern) * len(name)).

    ``reachable[j]`` says the pattern segments seen so far match ``name[:j]``. A backtracking matcher
    would be exponential in the number of ``**`` segments, and the key name comes from the client.
    """
    reachable = [True] + [False] * len(name)
    for head in pattern:
        if head == "**":
            nxt: list[bool] = []
            seen = False
            for r in reachable:
                seen = seen or r
                nxt.append(seen)
        else:
            nxt = [False] + [reachable[j] and fnmatch.fnmatchcase(name[j], head) for j in range(len(name))]
        reachable = nxt
    return reachable[-1]


def key_name_matches(pattern: str, key_name: str) -> bool:
    """Glob-like match of a key name against a policy pattern (see the module docstring)."""
    return _segments_match(pattern.split("/"), key_name.split("/"))


def validate_key_pattern(pattern: str) -> str:
    """Patterns use key-name characters plus ``*`` and ``?``; ``[`` classes are not allowed."""
    if not isinstance(pattern, str) or not 1 <= len(pattern.encode("utf-8")) <= 255:
        raise ValueError("a key name pattern must be a string of 1..255 bytes")
    for segment in pattern.split("/"):
        if not segment or segment in (".", ".."):
            raise ValueError(f"key name pattern {pattern!r} has an empty, '.' or '..' segment")
        if not _PATTERN_SEGMENT_RE.fullmatch(segment):
            raise ValueError(f"key name pattern {pattern!r}: only A-Z a-z 0-9 . _ - * ? are allowed")
        if "**" in segment and segment != "**":
            raise ValueError(f"key name pattern {pattern!r}: '**' must be a whole segment")
    return pattern


@dataclass(frozen=True, slots=True)
class Policy:
    """The provider's release policy. Build it with :meth:`from_mapping` (the ``[policy]`` table).

    ``allowed_<measurement>``: lower-case hex values; empty means any value.
    ``key_names``: sorted ``(MRTD hex or "*", patterns)`` pairs; empty means any key name for any TD.
    A TD gets the patterns of its own MRTD plus those of ``"*"``; with a non-empty mapping a TD that
    matches no entry gets no key.
    ``allow_debug_td``: a debug TD (TD_ATTRIBUTES.DEBUG, memory readable by the host) may get a key.
    It never gets the production key of its image: ``hkdf-sha256-v1`` derives it under a label of its
    own, and ``legacy-sha256``, which cannot, refuses debug TDs whatever this says (:mod:`.keys`).
    ``min_tcb_evaluation_data_number``: collateral (TCB info) older than this TCB recovery is refused,
    whatever the clock says (0 = any); see :meth:`check_collateral`.
    """

    accepted_tcb_statuses: frozenset[str] = DEFAULT_ACCEPTED_TCB_STATUSES
    denied_advisory_ids: frozenset[str] = frozenset()
    allow_debug_td: bool = False
    allowed_mrtd: frozenset[str] = frozenset()
    allowed_rtmr0: frozenset[str] = frozenset()
    allowed_rtmr1: frozenset[str] = frozenset()
    allowed_rtmr2: frozenset[str] = frozenset()
    allowed_rtmr3: frozenset[str] = frozenset()
    allowed_mrconfigid: frozenset[str] = frozenset()
    allowed_mrowner: frozenset[str] = frozenset()
    key_names: tuple[tuple[str, tuple[str, ...]], ...] = ()
    freshness_required: bool = False
    freshness_window_seconds: int = DEFAULT_FRESHNESS_WINDOW_SECONDS
    min_tcb_evaluation_data_number: int = 0

    def __post_init__(self) -> None:
        # Direct construction is validated like configuration, so no invalid policy can exist.
        _validate_statuses(self.accepted_tcb_statuses, "policy.accepted_tcb_statuses")
        for name in ALLOWLIST_FIELDS:
            for value in self.allowed(name):
                _check_measurement_hex(value, f"policy.allowed_{name}")
        for mrtd, patterns in self.key_names:
            if mrtd != ANY_TD:
                _check_measurement_hex(mrtd, "policy.key_names")
            for p in patterns:
                try:
                    validate_key_pattern(p)
                except ValueError as exc:
                    raise ConfigError(f"policy.key_names.{mrtd}: {exc}") from None
        if self.freshness_window_seconds <= 0:
            raise ConfigError("policy.freshness_window_seconds must be positive")
        if not 0 <= self.min_tcb_evaluation_data_number <= 0xFFFFFFFF:
            raise ConfigError("policy.min_tcb_evaluation_data_number must be in 0..4294967295")

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, object], prefix: str = "policy") -> Policy:
        """Build from a ``[policy]`` TOML table; unknown keys and bad values raise :class:`ConfigError`."""
        known = {
            "accepted_tcb_statuses",
            "denied_advisory_ids",
            "allow_debug_td",
            "key_names",
            "freshness_required",
            "freshness_window_seconds",
            "min_tcb_evaluation_data_number",
            *(f"allowed_{n}" for n in ALLOWLIST_FIELDS),
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown key {prefix}.{unknown[0]} (known: {', '.join(sorted(known))})")

        def strings(key: str) -> list[str] | None:
            if key not in data:
                return None
            value = data[key]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{prefix}.{key} must be a list of strings")
            return [str(v) for v in value]

        def boolean(key: str, default: bool) -> bool:
            value = data.get(key, default)
            if not isinstance(value, bool):
                raise ConfigError(f"{prefix}.{key} must be true or false")
            return value

        kwargs: dict[str, object] = {}
        statuses = strings("accepted_tcb_statuses")
        if statuses is not None:
            _validate_statuses(statuses, f"{prefix}.accepted_tcb_statuses")
            kwargs["accepted_tcb_statuses"] = frozenset(statuses)
        advisories = strings("denied_advisory_ids")
        if advisories is not None:
            for a in advisories:
                if not _ADVISORY_RE.fullmatch(a):
                    raise ConfigError(f"{prefix}.denied_advisory_ids: {a!r} is not an advisory ID")
            kwargs["denied_advisory_ids"] = frozenset(a.upper() for a in advisories)
        kwargs["allow_debug_td"] = boolean("allow_debug_td", False)
        kwargs["freshness_required"] = boolean("freshness_required", False)
        window = data.get("freshness_window_seconds", DEFAULT_FRESHNESS_WINDOW_SECONDS)
        if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
            raise ConfigError(f"{prefix}.freshness_window_seconds must be a positive integer")
        kwargs["freshness_window_seconds"] = window
        number = data.get("min_tcb_evaluation_data_number", 0)
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= 0xFFFFFFFF:
            raise ConfigError(f"{prefix}.min_tcb_evaluation_data_number must be an integer in 0..4294967295")
        kwargs["min_tcb_evaluation_data_number"] = number
        for name in ALLOWLIST_FIELDS:
            values = strings(f"allowed_{name}")
            if values is not None:
                kwargs[f"allowed_{name}"] = frozenset(
                    _check_measurement_hex(v.lower(), f"{prefix}.allowed_{name}") for v in values
                )
        if "key_names" in data:
            table = data["key_names"]
            if not isinstance(table, Mapping):
                raise ConfigError(f'{prefix}.key_names must be a table of MRTD (or "*") = [patterns]')
            pairs: list[tuple[str, tuple[str, ...]]] = []
            for mrtd, patterns in table.items():
                where = f"{prefix}.key_names.{mrtd}"
                key = str(mrtd).lower()
                if key != ANY_TD:
                    _check_measurement_hex(key, where)
                if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
                    raise ConfigError(f"{where} must be a list of key name patterns")
                for p in patterns:
                    try:
                        validate_key_pattern(p)
                    except ValueError as exc:
                        raise ConfigError(f"{where}: {exc}") from None
                pairs.append((key, tuple(sorted(set(patterns)))))
            keys = [k for k, _ in pairs]
            if len(set(keys)) != len(keys):
                raise ConfigError(f"{prefix}.key_names lists an MRTD twice (hex is case-insensitive)")
            kwargs["key_names"] = tuple(sorted(pairs))
        return cls(**kwargs)  # type: ignore[arg-type]

    def to_mapping(self) -> dict[str, object]:
        """The ``[policy]`` table that :meth:`from_mapping` turns back into this policy."""
        out: dict[str, object] = {
            "accepted_tcb_statuses": sorted(self.accepted_tcb_statuses),
            "denied_advisory_ids": sorted(self.denied_advisory_ids),
            "allow_debug_td": self.allow_debug_td,
            "freshness_required": self.freshness_required,
            "freshness_window_seconds": self.freshness_window_seconds,
        }
        for name in ALLOWLIST_FIELDS:
            out[f"allowed_{name}"] = sorted(self.allowed(name))
        out["key_names"] = {mrtd: list(patterns) for mrtd, patterns in self.key_names}
        if self.min_tcb_evaluation_data_number:  # only when set: the digest of older policies stays
            out["min_tcb_evaluation_data_number"] = self.min_tcb_evaluation_data_number
        return out

    # --- queries -----------------------------------------------------------------------------

    def allowed(self, measurement: str) -> frozenset[str]:
        """The allow-list of one measurement (empty = any)."""
        if measurement not in ALLOWLIST_FIELDS:
            raise KeyError(measurement)
        value: frozenset[str] = getattr(self, f"allowed_{measurement}")
        return value

    def key_patterns_for(self, mrtd_hex: str) -> tuple[str, ...] | None:
        """Patterns that apply to a TD with this MRTD; ``None`` means any key name is allowed."""
        if not self.key_names:
            return None
        table = dict(self.key_names)
        return table.get(mrtd_hex.lower(), ()) + table.get(ANY_TD, ())

    def canonical(self) -> bytes:
        """Canonical bytes of the policy: label line + JSON with sorted keys and sorted sets."""
        body = json.dumps(self.to_mapping(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return f"{POLICY_DIGEST_LABEL}\n{body}".encode("ascii")

    def digest(self) -> bytes:
        """SHA-256 of :meth:`canonical`: equal policies have equal digests whatever their source order."""
        return hashlib.sha256(self.canonical()).digest()

    # --- the check ---------------------------------------------------------------------------

    def check_collateral(self, tcb_evaluation_data_number: int) -> None:
        """Refuse collateral from before the required TCB recovery.

        The host sets the clock, so collateral that has expired can look current to a clock set back;
        the TCB evaluation data number in Intel's signed TCB info cannot be set back. Raising the
        minimum after a TCB recovery refuses every older TCB info for good.
        """
        if tcb_evaluation_data_number < self.min_tcb_evaluation_data_number:
            raise CollateralOutdated(
                f"the TCB info has TCB evaluation data number {tcb_evaluation_data_number}; the policy "
                f"requires at least {self.min_tcb_evaluation_data_number} (collateral from before that "
                "TCB recovery)"
            )

    def check(self, verified: VerifiedTdQuote, key_name: str) -> None:
        """Raise the first policy failure for this verified TD quote and key name, else return."""
        status = str(verified.status)  # the verifier's StrEnum or a plain string
        if status not in self.accepted_tcb_statuses:
            raise TcbStatusRejected(
                f"TCB status {status!r} is not accepted "
                f"(accepted: {', '.join(sorted(self.accepted_tcb_statuses))})"
            )
        denied = sorted({a.upper() for a in verified.advisory_ids} & self.denied_advisory_ids)
        if denied:
            raise AdvisoryDenied(f"platform is affected by denied advisory ID(s): {', '.join(denied)}")
        td: TdReport = verified.quote.td_report
        if td.debug and not self.allow_debug_td:
            raise TdDebug("the TD runs in debug mode (TD_ATTRIBUTES.DEBUG set); its memory is not protected")
        for name in ALLOWLIST_FIELDS:
            allowed = self.allowed(name)
            if allowed:
                value = getattr(td, name).hex()
                if value not in allowed:
                    raise PolicyDenied(f"{name.upper()} {value} is not in the policy's allow-list")
        patterns = self.key_patterns_for(td.mrtd.hex())
        if patterns is not None and not any(key_name_matches(p, key_name) for p in patterns):
            raise PolicyDenied(f"key name {key_name!r} is not allowed for a TD with MRTD {td.mrtd.hex()}")


def _validate_statuses(statuses: Iterable[str], where: str) -> None:
    statuses = list(statuses)
    unknown = sorted(set(statuses) - KNOWN_TCB_STATUSES)
    if unknown:
        raise ConfigError(
            f"{where}: unknown TCB status {unknown[0]!r} (known: {', '.join(sorted(KNOWN_TCB_STATUSES))})"
        )
    if "Revoked" in statuses:
        raise ConfigError(f"{where}: a Revoked TCB can never be accepted")
    if not statuses:
        raise ConfigError(f"{where} must accept at least one TCB status")


def _check_measurement_hex(value: str, where: str) -> str:
    if len(value) != _MEASUREMENT_HEX_LEN or not _HEX_RE.fullmatch(value):
        raise ConfigError(f"{where}: {value!r} is not a 48-byte measurement in lower-case hex (96 digits)")
    return value
