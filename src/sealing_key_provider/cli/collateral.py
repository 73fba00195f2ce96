"""``collateral fetch``: a quote's collateral from a PCCS, into a file.

``collateral fetch`` turns a quote into a collateral file by asking a PCCS (or Intel PCS) the same
questions the provider asks, so an offline host can be prepared from a connected one and the file
can be checked with ``quote verify --collateral``. The output is written atomically: a crash never
leaves half a file where the provider expects collateral.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ProviderError
from .common import (
    InputFileError,
    pccs_url_arg,
    read_input_file,
    report_failure,
    usage_error,
    write_atomically,
)

if TYPE_CHECKING:
    from ..collateral.pccs_client import PccsClient
    from ..collateral.source import CollateralKey
    from ..dcap.collateral import Collateral


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """PCCS connection options, shared by every command that can fetch collateral."""
    parser.add_argument(
        "--timeout", type=float, help="total seconds for all requests (default: the PCCS client's, 10)"
    )
    parser.add_argument(
        "--ca-bundle", metavar="FILE", help="CA certificates to verify the PCCS TLS certificate"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the PCCS TLS certificate (self-signed PCCS; collateral is still verified)",
    )


def client_from_args(url: str, args: argparse.Namespace) -> PccsClient:
    from ..collateral.pccs_client import PccsClient

    timeout = {} if args.timeout is None else {"timeout": args.timeout}
    return PccsClient(url, ca_bundle=args.ca_bundle, insecure=args.insecure, **timeout)


def fetch_for_quote_bytes(data: bytes, client: PccsClient) -> tuple[CollateralKey, Collateral]:
    """Parse a quote, work out its collateral key and fetch the collateral."""
    from ..collateral.source import CollateralKey, for_quote
    from ..dcap.abi import parse_quote

    quote = parse_quote(data)
    tee, fmspc, ca = for_quote(quote)
    return CollateralKey(tee, fmspc, ca), client.get(tee, fmspc, ca)


def _cmd_fetch(args: argparse.Namespace) -> int:
    from ..collateral.source import bundle_json

    out = Path(args.out)
    # Every quote is read before the PCCS is asked anything: an unreadable one is a usage error (exit 2).
    try:
        quotes = [(name, read_input_file(name, "quote")) for name in args.quote]
    except InputFileError as e:
        return usage_error(str(e))
    try:
        with client_from_args(args.pccs_url, args) as client:
            fetched: dict[CollateralKey, Collateral] = {}
            for name, data in quotes:
                key, collateral = fetch_for_quote_bytes(data, client)
                fetched[key] = collateral
                print(f"{name}: fetched collateral for {key}", file=sys.stderr)
        text = next(iter(fetched.values())).to_json() if len(args.quote) == 1 else bundle_json(fetched)
        write_atomically(out, (text).encode("utf-8"))
    except ProviderError as e:
        return report_failure(e)
    except OSError as e:
        return report_failure(e, f"cannot write {out}")
    print(str(out))
    return 0


def register(subparsers: Any) -> None:
    """Add ``collateral`` (with ``fetch``) to the top-level CLI."""
    parser = subparsers.add_parser("collateral", help="fetch and manage DCAP collateral")
    sub = parser.add_subparsers(dest="collateral_command", required=True, metavar="COMMAND")
    fetch = sub.add_parser(
        "fetch",
        help="fetch the collateral of one or more quotes from a PCCS or Intel PCS",
        description=(
            "Fetch TCB info, QE identity, PCK CRL and root CA CRL for each quote. One quote gives the plain "
            "collateral JSON (as in the test corpus); several give a bundle, with one entry per TEE type, "
            "FMSPC and PCK CA. Either is accepted by the --collateral option of quote verify, get-key and "
            "serve. Exit status: 0 written, 1 a fetch failed (nothing is written), 2 usage error (such as "
            "an unreadable quote file)."
        ),
    )
    fetch.add_argument("quote", nargs="+", metavar="QUOTE", help="raw quote file(s)")
    fetch.add_argument(
        "--pccs-url",
        required=True,
        type=pccs_url_arg,
        metavar="URL",
        help="e.g. https://localhost:8081 or https://api.trustedservices.intel.com",
    )
    fetch.add_argument("--out", required=True, metavar="FILE", help="where to write the collateral JSON")
    add_client_arguments(fetch)
    fetch.set_defaults(handler=_cmd_fetch)
