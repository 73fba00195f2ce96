"""``sealing-key-provider quote inspect|verify``: look inside a quote, or verify it with collateral."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..cliutil import usage_error
from ..errors import ProviderError
from .abi import parse_quote
from .collateral import Collateral
from .describe import quote_dict
from .verify import Verifier

#: Bounds for files given on the command line (a quote is ~5 KiB, collateral ~20 KiB).
MAX_INPUT_FILE = 4 * 1024 * 1024


def read_input(path: str) -> bytes:
    """Read a CLI input file with a size bound; errors become usage errors (exit 2) in the caller."""
    p = Path(path)
    with p.open("rb") as f:
        data = f.read(MAX_INPUT_FILE + 1)
    if len(data) > MAX_INPUT_FILE:
        raise ValueError(f"{path} is larger than {MAX_INPUT_FILE} bytes")
    return data


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


def _inspect(args: argparse.Namespace) -> int:
    try:
        data = read_input(args.file)
    except (OSError, ValueError) as e:
        return _usage(str(e))
    try:
        quote = parse_quote(data)
    except ProviderError as e:
        if args.json:
            print(json.dumps({"ok": False, "error": e.to_dict()}))
        else:
            print(f"{e.code}: {e.message}", file=sys.stderr)
        return 1
    info = quote_dict(quote)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_table(info)
    return 0


def load_collateral(args: argparse.Namespace, quote: bytes) -> Collateral:
    """The collateral named on the command line: a file, or fetched from a PCCS for this quote."""
    pccs_url = getattr(args, "pccs_url", None)
    if pccs_url:
        # The collateral package is the I/O edge; imported here so dcap itself never depends on it.
        from ..collateral.cli import client_from_args, fetch_for_quote_bytes
        from ..errors import ConfigError

        if args.collateral:
            raise ConfigError("give either --collateral or --pccs-url, not both")
        with client_from_args(pccs_url, args) as client:
            return fetch_for_quote_bytes(quote, client)[1]
    return Collateral.from_json(read_input(args.collateral))


def _verify(args: argparse.Namespace) -> int:
    if not args.collateral and not getattr(args, "pccs_url", None):
        return _usage("quote verify needs --collateral FILE or --pccs-url URL")
    try:
        data = read_input(args.file)
        anchor = read_input(args.trust_anchor) if args.trust_anchor else None
    except (OSError, ValueError) as e:
        return _usage(str(e))
    now = int(time.time()) if args.at is None else args.at
    try:
        collateral = load_collateral(args, data)
        verifier = Verifier(trust_anchor=anchor)
        result = verifier.verify(data, collateral, now)
    except OSError as e:
        return _usage(str(e))
    except ProviderError as e:
        if args.json:
            print(json.dumps({"ok": False, "error": e.to_dict()}))
        else:
            print(f"verification FAILED: {e.code}: {e.message}", file=sys.stderr)
        return 1
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

    v = qsub.add_parser("verify", help="verify a quote with DCAP collateral")
    v.add_argument("file", help="raw quote file")
    v.add_argument("--collateral", metavar="FILE", help="collateral JSON (QuoteCollateralV3 shape)")
    v.add_argument("--at", type=int, metavar="UNIX_SECONDS", help="verification time (default: now)")
    v.add_argument("--trust-anchor", metavar="PEM", help="root CA to trust instead of Intel's (tests, sim)")
    v.add_argument("--json", action="store_true", help="print JSON")
    # --pccs-url (and its connection options) are owned by the collateral package.
    from ..collateral.cli import add_client_arguments

    v.add_argument("--pccs-url", metavar="URL", help="fetch the collateral from this PCCS or Intel PCS")
    add_client_arguments(v)
    v.set_defaults(handler=_verify)
