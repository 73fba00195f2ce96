"""TOML configuration: defaults, validation naming the key, unknown keys, overrides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sealing_key_provider.config import (
    DEFAULT_PCCS_URL,
    CollateralConfig,
    Config,
    KeysConfig,
    PlatformConfig,
    ServerConfig,
    apply_overrides,
    parse_listen,
    parse_override,
)
from sealing_key_provider.errors import ConfigError
from sealing_key_provider.policy import Policy

FULL = (
    """
dev_mode = false

[server]
legacy_listen = "127.0.0.1:3443"
http_listen = "[::1]:8080"
max_connections = 100
io_timeout = 5
max_request_bytes = 65536
rate_limit_per_second = 2.5
rate_limit_burst = 5
max_concurrency = 4

[platform]
kind = "sim"
attestation_dir = "/dev/attestation"
sealing_key_policy = "mrsigner"
sim_state_dir = "/var/lib/skp-sim"
sim_mrenclave = "@ENCLAVE@"
sim_mrsigner = "@SIGNER@"

[collateral]
pccs_url = "https://pccs.local:8081/sgx/certification/v4/"
trust_anchor = "/etc/skp/root.pem"
timeout = 3.5
retries = 1
pccs_ca_bundle = "/etc/skp/pccs-ca.pem"
cache_max_entries = 8
cache_max_age = 600

[policy]
accepted_tcb_statuses = ["UpToDate"]
denied_advisory_ids = ["INTEL-SA-00837"]
allow_debug_td = false
allowed_mrtd = ["@MRTD@"]
freshness_required = true
freshness_window_seconds = 120

[policy.key_names]
"*" = ["shared/*"]
"@MRTD@" = ["app/**"]

[keys]
default_scheme = "hkdf-sha256-v1"
measurements = ["rtmr0", "mrtd", "mrconfigid"]

