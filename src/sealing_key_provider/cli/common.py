"""Helpers every subcommand shares: the exit contract, input files, the trust anchor, argument types.

Exit codes are the CLI's contract: 0 success; 1 the operation failed, with exactly one line on stderr
that starts with the error code (``CODE: message``); 2 a usage error, with one line naming the bad flag
or value and a one-line hint to ``--help``.

This module is imported by every command, including ``--version``: it imports nothing heavy at the top.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ..errors import ConfigError, ProviderError

if TYPE_CHECKING:
    from ..dcap import Verifier

PROG: Final = "sealing-key-provider"
#: The code of a failure that is the operating system's (a file that cannot be written, a port in use).
IO_ERROR: Final = "IO_ERROR"

#: How the verifier says a certificate chain ends in another root than the trusted one (it names both).
ROOT_MISMATCH: Final = "not the trusted root"
#: What to do about it on the command line.
TRUST_ANCHOR_HINT: Final = "--trust-anchor PEM trusts another root than Intel's (the simulator's is root-ca.pem in its state directory)"

#: The running command's name as argparse knows it (``sealing-key-provider get-key``), set by the
#: dispatcher once the arguments are parsed, so that every usage error points to the right ``--help``.
_running_prog = [PROG]


def set_running_prog(prog: str) -> None:
    _running_prog[0] = prog


#: Bound for an input file named on the command line (a quote is ~5 KiB, collateral ~20 KiB, a bundle
#: of a few platforms well under this).
MAX_INPUT_FILE = 4 * 1024 * 1024


class InputFileError(Exception):
    """A file named on the command line cannot be used. A usage error (exit 2); the message names it."""


def read_input_file(path: str | Path, what: str, limit: int = MAX_INPUT_FILE) -> bytes:
    """Read a CLI input file whole, at most ``limit`` bytes; ``what`` names it in errors ("quote").

    Raises :class:`InputFileError` with a message such as
    ``cannot read quote /nope.bin: No such file or directory``, for the caller's :func:`usage_error`.
    """
    try:
        with Path(path).open("rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise InputFileError(f"cannot read {what} {path}: {e.strerror or e}") from e
    if len(data) > limit:
        raise InputFileError(f"{what} {path} is larger than {limit} bytes")
    return data


def verifier_for_anchor(path: str | None) -> Verifier:
    """The DCAP verifier: the pinned Intel root, or the ``--trust-anchor`` file (PEM or DER), read and
    checked up front (:func:`~sealing_key_provider.anchor.load_verifier`) so an unusable one is an
    :class:`InputFileError` (exit 2) before anything is sent."""
    from ..anchor import load_verifier  # the verifier (and cryptography) only for commands that verify

    try:
        return load_verifier(path)
    except ConfigError as e:
        raise InputFileError(e.message) from e


def usage_message(message: str, prog: str | None = None) -> str:
    """The two lines of a usage error: what is wrong (naming the flag or value), then where help is."""
    prog = prog or _running_prog[0]
    return f"{prog}: error: {message}\nTry '{prog} --help' for the options.\n"


def usage_error(message: str, prog: str | None = None) -> int:
    """Report a usage error (bad flag, value or input file) and return exit status 2."""
    sys.stderr.write(usage_message(message, prog))
    sys.stderr.flush()
    return 2


def failure_line(error: ProviderError | OSError, what: str | None = None) -> str:
    """``CODE: message`` for a failed check, or ``IO_ERROR: ...`` for an error of the operating system;
    ``what`` says what was being done (``cannot write key.bin``) when the OS error does not name it."""
    if isinstance(error, ProviderError):
        message = " ".join(error.message.splitlines())
        if ROOT_MISMATCH in message:
            message += f"; {TRUST_ANCHOR_HINT}"
        return f"{error.code}: {message}"
    reason = error.strerror or str(error)
    subject = what or (f"{error.filename}" if error.filename else "I/O failed")
    return f"{IO_ERROR}: {subject}: {reason}"


def report_failure(error: ProviderError | OSError, what: str | None = None) -> int:
    """Print a failure as exactly one line that starts with its code, and return exit status 1."""
    print(failure_line(error, what), file=sys.stderr)
    return 1


def hex_arg(size: int | None = None, max_size: int | None = None) -> Callable[[str], bytes]:
    """An argparse type: hex (optional ``0x``) of exactly ``size`` / at most ``max_size`` bytes.

    A bad value is a usage error (exit 2) reported at parse time, before anything runs.
    """

    def parse(text: str) -> bytes:
        try:
            raw = bytes.fromhex(text.strip().removeprefix("0x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not hex: {text!r}") from None
        if size is not None and len(raw) != size:
            raise argparse.ArgumentTypeError(f"must be {size} bytes ({2 * size} hex digits), got {len(raw)}")
        if max_size is not None and len(raw) > max_size:
            raise argparse.ArgumentTypeError(f"must be at most {max_size} bytes, got {len(raw)}")
        return raw

    return parse


def pccs_url_arg(text: str) -> str:
    """An argparse type: a PCCS or Intel PCS base URL, checked at parse time (a bad one is exit 2)."""
    from ..collateral.pccs_client import normalise_base_url

    try:
        normalise_base_url(text)
    except ProviderError as e:
        raise argparse.ArgumentTypeError(e.message) from None
    return text


def u16_arg(text: str) -> int:
    """An argparse type: an integer in 0..65535 (decimal or 0x-prefixed)."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError("must be in 0..65535")
    return value
