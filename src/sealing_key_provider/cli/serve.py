"""``sealing-key-provider serve``: run the provider with both listeners.

A TOML file (``--config``) holds everything; each flag is a dotted-key override applied before
validation, so a flag can never produce a configuration the file could not (see :mod:`..config`).
Exit status: 0 after a clean shutdown (SIGTERM/SIGINT); 1 when start-up fails (a configuration that
cannot be read or is invalid prints ``CODE: message``; later failures are logged with their code) or
when Gramine refuses attestation (``RESTART_REQUIRED``: the supervisor restarts the enclave); 2 for
usage errors, including no platform chosen outside an enclave.

Once both listeners accept connections, their bound addresses are printed on stdout (port 0 asks for
a free port, and this is how a script learns it), and on the simulated platform so is a ready-to-paste
``get-key`` command for a simulated TD of the same platform.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from ..collateral import CollateralSource
from ..config import LOG_FORMATS, LOG_LEVELS, Config, PlatformConfig, apply_overrides
from ..errors import ConfigError, PlatformError, ProviderError, RestartRequired
from ..platform import SgxPlatform
from ..provider import Provider
from ..server.app import ProviderServer
from ..server.assembly import build_collateral, build_provider
from ..server.logs import configure_logging
from ..server.service import RESTART_MESSAGE
from .common import report_failure, usage_error

log = logging.getLogger("sealing_key_provider.server")

#: Present inside a Gramine enclave with DCAP attestation; decides ``--platform``'s default.
GRAMINE_QUOTE_FILE: Final = Path("/dev/attestation/quote")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the key provider (legacy TCP and HTTP API v1)",
        description=(
            "Run the sealing key provider. Flags override the TOML configuration file. An empty listen "
            "address disables that listener."
        ),
    )
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument(
        "--platform",
        choices=("gramine", "sim"),
        help="SGX backend: gramine (production, inside the enclave: the default when "
        "/dev/attestation/quote exists) or sim (the simulator, for development)",
    )
    p.add_argument("--state-dir", metavar="DIR", help="simulated platform state (platform.sim_state_dir)")
    p.add_argument("--legacy-listen", metavar="HOST:PORT", help="legacy TCP listener (server.legacy_listen)")
    p.add_argument("--http-listen", metavar="HOST:PORT", help="HTTP API listener (server.http_listen)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--pccs-url", metavar="URL", help="PCCS or Intel PCS base URL (collateral.pccs_url)")
    source.add_argument("--collateral", metavar="FILE", help="offline collateral file (collateral.file)")
    p.add_argument(
        "--trust-anchor",
        metavar="PEM",
        help="root CA other than the pinned Intel SGX Root CA, e.g. the simulator's (collateral.trust_anchor)",
    )
    p.add_argument(
        "--dev-mode",
        action="store_true",
        help="DEVELOPMENT ONLY: skip TD quote verification and the same-platform check",
    )
    p.add_argument("--log-format", choices=LOG_FORMATS, help="human lines or JSON lines (logging.format)")
    p.add_argument("--log-level", choices=LOG_LEVELS, help="logging.level")
    p.set_defaults(handler=run)


def overrides_from_args(args: argparse.Namespace) -> dict[str, object]:
    """The dotted-key overrides the flags stand for (``None`` removes a key: back to its default)."""
    out: dict[str, object] = {}
    if args.platform is not None:
        out["platform.kind"] = args.platform
    if args.state_dir is not None:
        out["platform.sim_state_dir"] = args.state_dir
    if args.legacy_listen is not None:
        out["server.legacy_listen"] = args.legacy_listen
    if args.http_listen is not None:
        out["server.http_listen"] = args.http_listen
    if args.pccs_url is not None:
        out["collateral.pccs_url"] = args.pccs_url
        out["collateral.file"] = None
    if args.collateral is not None:
        out["collateral.file"] = args.collateral
        out["collateral.pccs_url"] = None
    if args.trust_anchor is not None:
        out["collateral.trust_anchor"] = args.trust_anchor
    if args.dev_mode:
        out["dev_mode"] = True
    if args.log_format is not None:
        out["logging.format"] = args.log_format
    if args.log_level is not None:
        out["logging.level"] = args.log_level
    return out


def read_toml(path: str) -> dict[str, object]:
    """The raw tables of a configuration file, with the same errors as :meth:`Config.load`."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path!r} is not valid TOML: {exc}") from None


