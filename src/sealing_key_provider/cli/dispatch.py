"""The ``sealing-key-provider`` command: parse, pick the command group, run it.

Each command group is one module of this package with a ``register(subparsers)`` function. Only the
module of the command being run is imported: ``--version`` and ``--help`` import none of them, and
``get-key`` never loads the server's web stack. A TD runs ``get-key`` at every boot, so its start-up
time is the product's.

The exit contract (see :mod:`.common`): 0 success; 1 a check failed, one ``CODE: message`` line on
stderr; 2 a usage error, one line naming the bad flag or value and a one-line hint to ``--help``.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .. import __version__
from ..errors import ProviderError
from .common import PROG, report_failure, set_running_prog, usage_message

#: Command groups in help order: name -> (module, one-line help). The help text is here so that the
#: top-level ``--help`` needs no module.
COMMANDS: dict[str, tuple[str, str]] = {
    "quote": ("sealing_key_provider.cli.quote", "inspect or verify a DCAP quote"),
    "collateral": ("sealing_key_provider.cli.collateral", "fetch and manage DCAP collateral"),
    "sim": ("sealing_key_provider.cli.sim", "simulated SGX/TDX platform: state, quotes, collateral, PCCS"),
    "serve": ("sealing_key_provider.cli.serve", "run the key provider (legacy TCP and HTTP API v1)"),
    "get-key": (
        "sealing_key_provider.cli.get_key",
        "get this TD's sealing key from the provider (checks the provider's quote first)",
    ),
    "demo": ("sealing_key_provider.cli.demo", "run the end-to-end demo on the simulated platform"),
}

#: Modules that contribute subcommands, in help order (all of them: ``build_parser()`` with no argv).
COMMAND_MODULES = tuple(module for module, _ in COMMANDS.values())


class Parser(argparse.ArgumentParser):
    """argparse with the exit contract: a usage error is one line and a hint, never the usage dump, and
    a misspelled flag is named as unknown (with the closest known flag) before anything else is judged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The deepest parser's default wins, so after parsing this is the running command's name.
        self.set_defaults(cli_prog=self.prog)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(usage_message(message, self.prog))
        sys.exit(2)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if args is not None and self._subparsers is None:
            self._check_flags(args)
        return super().parse_known_args(args, namespace)

    def _long_options(self) -> list[str]:
        return [o for a in self._actions for o in a.option_strings if o.startswith("--")]

    def _check_flags(self, args: Sequence[str]) -> None:
        """Name the first unknown ``--flag`` (argparse would first complain about a missing required one)."""
        known = self._long_options()
        for word in args:
            if word == "--":
                return
            if not word.startswith("--"):
                continue
            flag = word.split("=", 1)[0]
            if flag in known or (self.allow_abbrev and sum(o.startswith(flag) for o in known) == 1):
                continue
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            self.error(f"unknown flag {flag}{hint}")


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word: the first argument that is not an option (the top level has no valued options)."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser. With ``argv``, only the command it names is registered in full (the others are
    stubs that carry their help line); without, every command is (for tests and documentation)."""
    parser = Parser(
        prog=PROG,
        description="Stable sealing keys for Intel TDX VMs from an SGX enclave on the same host.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = _command_of(argv) if argv is not None else None
    for name, (module, help_text) in COMMANDS.items():
        if argv is None or name == chosen:
            _load(name, module).register(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


class MissingExtra(Exception):
    """The command needs a dependency that this installation does not have (the ``[server]`` extra)."""


def _load(name: str, module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] == "sealing_key_provider":
            raise
        raise MissingExtra(
            f"{name} needs {e.name}, which is not installed: the provider's dependencies come with "
            "pip install 'gramine-sealing-key-provider[server]'"
        ) from None


def _unknown_command(word: str) -> str:
    close = difflib.get_close_matches(word, list(COMMANDS), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown command {word!r}{hint}; the commands are {', '.join(COMMANDS)}"


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    word = _command_of(args_list)
    if word is not None and word not in COMMANDS:
        sys.stderr.write(usage_message(_unknown_command(word)))
        return 2
    try:
        parser = build_parser(args_list)
    except MissingExtra as e:
        sys.stderr.write(usage_message(str(e), f"{PROG} {word}"))
        return 2
    try:
        args = parser.parse_args(args_list)
    except SystemExit as e:  # --help, --version (0) and usage errors (2) already printed their text
        return int(e.code) if isinstance(e.code, int) else 2
    set_running_prog(args.cli_prog)
    handler = args.handler
    try:
        return int(handler(args))
    except ProviderError as e:  # a handler that let a typed failure through still keeps the contract
        return report_failure(e)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
