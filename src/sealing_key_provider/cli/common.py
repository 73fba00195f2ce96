"""Helpers every subcommand shares: exit codes, error reports and whole-file writes.

Exit codes are the CLI's contract: 0 success, 1 the operation failed (a check did not pass; the message
starts with the error code), 2 usage errors.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..dcap import Verifier
from ..errors import ProviderError

PROG = "sealing-key-provider"

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
    checked up front so an unusable one is an :class:`InputFileError` (exit 2) before anything is sent."""
    if path is None:
        return Verifier()
    data = read_input_file(path, "trust anchor")
    try:
        return Verifier(trust_anchor=data)
    except ProviderError as e:  # not a certificate, or not a P-256 key: the message says which
        raise InputFileError(f"trust anchor {path} is not a usable root CA certificate: {e.message}") from e


def usage_error(message: str, prog: str = PROG) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def report_failure(error: ProviderError | OSError, prefix: str = f"{PROG}: ") -> int:
    """Print a failure (code and message, or the OS error of a file) and return exit status 1."""
    if isinstance(error, ProviderError):
        print(f"{prefix}{error}", file=sys.stderr)
    else:
        print(f"{prefix}{error.filename or ''}: {error.strerror}", file=sys.stderr)
    return 1


def write_atomically(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` whole or not at all: a temporary sibling, fsync, then a rename over ``path``."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.resolve().parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def u16_arg(text: str) -> int:
    """An argparse type: an integer in 0..65535 (decimal or 0x-prefixed)."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError("must be in 0..65535")
    return value