class NoPlatformChosen(Exception):
    """Neither the file nor ``--platform`` names a platform and this is not a Gramine enclave (usage error)."""


NO_PLATFORM_MESSAGE: Final = (
    f"no platform chosen and {GRAMINE_QUOTE_FILE} does not exist: pass --platform sim to run on the "
    "simulator (development), or run the provider under Gramine (make SGX=1 run-provider) for production"
)


def load_config(args: argparse.Namespace) -> tuple[Config, str | None]:
    """The configuration (file, then flags) and, when the platform was auto-detected, a line saying how.

    Without ``platform.kind`` from the file or ``--platform``, the platform is Gramine inside an
    enclave (``/dev/attestation/quote`` exists); elsewhere :class:`NoPlatformChosen`: the simulator is
    never chosen silently. The simulator's state directory defaults to the one ``sim init`` and
    ``get-key --quote-source sim`` use.
    """
    merged = apply_overrides(read_toml(args.config) if args.config else {}, overrides_from_args(args))
    note = None
    table = merged.get("platform", {})
    if isinstance(table, Mapping):
        if "kind" not in table:
            if not GRAMINE_QUOTE_FILE.exists():
                raise NoPlatformChosen(NO_PLATFORM_MESSAGE)
            merged = apply_overrides(merged, {"platform.kind": "gramine"})
            note = f"platform: gramine ({GRAMINE_QUOTE_FILE} exists; choose with --platform)"
        table = merged.get("platform", {})
        if isinstance(table, Mapping) and table.get("kind") == "sim" and not table.get("sim_state_dir"):
            from ..sim import default_state_dir

            merged = apply_overrides(merged, {"platform.sim_state_dir": str(default_state_dir())})
    return Config.from_mapping(merged), note


def open_platform(config: PlatformConfig, *, dev_mode: bool = False) -> SgxPlatform:
    """The backend ``[platform]`` names, opened (Gramine: ``attestation_type`` checked now).

    The composition root of ``serve``: backends are imported here, when chosen, so that production
    never loads the simulator and the simulator never needs Gramine's files.
    """
    if dev_mode and config.sealing_key_policy == "mrsigner":
        # The configuration refuses this pair too: a development build must never open the key that
        # every production build signed with the same key and ISVPRODID shares.
        raise PlatformError("development mode does not open the MRSIGNER sealing key; use the MRENCLAVE key")
    if config.kind == "gramine":
        from ..platform.gramine import GraminePlatform

        return GraminePlatform(config.attestation_dir, config.sealing_key_policy)
    from ..sim import SimSgxPlatform

    if config.sim_state_dir is None:
        raise ValueError("platform.sim_state_dir is required for the simulated platform")
    return SimSgxPlatform.load(
        config.sim_state_dir,
        mrenclave=bytes.fromhex(config.sim_mrenclave) if config.sim_mrenclave else None,
        mrsigner=bytes.fromhex(config.sim_mrsigner) if config.sim_mrsigner else None,
        key_policy=config.sealing_key_policy,
        dev_mode=dev_mode,
    )


def ensure_sim_state(config: Config) -> None:
    """Create the simulated platform's state directory on first use (so ``serve`` runs anywhere)."""
    if config.platform.kind != "sim" or config.platform.sim_state_dir is None:
        return
    from ..sim import SimPlatform, SimStateNotFound

    try:
        SimPlatform.load(config.platform.sim_state_dir)
    except SimStateNotFound:
        SimPlatform.init(config.platform.sim_state_dir)
        log.info("created a new simulated platform in %s", config.platform.sim_state_dir)


