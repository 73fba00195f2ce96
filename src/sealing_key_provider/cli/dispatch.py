"""The ``sealing-key-provider`` command.

Each command group is one module of this package with a ``register(subparsers)`` function, so this
module stays a thin dispatcher. Exit codes: 0 success, 1 the operation failed (a check
did not pass), 2 usage errors (argparse's convention).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .. import __version__

#: Modules that contribute subcommands, in help order.
COMMAND_MODULES = (
    "sealing_key_provider.cli.quote",
    "sealing_key_provider.cli.collateral",
    "sealing_key_provider.cli.sim",
    "sealing_key_provider.cli.serve",
    "sealing_key_provider.cli.get_key",
    "sealing_key_provider.cli.demo",
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
