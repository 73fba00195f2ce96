"""The provider's configuration: one TOML file, validated into frozen dataclasses.

Design choices, and why:

- **Unknown keys are errors.** A typo such as ``alow_debug_td`` or ``[polcy]`` must not silently leave
  the default in force; for policy keys that would weaken or change what the provider releases.
- **Strict types.** ``true`` is not a number and ``"10"`` is not an integer; every error is a
  :class:`ConfigError` naming the dotted key (``server.io_timeout``), so the operator knows what to fix.
- **Overrides go through the same validation.** ``serve`` flags are applied as dotted keys onto the
  file's tables *before* validation (:func:`apply_overrides`), so a flag can never produce a
  configuration the file could not.
- **Loopback by default.** Both listeners bind 127.0.0.1: the original bound 0.0.0.0 and
  docker-compose published it on every interface.

The ``[policy]`` table is parsed by :meth:`Policy.from_mapping`; see :mod:`.policy`.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Self, get_type_hints

from .errors import ConfigError
from .keys import DEFAULT_MEASUREMENTS, DEFAULT_SCHEME, HKDF_SCHEME, LEGACY_SCHEME, normalize_measurements
from .policy import Policy

DEFAULT_LEGACY_LISTEN: Final = "127.0.0.1:3443"
DEFAULT_HTTP_LISTEN: Final = "127.0.0.1:8080"
DEFAULT_ATTESTATION_DIR: Final = "/dev/attestation"
#: Intel's Provisioning Certification Service, as the original used; point it at a local PCCS in production.
DEFAULT_PCCS_URL: Final = "https://api.trustedservices.intel.com"

PLATFORM_KINDS: Final = ("gramine", "sim")
SEALING_KEY_POLICIES: Final = ("mrenclave", "mrsigner")
LOG_FORMATS: Final = ("human", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
SCHEMES: Final = (HKDF_SCHEME, LEGACY_SCHEME)

_HEX32_RE = re.compile(r"[0-9a-f]{64}")


def parse_listen(value: str, where: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port). Hosts are IP literals or DNS names; port 0 asks
    the system for a free port (the server logs and prints the one it bound)."""
    host, sep, port_s = value.rpartition(":")
    # ASCII digits, at most 5: str.isdigit() also accepts "²", and int() refuses over 4300 digits.
    if not sep or not host or not (port_s.isascii() and port_s.isdigit()) or len(port_s) > 5:
        raise ConfigError(f"{where} must be host:port, got {value!r}")
    port = int(port_s)
    if not 0 <= port < 65536:
        raise ConfigError(f"{where}: port {port} is out of range 0..65535")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ConfigError(f"{where}: unbalanced brackets in {value!r}")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{where}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ConfigError(f"{where}: write IPv6 addresses in brackets, e.g. [::1]:8080")
    elif not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", host):
        raise ConfigError(f"{where}: {host!r} is not a host name or address")
    return host, port


def _positive(value: float, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):  # nan passes "<= 0"; inf never times out
        raise ConfigError(f"{where} must be a finite number, got {value}")
    if value <= 0:
        raise ConfigError(f"{where} must be positive, got {value}")