def open_configured_platform(config: Config) -> SgxPlatform:
    """The platform ``config`` names, with the simulator's state created on first use."""
    ensure_sim_state(config)
    return open_platform(config.platform, dev_mode=config.dev_mode)


def start_provider(config: Config, collateral: CollateralSource) -> Provider:
    """Open the platform and build the provider (blocking I/O: run in a thread)."""
    return build_provider(config, open_configured_platform(config), collateral=collateral)


async def _serve(config: Config) -> int:
    collateral = build_collateral(config)
    provider = await asyncio.to_thread(start_provider, config, collateral)
    me = provider.identity
    # What TDs pin (get-key --expect-mrenclave / --expect-mrsigner), also served by GET /v1/info.
    log.info(
        "provider identity mrenclave=%s mrsigner=%s isvprodid=%d isvsvn=%d fmspc=%s platform=%s",
        me.mrenclave.hex(),
        me.mrsigner.hex(),
        me.isvprodid,
        me.isvsvn,
        me.pck.fmspc.hex().upper(),
        config.platform.kind,
    )
    server = ProviderServer(provider, config, collateral=collateral)
    return await server.serve(on_ready=lambda: announce(server, config, provider))


def _hostport(address: tuple[str, int]) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def get_key_command(config: Config, provider: Provider, http: str | None, legacy: str | None) -> str | None:
    """The ``get-key`` command line for a simulated TD of this simulated platform, or ``None``."""
    if (
        config.platform.kind != "sim"
        or config.platform.sim_state_dir is None
        or (http is None and not legacy)
    ):
        return None
    state = config.platform.sim_state_dir
    parts = [
        "sealing-key-provider get-key",
        f"--provider http://{http}" if http is not None else f"--provider {legacy}",
        f"--expect-mrenclave {provider.identity.mrenclave.hex()}",
        f"--quote-source sim --sim-state-dir {shlex.quote(state)}",
        f"--trust-anchor {shlex.quote(config.collateral.trust_anchor or str(Path(state) / 'root-ca.pem'))}",
    ]
    if config.collateral.file:
        parts.append(f"--collateral {shlex.quote(config.collateral.file)}")
    elif config.collateral.pccs_url:
        parts.append(f"--pccs-url {shlex.quote(config.collateral.pccs_url)}")
    parts.append("--out key.bin")
    return " ".join(parts)


def announce(server: ProviderServer, config: Config, provider: Provider) -> None:
    """Print the bound addresses (scripts read them: port 0 is any free port) and, on the simulator,
    the get-key command for a simulated TD; stdout, so that it is not mixed with the log."""
    legacy = _hostport(server.legacy_address) if server.legacy_address else None
    http = _hostport(server.http_address) if server.http_address else None
    if legacy is not None:
        print(f"listening legacy {legacy}")
    if http is not None:
        print(f"listening http http://{http}")
    command = get_key_command(config, provider, http, legacy)
    if command is not None and config.dev_mode:
        print("development mode: get-key refuses this provider's answers (they skip TD quote checks)")
    elif command is not None:
        print(f"get a key for a simulated TD of this platform:\n  {command}")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    try:
        config, note = load_config(args)
    except NoPlatformChosen as e:
        return usage_error(str(e))
    except ProviderError as e:
        return report_failure(e)
    configure_logging(config.logging)
    if note is not None:
        log.info("%s", note)
    if config.platform.kind == "sim" and config.collateral.trust_anchor is None and not config.dev_mode:
        log.warning(
            "simulated platform with the Intel root as trust anchor: TD quotes of the simulator will not "
            "verify; pass --trust-anchor %s/root-ca.pem",
            config.platform.sim_state_dir,
        )
    try:
        return asyncio.run(_serve(config))
    except RestartRequired as e:
        log.critical(RESTART_MESSAGE, e.code, e.message)
        return 1
    except ConfigError as e:
        log.error("start-up failed code=%s reason=%s", e.code, e.message)
        return 1
    except ProviderError as e:
        log.error("start-up failed code=%s reason=%s", e.code, e.message)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        logging.shutdown()
        sys.stderr.flush()