[logging]
format = "json"
level = "debug"
""".replace("@ENCLAVE@", "11" * 32)
    .replace("@SIGNER@", "22" * 32)
    .replace("@MRTD@", "ab" * 48)
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "provider.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    c = Config()
    assert c.server == ServerConfig(
        legacy_listen="127.0.0.1:3443",
        http_listen="127.0.0.1:8080",
        max_connections=256,
        max_connections_per_address=64,
        relay_addresses=(),
        relay_share=8,
        io_timeout=10.0,
        request_deadline=15.0,
        max_request_bytes=1024 * 1024,
        rate_limit_per_second=10.0,
        rate_limit_burst=20,
        max_concurrency=8,
    )
    assert c.platform == PlatformConfig(
        kind="gramine", attestation_dir="/dev/attestation", sealing_key_policy="mrenclave"
    )
    assert c.collateral.pccs_url == DEFAULT_PCCS_URL == "https://api.trustedservices.intel.com"
    assert c.collateral.file is None and c.collateral.trust_anchor is None
    assert c.keys == KeysConfig("hkdf-sha256-v1", ("mrtd", "rtmr0", "rtmr1", "rtmr2"))
    assert (c.logging.format, c.logging.level) == ("human", "info")
    assert c.policy == Policy()
    assert c.dev_mode is False


def test_empty_file_is_defaults(tmp_path: Path) -> None:
    assert Config.load(write(tmp_path, "")) == Config()


def test_full_file(tmp_path: Path) -> None:
    c = Config.load(write(tmp_path, FULL))
    assert c.server.http_listen == "[::1]:8080"
    assert c.server.io_timeout == 5.0 and isinstance(c.server.io_timeout, float)
    assert c.server.rate_limit_per_second == 2.5
    assert c.platform.kind == "sim" and c.platform.sealing_key_policy == "mrsigner"
    assert c.platform.sim_mrenclave == "11" * 32
    assert c.collateral.pccs_url == "https://pccs.local:8081/sgx/certification/v4/"
    assert c.collateral.cache_max_age == 600.0
    assert c.policy.accepted_tcb_statuses == {"UpToDate"}
    assert c.policy.allowed_mrtd == {"ab" * 48}
    assert c.policy.key_names == (("*", ("shared/*",)), ("ab" * 48, ("app/**",)))
    assert c.policy.freshness_required and c.policy.freshness_window_seconds == 120
    assert c.keys.measurements == ("mrtd", "rtmr0", "mrconfigid")  # canonical order
    assert (c.logging.format, c.logging.level) == ("json", "debug")


def test_roundtrip_through_mapping(tmp_path: Path) -> None:
    c = Config.load(write(tmp_path, FULL))
    assert Config.from_mapping(c.to_mapping()) == c
    assert Config.from_mapping(Config().to_mapping()) == Config()


def test_bundle_file_turns_default_url_off(tmp_path: Path) -> None:
    c = Config.load(write(tmp_path, '[collateral]\nfile = "/etc/skp/collateral.json"\n'))
    assert c.collateral.file == "/etc/skp/collateral.json"
    assert c.collateral.pccs_url is None
    assert Config.from_mapping(c.to_mapping()) == c


UNKNOWN = [
    ("dev_mod = true", "dev_mod"),
    ("[sever]\nio_timeout = 1", "sever"),
    ("[server]\nio_timout = 1", "server.io_timout"),
    ("[platform]\nroot = '/x'", "platform.root"),
    ("[collateral]\npccs = 'https://x'", "collateral.pccs"),
    ("[policy]\nalow_debug_td = true", "policy.alow_debug_td"),
    ("[keys]\nscheme = 'x'", "keys.scheme"),
    ("[logging]\nlvl = 'info'", "logging.lvl"),
]


@pytest.mark.parametrize(("text", "key"), UNKNOWN)
def test_unknown_keys_are_errors(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match="unknown key " + re.escape(key)) as info:
        Config.load(write(tmp_path, text))
    assert info.value.code == "CONFIG_INVALID"


INVALID = [
    ("dev_mode = 1", "dev_mode"),
    ("dev_mode = 'true'", "dev_mode"),
    ("server = 1", "server"),
    ("[server]\nlegacy_listen = '127.0.0.1'", "server.legacy_listen"),
    ("[server]\nlegacy_listen = '127.0.0.1:65536'", "server.legacy_listen"),
    ("[server]\nlegacy_listen = '127.0.0.1:70000'", "server.legacy_listen"),
    ("[server]\nhttp_listen = '::1:8080'", "server.http_listen"),
    ("[server]\nhttp_listen = '[nope]:8080'", "server.http_listen"),
    ("[server]\nhttp_listen = 'a b:80'", "server.http_listen"),
    ("[server]\nlegacy_listen = ''\nhttp_listen = ''", "at least one"),
    ("[server]\nmax_connections = 0", "server.max_connections"),
    ("[server]\nmax_connections = 1.5", "server.max_connections"),
    ("[server]\nmax_connections = true", "server.max_connections"),
    ("[server]\nio_timeout = -1", "server.io_timeout"),
    ("[server]\nio_timeout = '10'", "server.io_timeout"),
    ("[server]\nmax_request_bytes = 0", "server.max_request_bytes"),
    ("[server]\nmax_request_bytes = 1073741824", "server.max_request_bytes"),
    ("[server]\nrate_limit_per_second = 0", "server.rate_limit_per_second"),
    ("[server]\nrate_limit_burst = 0", "server.rate_limit_burst"),
    ("[server]\nmax_concurrency = 0", "server.max_concurrency"),
    ("[server]\nmax_connections_per_address = 0", "server.max_connections_per_address"),
    ("[server]\nrequest_deadline = 0", "server.request_deadline"),
    ("[server]\nrelay_share = 0", "server.relay_share"),
    ("[server]\nrelay_addresses = ['10.0.0.300']", "server.relay_addresses"),
    ("[server]\nrelay_addresses = '10.0.0.1'", "server.relay_addresses"),
    ("[platform]\nkind = 'sgx'", "platform.kind"),
    ("[platform]\nkind = 'sim'", "platform.sim_state_dir"),
    ("[platform]\nsealing_key_policy = 'mrsigner2'", "platform.sealing_key_policy"),
    ("[platform]\nattestation_dir = ''", "platform.attestation_dir"),
    ("[platform]\nsim_mrenclave = 'AB'", "platform.sim_mrenclave"),
    ("[platform]\nsim_mrsigner = 12", "platform.sim_mrsigner"),
    ("[collateral]\nfile = 'x'\npccs_url = 'https://x'", "not both"),
    ("[collateral]\npccs_url = ''", "collateral"),
    ("[collateral]\npccs_url = 'ftp://x'", "collateral.pccs_url"),
    ("[collateral]\ntimeout = 0", "collateral.timeout"),
    ("[collateral]\nretries = -1", "collateral.retries"),
    ("[collateral]\ncache_max_entries = 0", "collateral.cache_max_entries"),
    ("[collateral]\nfailure_backoff = 0", "collateral.failure_backoff"),
    ("[keys]\ndefault_scheme = 'sha1'", "keys.default_scheme"),
    ("[keys]\nmeasurements = []", "keys.measurements"),
    ("[keys]\nmeasurements = ['mrtd', 'mrtd']", "keys.measurements"),
    ("[keys]\nmeasurements = ['report_data']", "keys.measurements"),
    ("[keys]\nmeasurements = 'mrtd'", "keys.measurements"),
    ("[logging]\nformat = 'xml'", "logging.format"),
    ("[logging]\nlevel = 'verbose'", "logging.level"),
    ("policy = 3", "policy"),
    ("[policy]\naccepted_tcb_statuses = ['Revoked']", "policy.accepted_tcb_statuses"),
]


@pytest.mark.parametrize(("text", "key"), INVALID)
def test_invalid_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        Config.load(write(tmp_path, text))


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Config.load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.load(write(tmp_path, "[server\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        Config.load(tmp_path)


# --- overrides ------------------------------------------------------------------------------------


def test_overrides_beat_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nhttp_listen = "127.0.0.1:9000"\nio_timeout = 3\n')
    c = Config.load(
        path,
        {
            "server.http_listen": "0.0.0.0:8443",
            "platform.kind": "sim",
            "platform.sim_state_dir": "/tmp/sim",
            "policy.allow_debug_td": True,
            "policy.key_names.*": ["a/**"],
            "dev_mode": True,
        },
    )
    assert c.server.http_listen == "0.0.0.0:8443"
    assert c.server.io_timeout == 3.0
    assert c.platform.kind == "sim"
    assert c.policy.allow_debug_td is True
    assert c.policy.key_names == (("*", ("a/**",)),)
    assert c.dev_mode is True


def test_with_overrides() -> None:
    c = Config().with_overrides({"keys.measurements": ["mrtd", "rtmr3"], "logging.level": "debug"})
    assert c.keys.measurements == ("mrtd", "rtmr3")
    assert c.logging.level == "debug"
    assert c.with_overrides({"logging.level": None}).logging.level == "info"
    with pytest.raises(ConfigError, match="collateral"):
        Config().with_overrides({"collateral.file": "/x"})  # PCCS URL still set: not both
    both = Config().with_overrides({"collateral.file": "/x", "collateral.pccs_url": None})
    assert both.collateral == CollateralConfig(pccs_url=None, file="/x")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"server.io_timout": 1}, "server.io_timout"),
        ({"sever.io_timeout": 1}, "sever"),
        ({"dev_mod": True}, "dev_mod"),
        ({"server..io_timeout": 1}, "dotted"),
        ({"server.io_timeout.x": 1}, "io_timeout is not a table"),
        ({"server.io_timeout": "fast"}, "server.io_timeout"),
        ({"policy.alow_debug_td": True}, "policy.alow_debug_td"),
    ],
)
def test_bad_overrides(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config().with_overrides(overrides)


def test_apply_overrides_does_not_mutate() -> None:
    data: dict[str, object] = {"server": {"io_timeout": 1}}
    out = apply_overrides(data, {"server.io_timeout": 2})
    assert data == {"server": {"io_timeout": 1}}
    assert out == {"server": {"io_timeout": 2}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server.io_timeout=5", ("server.io_timeout", 5)),
        ("server.io_timeout=2.5", ("server.io_timeout", 2.5)),
        ("policy.allow_debug_td=true", ("policy.allow_debug_td", True)),
        ('keys.measurements=["mrtd","rtmr0"]', ("keys.measurements", ["mrtd", "rtmr0"])),
        ("server.http_listen=0.0.0.0:8080", ("server.http_listen", "0.0.0.0:8080")),
        ('logging.level="debug"', ("logging.level", "debug")),
        ("logging.level=debug", ("logging.level", "debug")),
        (" collateral.file = /x/y.json", ("collateral.file", "/x/y.json")),
    ],
)
def test_parse_override(text: str, expected: tuple[str, object]) -> None:
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=5", ""])
def test_parse_override_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_override(text)


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:3443", "k") == ("127.0.0.1", 3443)
    assert parse_listen("[::1]:8080", "k") == ("::1", 8080)
    assert parse_listen("localhost:1", "k") == ("localhost", 1)
    with pytest.raises(ConfigError, match="k"):
        parse_listen("[::1:80", "k")


def test_frozen() -> None:
    c = Config()
    with pytest.raises(AttributeError):
        c.dev_mode = True  # type: ignore[misc]
    with pytest.raises(AttributeError):
        c.server.io_timeout = 1.0  # type: ignore[misc]
