"""The ``sealing-key-provider`` command.

Each feature package owns its subcommands and registers them here through a ``register(subparsers)``
function, so the CLI stays a thin dispatcher. Exit codes: 0 success, 1 the operation failed (a check
did not pass), 2 usage errors (argparse's convention).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__

#: Modules that contribute subcommands, in help order.
COMMAND_MODULES = (
    "sealing_key_provider.dcap.cli",
    "sealing_key_provider.collateral.cli",
    "sealing_key_provider.sim.cli",
    "sealing_key_provider.server.cli",
    "sealing_key_provider.client.cli",
    "sealing_key_provider.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sealing-key-provider",
        description="Stable sealing keys for Intel TDX VMs from an SGX enclave on the same host.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = args.handler
    try:
        return int(handler(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
