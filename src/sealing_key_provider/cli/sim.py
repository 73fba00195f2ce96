"""``sealing-key-provider sim init|quote|collateral|pccs``: the simulated platform from the command line.

Thin wrappers over :class:`~sealing_key_provider.sim.SimPlatform`. Hex arguments are checked by
argparse, so a malformed value is a usage error (exit 2) before anything is touched; a missing or
damaged state directory is exit 1 with the error code. This is the edge: reading the clock for
``collateral --at`` defaulting to now happens here, never in the simulator itself.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..dcap.abi import BodyType
from ..errors import ConfigError, ProviderError
from ..sim.collateral import Scenario
from ..sim.platform import DEBUG_SGX_ATTRIBUTES, DEFAULT_SGX_ATTRIBUTES, SgxEnclaveIdentity, SimPlatform
from ..sim.state import default_state_dir
from .common import hex_arg, report_failure, u16_arg, usage_error, write_atomically

if TYPE_CHECKING:
    from ..dcap.collateral import Collateral

_hex = hex_arg
_u16 = u16_arg


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else default_state_dir()


def _usage(message: str) -> int:
    return usage_error(message)


def _fail(error: ProviderError | OSError) -> int:
    return report_failure(error)


def _cmd_init(args: argparse.Namespace) -> int:
    try:
        platform = SimPlatform.init(_state_dir(args), fmspc=args.fmspc, tdx_module_major=args.tdx_module)
    except (ProviderError, OSError) as e:
        return _fail(e)
    print(f"state directory: {platform.state_dir}")
    print(f"PPID:            {platform.ppid.hex()}")
    print(f"FMSPC:           {platform.fmspc.hex().upper()}")
    print(f"QE ID:           {platform.qe_id.hex()}")
    print(f"PCE ID:          {platform.pce_id.hex()}")
    print(f"root CA:         {platform.root_ca_pem_path}")
    return 0


def _cmd_quote(args: argparse.Namespace) -> int:
    rtmrs = (args.rtmr0, args.rtmr1, args.rtmr2, args.rtmr3)
    if args.tee == "sgx":
        tdx_only = {"--mrtd": args.mrtd, "--body": args.body, "--rtmrN": any(r is not None for r in rtmrs)}
        used = [name for name, value in tdx_only.items() if value]
        if used:
            return _usage(f"{', '.join(used)} apply to --tee tdx only")
        if args.version not in (None, 3, 5):
            return _usage("SGX quotes are version 3 or 5")
        missing = [name for name in ("--mrenclave", "--mrsigner") if getattr(args, name[2:]) is None]
        if missing:
            return _usage(f"--tee sgx requires --mrenclave and --mrsigner (missing {' and '.join(missing)})")
    else:
        sgx_only = {"--mrenclave": args.mrenclave, "--mrsigner": args.mrsigner}
        used = [name for name, value in sgx_only.items() if value is not None]
        if used or args.isvprodid is not None or args.isvsvn is not None:
            return _usage("--mrenclave, --mrsigner, --isvprodid and --isvsvn apply to --tee sgx only")
        if args.version not in (None, 4, 5):
            return _usage("TDX quotes are version 4 or 5")
        if args.body == "td15" and args.version != 5:
            return _usage("--body td15 needs --version 5")
    try:
        platform = SimPlatform.load(_state_dir(args))
        if args.tee == "sgx":
            enclave = SgxEnclaveIdentity(
                mrenclave=args.mrenclave,
                mrsigner=args.mrsigner,
                isvprodid=args.isvprodid or 0,
                isvsvn=args.isvsvn or 0,
                attributes=DEBUG_SGX_ATTRIBUTES if args.debug else DEFAULT_SGX_ATTRIBUTES,
            )
            data = platform.sgx_quote(args.report_data, enclave=enclave, version=args.version or 3)
        else:
            zero = bytes(48)
            version = args.version or 4
            body = {"td10": BodyType.TD10, "td15": BodyType.TD15, None: None}[args.body]
            data = platform.tdx_quote(
                report_data=args.report_data,
                mrtd=args.mrtd or zero,
                rtmrs=tuple(r or zero for r in rtmrs),
                mrconfigid=args.mrconfigid or zero,
                mrowner=args.mrowner or zero,
                mrownerconfig=args.mrownerconfig or zero,
                debug=args.debug,
                version=version,
                body=body,
            )
        write_atomically(args.out, data)
    except (ProviderError, OSError) as e:
        return _fail(e)
    print(f"wrote {len(data)}-byte {args.tee.upper()} quote to {args.out}")
    return 0


def _cmd_collateral(args: argparse.Namespace) -> int:
    scenario = Scenario(args.scenario)
    if scenario.tdx_only and args.tee != "tdx":
        return _usage(f"scenario {scenario.value} applies to --tee tdx only")
    now = args.at if args.at is not None else int(time.time())
    try:
        platform = SimPlatform.load(_state_dir(args))
        collateral = platform.collateral(args.tee, now=now, scenario=scenario)
        write_atomically(args.out, collateral.to_json().encode("utf-8"))
    except (ProviderError, OSError) as e:
        return _fail(e)
    expected = scenario.expected
    outcome = expected.status if expected.status else f"error {expected.code}"
    print(f"wrote {args.tee.upper()} collateral ({scenario.value}, expect {outcome}) to {args.out}")
    return 0


def _add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help=f"simulated platform state directory (default {default_state_dir()})",
    )


def register(subparsers: Any) -> None:
    """Add ``sim`` and its subcommands to the top-level CLI (idempotent)."""
    if "sim" in subparsers.choices:
        return
    sim = subparsers.add_parser(
        "sim",
        help="simulated SGX/TDX platform: state, quotes, collateral",
        description="A software SGX+TDX platform with an Intel-shaped test PKI, for tests and demos.",
    )
    sim_sub = sim.add_subparsers(dest="sim_command", required=True, metavar="SUBCOMMAND")

    init = sim_sub.add_parser(
        "init", help="create the simulated platform (idempotent) and print its identity"
    )
    _add_state_dir(init)
    init.add_argument("--fmspc", type=_hex(6), help="FMSPC of a new platform (12 hex digits)")
    init.add_argument("--tdx-module", type=int, choices=(1, 3), help="TDX module major version (default 1)")
    init.set_defaults(handler=_cmd_init)

    quote = sim_sub.add_parser(
        "quote",
        help="generate a signed SGX or TDX quote",
        description=(
            "Generate a quote signed by the simulated platform. --tee tdx: every TD measurement defaults to "
            "zeros. --tee sgx: --mrenclave and --mrsigner are required."
        ),
    )
    quote.add_argument("--tee", required=True, choices=("tdx", "sgx"))
    quote.add_argument("--version", type=int, choices=(3, 4, 5), help="3 (SGX default), 4 (TDX default) or 5")
    quote.add_argument("--body", choices=("td10", "td15"), help="v5 TDX body: TDX 1.0 or 1.5 (default td15)")
    quote.add_argument(
        "--report-data", type=_hex(None, 64), default=b"", metavar="HEX", help="up to 64 bytes"
    )
    for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid", "mrowner", "mrownerconfig"):
        quote.add_argument(f"--{name}", type=_hex(48), metavar="HEX", help="48 bytes (TDX)")
    quote.add_argument(
        "--mrenclave", type=_hex(32), metavar="HEX", help="32 bytes (SGX; required with --tee sgx)"
    )
    quote.add_argument(
        "--mrsigner", type=_hex(32), metavar="HEX", help="32 bytes (SGX; required with --tee sgx)"
    )
    quote.add_argument("--isvprodid", type=_u16, help="SGX ISVPRODID (default 0)")
    quote.add_argument("--isvsvn", type=_u16, help="SGX ISVSVN (default 0)")
    quote.add_argument("--debug", action="store_true", help="debug TD (TUD.DEBUG) or debug enclave")
    _add_state_dir(quote)
    quote.add_argument("--out", required=True, metavar="FILE")
    quote.set_defaults(handler=_cmd_quote)

    coll = sim_sub.add_parser("collateral", help="write signed collateral (JSON) for the platform")
    coll.add_argument("--tee", required=True, choices=("tdx", "sgx"))
    coll.add_argument(
        "--at", type=int, metavar="UNIX", help="time the collateral is issued for (default now)"
    )
    coll.add_argument(
        "--scenario",
        choices=[s.value for s in Scenario],
        default=Scenario.UP_TO_DATE.value,
        help="collateral situation (default up-to-date)",
    )
    _add_state_dir(coll)
    coll.add_argument("--out", required=True, metavar="FILE")
    coll.set_defaults(handler=_cmd_collateral)

    add_pccs_parser(sim_sub)


# --- sim pccs ------------------------------------------------------------------------------------


def _cmd_pccs(args: argparse.Namespace) -> int:
    from ..sim.pccs_server import PccsServer, RegeneratingCatalog, StaticCatalog, parse_listen

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        host, port = parse_listen(args.listen)
        if args.collateral and args.state_dir:
            raise ConfigError("give either --collateral or --state-dir, not both")
        if args.collateral:
            catalog: StaticCatalog | RegeneratingCatalog = StaticCatalog.from_file(args.collateral)
        else:
            catalog = RegeneratingCatalog(_sim_factory(args.state_dir, args.scenario), time.time)
            catalog.entries()  # generate now, so a broken state directory fails at start-up
        server = PccsServer(catalog, host, port, tls_cert=args.tls_cert, tls_key=args.tls_key)
    except ProviderError as e:
        return report_failure(e)
    except OSError as e:
        return report_failure(e, f"cannot listen on {args.listen}")
    # The URL on stdout, once serving, lets scripts use --listen HOST:0 and learn the port.
    server.serve_until_signalled(on_ready=lambda: print(server.url, flush=True))
    return 0


class _SimFactory:
    """Adapts the simulated platform to :class:`~sealing_key_provider.sim.pccs_server.CollateralFactory`."""

    def __init__(self, platform: SimPlatform, scenario: str) -> None:
        self._platform = platform
        self._scenario = scenario

    def collateral(self, tee: str, now: int) -> Collateral:
        return self._platform.collateral(tee, now=now, scenario=self._scenario)


def _sim_factory(state_dir: str | None, scenario: str) -> _SimFactory:
    return _SimFactory(SimPlatform.load(state_dir), scenario)


def add_pccs_parser(sim_subparsers: Any) -> None:
    """Add ``pccs`` under the ``sim`` command."""
    pccs = sim_subparsers.add_parser(
        "pccs",
        help="serve collateral over the PCCS v4 HTTP API",
        description=(
            "Serve the PCS v4 collateral endpoints (tcb, qe/identity, pckcrl, rootcacrl) from the simulated "
            "platform in --state-dir, or from a recorded collateral file (--collateral)."
        ),
    )
    pccs.add_argument(
        "--state-dir", metavar="DIR", help="simulated platform state directory (default: sim's)"
    )
    pccs.add_argument(
        "--scenario",
        default=Scenario.UP_TO_DATE.value,
        choices=[s.value for s in Scenario],
        help="collateral situation of the simulated platform (default up-to-date)",
    )
    pccs.add_argument(
        "--collateral", metavar="FILE", help="serve this collateral file instead of the simulator's"
    )
    pccs.add_argument(
        "--listen", default="127.0.0.1:8081", metavar="HOST:PORT", help="default 127.0.0.1:8081"
    )
    pccs.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    pccs.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert, if not in the same file")
    pccs.set_defaults(handler=_cmd_pccs)
