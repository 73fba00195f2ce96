"""``sealing-key-provider quote inspect|verify``: look inside a quote, or verify it with collateral.

It reads the files named on the command line; ``verify`` uses the ``collateral`` package (a PCCS
client; the collateral file and bundle reader), imported when it runs so that ``inspect`` starts fast.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ..dcap.abi import parse_quote
from ..dcap.collateral import Collateral
from ..dcap.describe import quote_dict
from ..errors import ProviderError
from .collateral import add_client_arguments
from .common import (
    InputFileError,
    pccs_url_arg,
    read_input_file,
    report_failure,
    usage_error,
    verifier_for_anchor,
)


def _print_table(obj: dict[str, Any], indent: int = 0) -> None:
    pad = "  " * indent
    for key, value in obj.items():
        if isinstance(value, dict):
            print(f"{pad}{key}:")
            _print_table(value, indent + 1)
        elif isinstance(value, list):
            print(f"{pad}{key}: {', '.join(str(v) for v in value)}")
        else:
            print(f"{pad}{key}: {value}")


def _usage(message: str) -> int:
    return usage_error(message)


def _failed(error: ProviderError, as_json: bool) -> int:
    """A failed check: the ``CODE: message`` line on stderr, and with ``--json`` the same code on stdout."""
    if as_json:
        print(json.dumps({"ok": False, "error": error.to_dict()}))
    return report_failure(error)


def _inspect(args: argparse.Namespace) -> int:
    try:
        data = read_input_file(args.file, "quote")
    except InputFileError as e:
        return _usage(str(e))
    try:
        quote = parse_quote(data)
    except ProviderError as e:
        return _failed(e, args.json)
    info = quote_dict(quote)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_table(info)
    return 0


def load_collateral(args: argparse.Namespace, quote: bytes, collateral_file: bytes | None) -> Collateral:
    """The collateral for ``quote``: fetched from ``--pccs-url``, or taken from the ``--collateral``
    file (content ``collateral_file``), which holds one collateral object or a bundle.

    A bundle entry is picked by :class:`~sealing_key_provider.collateral.FileSource` for the quote's
    (TEE type, FMSPC, PCK CA), exactly as ``get-key --collateral`` and ``serve --collateral`` pick it.
    """
    from ..collateral.source import FileSource, for_quote
    from .collateral import client_from_args, fetch_for_quote_bytes

    if collateral_file is None:
        with client_from_args(args.pccs_url, args) as client:
            return fetch_for_quote_bytes(quote, client)[1]
    source = FileSource(args.collateral, collateral_file)
    return source.get(*for_quote(parse_quote(quote)))


def _verify(args: argparse.Namespace) -> int:
    # Every input file is read (and the trust anchor parsed) first: a bad one is a usage error (exit 2).
    try:
        data = read_input_file(args.file, "quote")
        collateral_file = (
            read_input_file(args.collateral, "collateral") if args.collateral is not None else None
        )
        verifier = verifier_for_anchor(args.trust_anchor)
    except InputFileError as e:
        return _usage(str(e))
    now = int(time.time()) if args.at is None else args.at
    try:
        collateral = load_collateral(args, data, collateral_file)
        result = verifier.verify(data, collateral, now)
    except ProviderError as e:
        return _failed(e, args.json)
    out = {"ok": True, **result.to_dict(), "verified_at": now}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"verification OK: TCB status {result.status.value}")
        _print_table({k: v for k, v in out.items() if k != "ok"})
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    quote = sub.add_parser("quote", help="inspect or verify a DCAP quote")
    qsub = quote.add_subparsers(dest="quote_command", required=True, metavar="ACTION")

    p = qsub.add_parser("inspect", help="print every field of a quote")
    p.add_argument("file", help="raw quote file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_inspect)

    v = qsub.add_parser(
        "verify",
        help="verify a quote with DCAP collateral",
        description=(
            "Verify a quote with collateral from a file (--collateral) or fetched from a PCCS (--pccs-url); "
            "exactly one of the two. Exit status: 0 the quote verifies (whatever its TCB status, which is "
            "printed), 1 it does not (the message starts with the error code), 2 usage error."
        ),
    )
    v.add_argument("file", help="raw quote file")
    source = v.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--collateral",
        metavar="FILE",
        help=(
            "collateral JSON: one collateral object (QuoteCollateralV3 shape), or a bundle written by "
            "'collateral fetch' for several quotes (the entry for this quote's TEE/FMSPC/CA is used)"
        ),
    )
    # --pccs-url's connection options are owned by the collateral package.
    source.add_argument(
        "--pccs-url",
        type=pccs_url_arg,
        metavar="URL",
        help="fetch the collateral from this PCCS or Intel PCS",
    )
    v.add_argument("--at", type=int, metavar="UNIX_SECONDS", help="verification time (default: now)")
    v.add_argument("--trust-anchor", metavar="PEM", help="root CA to trust instead of Intel's (tests, sim)")
    v.add_argument("--json", action="store_true", help="print JSON")
    add_client_arguments(v)
    v.set_defaults(handler=_verify)