def _choice(value: str, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        raise ConfigError(f"{where} must be one of {', '.join(map(repr, choices))}, got {value!r}")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: listeners and the limits that keep one client from starving the rest.

    An empty ``legacy_listen`` or ``http_listen`` disables that listener.
    """

    legacy_listen: str = DEFAULT_LEGACY_LISTEN
    http_listen: str = DEFAULT_HTTP_LISTEN
    #: Open connections across both listeners; more are refused at accept.
    max_connections: int = 64
    #: Seconds for reading a request or writing a response.
    io_timeout: float = 10.0
    #: Largest request body / legacy frame (a quote is ~5 KiB).
    max_request_bytes: int = 1024 * 1024
    #: Token bucket per client address: sustained requests per second and burst size.
    rate_limit_per_second: float = 10.0
    rate_limit_burst: int = 20
    #: Requests processed at once (verification + quote generation); the rest wait or get OVERLOADED.
    max_concurrency: int = 8

    def __post_init__(self) -> None:
        if not self.legacy_listen and not self.http_listen:
            raise ConfigError("server: at least one of legacy_listen and http_listen must be set")
        for key in ("legacy_listen", "http_listen"):
            value = getattr(self, key)
            if value:
                parse_listen(value, f"server.{key}")
        for key in (
            "max_connections",
            "io_timeout",
            "max_request_bytes",
            "rate_limit_per_second",
            "rate_limit_burst",
            "max_concurrency",
        ):
            _positive(getattr(self, key), f"server.{key}")
        if self.max_request_bytes > 64 * 1024 * 1024:
            raise ConfigError("server.max_request_bytes must be at most 64 MiB")


@dataclass(frozen=True, slots=True)
class PlatformConfig:
    """``[platform]``: where the provider's SGX quote and sealing key come from.

    ``gramine`` reads Gramine's ``/dev/attestation``; ``sim`` uses the software platform of
    :mod:`sealing_key_provider.sim` with its persistent ``sim_state_dir`` and the simulated enclave's
    identity (``sim_mrenclave``/``sim_mrsigner``, 32-byte hex; unset = the simulator's defaults).
    """

    kind: str = "gramine"
    attestation_dir: str = DEFAULT_ATTESTATION_DIR
    #: Which SGX seal key: bound to MRENCLAVE (default, the original's) or to MRSIGNER + ISVPRODID.
    sealing_key_policy: str = "mrenclave"
    sim_state_dir: str | None = None
    sim_mrenclave: str | None = None
    sim_mrsigner: str | None = None

    def __post_init__(self) -> None:
        _choice(self.kind, PLATFORM_KINDS, "platform.kind")
        _choice(self.sealing_key_policy, SEALING_KEY_POLICIES, "platform.sealing_key_policy")
        if not self.attestation_dir:
            raise ConfigError("platform.attestation_dir must not be empty")
        if self.kind == "sim" and not self.sim_state_dir:
            raise ConfigError("platform.sim_state_dir is required when platform.kind = 'sim'")
        for key in ("sim_mrenclave", "sim_mrsigner"):
            value = getattr(self, key)
            if value is not None and not _HEX32_RE.fullmatch(value):
                raise ConfigError(f"platform.{key} must be 32 bytes in lower-case hex (64 digits)")


@dataclass(frozen=True, slots=True)
class CollateralConfig:
    """``[collateral]``: where DCAP collateral comes from and which root it must chain to.

    Exactly one of ``pccs_url`` (PCCS or Intel PCS base URL) and ``file`` (offline bundle) is used;
    setting ``file`` switches the default URL off. ``trust_anchor`` unset means the pinned Intel SGX
    Root CA; naming a PEM file (e.g. the simulator's root) is a deliberate act.
    """

    pccs_url: str | None = DEFAULT_PCCS_URL
    file: str | None = None
    trust_anchor: str | None = None
    #: Seconds for all documents of one collateral fetch, retries included.
    timeout: float = 10.0
    retries: int = 2
    #: CA bundle for the PCCS's TLS certificate (a local PCCS is often self-signed).
    pccs_ca_bundle: str | None = None
    cache_max_entries: int = 64
    #: Seconds a cached collateral set is reused at most (it is also dropped when it expires).
    cache_max_age: float = 24 * 3600.0

    def __post_init__(self) -> None:
        if self.pccs_url and self.file:
            raise ConfigError("collateral: set either pccs_url or file, not both")
        if not self.pccs_url and not self.file:
            raise ConfigError("collateral: one of pccs_url and file is required")
        if self.pccs_url and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", self.pccs_url):
            raise ConfigError(f"collateral.pccs_url must be an http(s) URL, got {self.pccs_url!r}")
        _positive(self.timeout, "collateral.timeout")
        _positive(self.cache_max_entries, "collateral.cache_max_entries")
        _positive(self.cache_max_age, "collateral.cache_max_age")
        if self.retries < 0:
            raise ConfigError("collateral.retries must not be negative")


@dataclass(frozen=True, slots=True)
class KeysConfig:
    """``[keys]``: the default scheme of the v1 API and what ``hkdf-sha256-v1`` binds.

    Changing ``measurements`` changes every ``hkdf-sha256-v1`` key; treat it as a one-time decision.
    """

    default_scheme: str = DEFAULT_SCHEME
    measurements: tuple[str, ...] = DEFAULT_MEASUREMENTS

    def __post_init__(self) -> None:
        _choice(self.default_scheme, SCHEMES, "keys.default_scheme")
        try:
            object.__setattr__(self, "measurements", normalize_measurements(self.measurements))
        except ValueError as exc:
            raise ConfigError(f"keys.measurements: {exc}") from None


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """``[logging]``: ``human`` lines for a terminal or ``json`` lines for a collector."""

    format: str = "human"
    level: str = "info"

    def __post_init__(self) -> None:
        _choice(self.format, LOG_FORMATS, "logging.format")
        _choice(self.level, LOG_LEVELS, "logging.level")


_SECTIONS: Final[dict[str, type]] = {
    "server": ServerConfig,
    "platform": PlatformConfig,
    "collateral": CollateralConfig,
    "keys": KeysConfig,
    "logging": LoggingConfig,
}
_TOP_LEVEL: Final = ("dev_mode",)


def _convert(value: object, hint: Any, where: str) -> object:
    """Check a TOML value against a field's type hint (no silent coercion except int → float)."""
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            raise ConfigError(f"{where} is too large") from None
        if not math.isfinite(number):  # TOML has nan and inf; no timeout or rate means either
            raise ConfigError(f"{where} must be a finite number, got {value}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string")
        return value
    if hint == (str | None):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{where} must be a string")
        return value or None
    if hint == tuple[str, ...]:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings")
        return tuple(value)
    raise TypeError(f"unsupported configuration type {hint!r}")  # a bug in this module, not in the file


def _section(cls: type, table: object, name: str) -> object:
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{name}] must be a table")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise ConfigError(f"unknown key {name}.{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {key: _convert(value, hints[key], f"{name}.{key}") for key, value in table.items()}
    return cls(**kwargs)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the provider reads at start-up. Build with :meth:`load` or :meth:`from_mapping`."""

    server: ServerConfig = field(default_factory=ServerConfig)
    platform: PlatformConfig = field(default_factory=PlatformConfig)
    collateral: CollateralConfig = field(default_factory=CollateralConfig)
    policy: Policy = field(default_factory=Policy)
    keys: KeysConfig = field(default_factory=KeysConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    #: Skip TDX quote verification and the same-platform check (warned loudly). Under Gramine it is
    #: fixed in the measured manifest, so a dev build has another MRENCLAVE and other keys.
    dev_mode: bool = False

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> Self:
        unknown = sorted(set(data) - set(_SECTIONS) - {"policy", *_TOP_LEVEL})
        if unknown:
            raise ConfigError(
                f"unknown key {unknown[0]} (sections: {', '.join(sorted([*_SECTIONS, 'policy']))}; "
                f"top-level keys: {', '.join(_TOP_LEVEL)})"
            )
        kwargs: dict[str, Any] = {}
        for name, section_cls in _SECTIONS.items():
            raw = data.get(name, {})
            table: object = raw
            if isinstance(raw, Mapping):
                table = dict(raw)
                if name == "collateral" and raw.get("file") and "pccs_url" not in raw:
                    table = {**raw, "pccs_url": None}  # naming a bundle file turns the default PCCS URL off
            kwargs[name] = _section(section_cls, table, name)
        policy = data.get("policy", {})
        if not isinstance(policy, Mapping):
            raise ConfigError("[policy] must be a table")
        kwargs["policy"] = Policy.from_mapping(policy)
        kwargs["dev_mode"] = _convert(data.get("dev_mode", False), bool, "dev_mode")
        if kwargs["dev_mode"] and kwargs["platform"].sealing_key_policy == "mrsigner":
            # A development build signed with the production key would get the production sealing key
            # (same MRSIGNER, ISVPRODID, ISVSVN) and release it for quotes it never verified.
            raise ConfigError(
                'dev_mode = true cannot be combined with platform.sealing_key_policy = "mrsigner": a '
                "development build would share the production sealing key and hand out production keys "
                'for unverified quotes; use sealing_key_policy = "mrenclave" for development'
            )
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path, overrides: Mapping[str, object] | None = None) -> Self:
        """Read a TOML file, apply dotted-key ``overrides`` (CLI flags), validate."""
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"configuration file {str(path)!r} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {str(path)!r}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {str(path)!r} is not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"configuration file {str(path)!r} is not UTF-8 text") from None
        except RecursionError:
            raise ConfigError(f"configuration file {str(path)!r} nests arrays or tables too deeply") from None
        except ValueError as exc:  # e.g. an integer of more digits than int() converts
            raise ConfigError(f"configuration file {str(path)!r} holds an unreadable value: {exc}") from None
        return cls.from_mapping(apply_overrides(data, overrides or {}))

    def with_overrides(self, overrides: Mapping[str, object]) -> Config:
        """A new configuration with dotted-key overrides applied and everything validated again."""
        return Config.from_mapping(apply_overrides(self.to_mapping(), overrides))

    def to_mapping(self) -> dict[str, object]:
        """The TOML tables of this configuration (``None`` values omitted: TOML has no null)."""
        out: dict[str, object] = {}
        for name in _SECTIONS:
            section = getattr(self, name)
            table: dict[str, object] = {}
            for f in fields(section):
                value = getattr(section, f.name)
                if value is not None:
                    table[f.name] = list(value) if isinstance(value, tuple) else value
            out[name] = table
        out["policy"] = self.policy.to_mapping()
        out["dev_mode"] = self.dev_mode
        return out


def apply_overrides(data: Mapping[str, object], overrides: Mapping[str, object]) -> dict[str, object]:
    """Apply ``{"server.http_listen": "0.0.0.0:8080", ...}`` onto a (nested) mapping, copying it.

    Only known sections may be named; keys inside a section are checked by the normal validation, so
    a misspelt override fails just like a misspelt file key. ``policy.key_names.<mrtd>`` reaches into
    the key-name table. A value of ``None`` removes the key (back to its default).
    """
    out: dict[str, object] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if not all(parts):
            raise ConfigError(f"override {dotted!r} is not a dotted key")
        if len(parts) == 1:
            if parts[0] not in _TOP_LEVEL:
                raise ConfigError(f"unknown override {dotted!r}")
        elif parts[0] not in (*_SECTIONS, "policy"):
            raise ConfigError(f"unknown override {dotted!r}: no section [{parts[0]}]")
        node: dict[str, object] = out
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, Mapping):
                raise ConfigError(f"override {dotted!r}: {part} is not a table")
            child = dict(child)
            node[part] = child
            node = child
        if value is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return out


def parse_override(text: str) -> tuple[str, object]:
    """``key=value`` from a command line; the value is read as a TOML value, else as a plain string.

    ``server.io_timeout=5`` gives 5, ``policy.allow_debug_td=true`` gives True,
    ``keys.measurements=["mrtd","rtmr0"]`` a list, and ``server.http_listen=0.0.0.0:8080`` a string.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} must be key=value")
    try:
        value: object = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    except RecursionError:
        raise ConfigError(f"override {key}: the value nests too deeply") from None
    except ValueError as exc:  # TOML that Python cannot hold, e.g. an integer of over 4300 digits
        raise ConfigError(f"override {key}: unreadable value ({exc})") from None
    return key, value
