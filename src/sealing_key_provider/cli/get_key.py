"""``sealing-key-provider get-key``: fetch this TD's key from the provider, check it, and store it.

The protocol follows from ``--provider``: an ``http://`` or ``https://`` URL speaks the HTTP API v1,
``HOST:PORT`` the original's TCP protocol, which is refused unless ``--legacy`` is given: its answers
are not bound to the request, so the host can give this TD another TD's key (a warning says so).
The scheme is always sent (``hkdf-sha256-v1`` unless ``--scheme`` names another) and the answer must
name it. The provider's identity must be pinned with
``--expect-mrenclave`` and/or ``--expect-mrsigner``: a key from an enclave nobody named is worthless.

The key goes to a new file created with mode 0600 (never over an existing file unless ``--force``,
then by an atomic rename) or to stdout as hex. Exit codes: 0 the key was written; 1 a check failed or
the provider refused (the message names the code, e.g. ``PROVIDER_IDENTITY_MISMATCH: ...``); 2 usage.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..acceptance import DEFAULT_ACCEPTED_TCB_STATUSES, KNOWN_TCB_STATUSES
from ..atomicfile import create_exclusive, write_atomically
from ..client.detect import NOT_A_TD_HINT, detect_quote_source
from ..client.quote_base import QuoteSource, QuoteSourceUnavailable
from ..client.ratls import RaTlsTransport
from ..client.sdk import KeyClient, ProviderKey
from ..client.secret import wipe
from ..client.tdx_guest import DEFAULT_TDX_GUEST_DEVICE, qgs_source_from_system
from ..client.transport import DEFAULT_TIMEOUT, HttpTransport, LegacyTransport, Transport, parse_address
from ..client.trust import ProviderTrust
from ..collateral import CollateralSource, FileSource
from ..collateral.build import build_source
from ..config import DEFAULT_PCCS_URL
from ..dcap.tcb import TcbStatus
from ..errors import ConfigError, ProviderError
from ..keys import DEFAULT_KEY_NAME, DEFAULT_KEY_VERSION, DEFAULT_SCHEME, LEGACY_SCHEME, MAX_KEY_VERSION
from .common import (
    InputFileError,
    hex_arg,
    pccs_url_arg,
    read_input_file,
    report_failure,
    u16_arg,
    usage_error,
    verifier_for_anchor,
)

PROG = "sealing-key-provider get-key"


def _hex(size: int) -> Callable[[str], str]:
    """A hex argument of ``size`` bytes, checked at parse time and normalised to lower-case hex."""
    parse = hex_arg(size)
    return lambda text: parse(text).hex()


_u16 = u16_arg


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _key_version(text: str) -> int:
    """The range the provider accepts (``keys.validate_key_version``), checked at parse time."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= MAX_KEY_VERSION:
        raise argparse.ArgumentTypeError(f"must be in 0..{MAX_KEY_VERSION}, got {value}")
    return value


#: What the CLI says instead of the SDK's "pass a SimTdQuoteSource" when no TDX quote source exists.
CLI_NOT_A_TD_HINT = (
    "outside a TDX guest use --quote-source sim [--sim-state-dir DIR] (a simulated TD, for tests and demos)"
)


def _usage(message: str) -> int:
    return usage_error(message, PROG)


def _fail(error: ProviderError | OSError) -> int:
    return report_failure(error)


# --- output -----------------------------------------------------------------------------------------


def write_key_file(path: str | Path, key: bytes, *, force: bool = False) -> None:
    """Write ``key`` whole to a file readable by its owner only (exactly 0600, whatever the umask).

    Without ``force`` an existing path (even a dangling symlink) is refused and never followed or
    reused (:func:`~sealing_key_provider.atomicfile.create_exclusive`). With ``force`` the old file
    is replaced whole and its permissions do not carry over (:func:`~.atomicfile.write_atomically`).
    """
    if force:
        write_atomically(path, key, 0o600)
    elif not create_exclusive(path, key, 0o600):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))


# --- wiring -----------------------------------------------------------------------------------------


def _quote_source(args: argparse.Namespace) -> QuoteSource:
    if args.quote_source == "sim":
        # The composition root: only here (and in the demo) does a TD-side command load the simulator.
        from ..sim import DEFAULT_SIM_MRTD, DEFAULT_SIM_RTMRS, SimTdQuoteSource, default_state_dir

        rtmrs = [
            bytes.fromhex(given) if given is not None else default
            for given, default in zip(
                (args.sim_rtmr0, args.sim_rtmr1, args.sim_rtmr2, args.sim_rtmr3),
                DEFAULT_SIM_RTMRS,
                strict=True,
            )
        ]
        return SimTdQuoteSource.load(
            args.sim_state_dir or default_state_dir(),
            mrtd=bytes.fromhex(args.sim_mrtd) if args.sim_mrtd else DEFAULT_SIM_MRTD,
            rtmrs=rtmrs,
        )
    if args.quote_source == "tdx-guest":
        return qgs_source_from_system()
    try:
        return detect_quote_source(
            tdx_guest=None if args.quote_source == "configfs" else DEFAULT_TDX_GUEST_DEVICE
        )
    except QuoteSourceUnavailable as e:
        # The SDK's advice names Python classes; a CLI user needs the option instead.
        if not e.message.endswith(NOT_A_TD_HINT):
            raise
        raise QuoteSourceUnavailable(e.message.removesuffix(NOT_A_TD_HINT) + CLI_NOT_A_TD_HINT) from None


def _transport(args: argparse.Namespace) -> Transport:
    if args.provider.startswith("https://"):
        # The provider's RA-TLS listener: its certificate is verified before the request is sent.
        return RaTlsTransport(args.provider, timeout=args.timeout)
    if args.provider.startswith("http://"):
        return HttpTransport(args.provider, timeout=args.timeout)
    return LegacyTransport(args.provider, timeout=args.timeout)


def _check_usage(args: argparse.Namespace) -> str | None:
    """The problems argparse cannot see; None when the arguments make sense together."""
    if args.expect_mrenclave is None and args.expect_mrsigner is None:
        return (
            "pin the provider with --expect-mrenclave and/or --expect-mrsigner "
            "(there is no trust on first use)"
        )
    if args.provider.startswith(("http://", "https://")):
        problem = _check_provider_url(args.provider)
        if problem is not None:
            return problem
        if args.legacy:
            return "--legacy applies to a HOST:PORT --provider (the legacy TCP protocol) only"
    else:
        if "://" in args.provider:
            return f"--provider must be an http(s):// URL or HOST:PORT, got {args.provider!r}"
        try:
            parse_address(args.provider)
        except ValueError as e:
            return f"--provider: {e}"
        legacy_only = []
        if args.key_name != DEFAULT_KEY_NAME:
            legacy_only.append("--key-name")
        if args.key_version != DEFAULT_KEY_VERSION:
            legacy_only.append("--key-version")
        if args.scheme not in (None, LEGACY_SCHEME):
            legacy_only.append("--scheme")
        if args.freshness:
            legacy_only.append("--freshness")
        if args.expect_policy_digest:
            legacy_only.append("--expect-policy-digest")
        if args.per_request_quote:
            legacy_only.append("--per-request-quote")
        if legacy_only:
            verb = "needs" if len(legacy_only) == 1 else "need"
            return (
                f"{', '.join(legacy_only)} {verb} the HTTP API (--provider http://...); the legacy protocol "
                f"serves only its one key, {LEGACY_SCHEME}"
            )
    sim_options = [
        name
        for name in ("sim_state_dir", "sim_mrtd", "sim_rtmr0", "sim_rtmr1", "sim_rtmr2", "sim_rtmr3")
        if getattr(args, name) is not None
    ]
    if sim_options and args.quote_source != "sim":
        return f"--{sim_options[0].replace('_', '-')} needs --quote-source sim"
    if args.force and args.out is None:
        return "--force applies to --out only"
    for flag, given in (("--ca-bundle", args.ca_bundle is not None), ("--insecure", args.insecure)):
        if given and not args.pccs_url:
            return f"{flag} applies to --pccs-url only (the TLS certificate of the PCCS)"
    return None


def _check_provider_url(url: str) -> str | None:
    """An http(s) --provider must be the base URL: the client appends /v1/keys and /v1/nonce itself."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        return f"--provider: bad port in {url!r}"
    if not parts.hostname:
        return f"--provider: no host in {url!r}"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        base = f"{parts.scheme}://{parts.netloc}"
        return (
            f"--provider takes the provider's base URL, e.g. {base}, not {url!r} "
            "(the client adds /v1/keys and /v1/nonce itself)"
        )
    return None


def _check_out(out: str, *, force: bool) -> str | None:
    """Why ``--out`` cannot be written, found before any network call; None if it can be tried."""
    target = Path(out)
    parent = target.parent
    if not parent.exists():
        return f"--out {out}: directory {parent} does not exist"
    if not parent.is_dir():
        return f"--out {out}: {parent} is not a directory"
    if os.path.lexists(target):
        if not force:
            return f"--out {out} exists; refusing to overwrite it (use --force to replace it)"
        if target.is_dir() and not target.is_symlink():
            return f"--out {out} is a directory"
    return None


def _trust(args: argparse.Namespace) -> ProviderTrust:
    return ProviderTrust.from_hex(
        mrenclave=args.expect_mrenclave,
        mrsigner=args.expect_mrsigner,
        isvprodid=args.expect_isvprodid,
        min_isvsvn=args.min_isvsvn,
        accepted_tcb_statuses=args.accept_tcb_status or DEFAULT_ACCEPTED_TCB_STATUSES,
        expected_policy_digest=args.expect_policy_digest,
    )


def _cmd_get_key(args: argparse.Namespace) -> int:
    problem = _check_usage(args)
    if problem is not None:
        return _usage(problem)
    try:
        trust = _trust(args)
    except ValueError as e:
        return _usage(str(e))
    if args.out is not None:
        problem = _check_out(args.out, force=args.force)
        if problem is not None:
            return _usage(problem)
    try:
        verifier = verifier_for_anchor(args.trust_anchor)
    except InputFileError as e:
        return _usage(str(e))
    collateral: CollateralSource
    if args.collateral:
        try:  # an unreadable file is a usage error; a malformed one fails as a check (exit 1, its code)
            data = read_input_file(args.collateral, "collateral")
        except InputFileError as e:
            return _usage(str(e))
        try:
            collateral = FileSource(args.collateral, data)
        except ProviderError as e:
            return _fail(e)
    else:
        try:
            collateral = build_source(
                clock=time.time,
                pccs_url=args.pccs_url or DEFAULT_PCCS_URL,
                timeout=args.timeout,
                ca_bundle=args.ca_bundle,
                insecure=args.insecure,
            )
        except ConfigError as e:  # a bad --pccs-url or an unreadable --ca-bundle
            return _usage(e.message)
    try:
        quotes = _quote_source(args)
        evidence = "quote" if args.per_request_quote else None
        # With --legacy the SDK logs a warning that names the risk (stderr: no logging is configured).
        with KeyClient(
            _transport(args),
            trust,
            verifier,
            collateral,
            quotes,
            evidence=evidence,
            allow_unbound_legacy=args.legacy,
        ) as client:
            result: ProviderKey = client.fetch(
                args.key_name, args.key_version, args.scheme, freshness=args.freshness
            )
        try:
            if args.out is not None:
                write_key_file(args.out, result.key, force=args.force)
            else:
                sys.stdout.write(result.key.hex() + "\n")
                sys.stdout.flush()
        finally:
            wipe(result.key)  # written out: this process has no further use for it
    except ProviderError as e:
        return _fail(_with_cli_hint(e, args))
    except OSError as e:
        return _fail(e)
    except ValueError as e:
        # Every argument the SDK would refuse was checked as a usage error above; a ValueError here is
        # a failure of the run, not of the command line (exit 1, with a code).
        return _fail(ProviderError(f"unexpected error: {e}"))
    where = f"to {args.out}" if args.out is not None else "to stdout"
    if result.scheme == LEGACY_SCHEME:
        which = f"the {LEGACY_SCHEME} key, which has no name or version"
    else:
        which = f"scheme {result.scheme}, key {result.key_name!r} version {result.key_version}"
    print(
        f"{PROG}: wrote the 32-byte key {where} ({which}; provider MRENCLAVE "
        f"{result.provider_mrenclave.hex()}, platform TCB {result.provider_tcb_status})",
        file=sys.stderr,
    )
    return 0


def _with_cli_hint(error: ProviderError, args: argparse.Namespace) -> ProviderError:
    """The error, with what to do about it in this CLI's terms where the message speaks the API's."""
    if error.code == "FRESHNESS_INVALID" and not args.freshness:
        # The provider's own message ("... GET /v1/nonce first") is relayed as it is.
        return ProviderError(
            f"{error.message} (get-key: add --freshness, which fetches that token)", code=error.code
        )
    return error


def register(subparsers: Any) -> None:
    """Add ``get-key`` to the top-level CLI (idempotent)."""
    if "get-key" in subparsers.choices:
        return
    p = subparsers.add_parser(
        "get-key",
        help="get this TD's sealing key from the provider (checks the provider's quote first)",
        description=(
            "Request this TD's key from the provider, verify the provider's SGX quote (DCAP, pinned "
            "identity, TCB status, response binding, same platform) and only then decrypt it. "
            "Exit 0 ok, 1 a check failed or the provider refused, 2 usage."
        ),
    )
    p.add_argument(
        "--provider",
        required=True,
        metavar="URL|HOST:PORT",
        help="http(s)://host:port for the HTTP API v1, or HOST:PORT for the legacy TCP protocol (with --legacy)",
    )
    p.add_argument(
        "--legacy",
        action="store_true",
        help="accept a HOST:PORT provider (legacy protocol): its answer is not bound to this TD's quote, "
        "so the host can give this TD another TD's key; only for a provider whose policy.allowed_mrtd "
        "lists your images",
    )
    _identity_arguments(p)
    _key_arguments(p)
    _verification_arguments(p)
    _own_quote_arguments(p)
    _output_arguments(p)
    p.add_argument(
        "--timeout", type=_positive, default=DEFAULT_TIMEOUT, metavar="S", help="network timeout in seconds"
    )
    p.set_defaults(handler=_cmd_get_key)


def _identity_arguments(p: argparse.ArgumentParser) -> None:
    ident = p.add_argument_group("provider identity (at least one of MRENCLAVE/MRSIGNER is required)")
    ident.add_argument("--expect-mrenclave", type=_hex(32), metavar="HEX", help="the provider's MRENCLAVE")
    ident.add_argument("--expect-mrsigner", type=_hex(32), metavar="HEX", help="the provider's MRSIGNER")
    ident.add_argument("--expect-isvprodid", type=_u16, metavar="N", help="the provider's ISVPRODID")
    ident.add_argument("--min-isvsvn", type=_u16, metavar="N", help="lowest acceptable provider ISVSVN")
    ident.add_argument(
        "--accept-tcb-status",
        action="append",
        choices=sorted(KNOWN_TCB_STATUSES - {TcbStatus.REVOKED}),
        metavar="STATUS",
        help="a TCB status of the provider's platform to accept (repeatable; default: "
        + ", ".join(sorted(DEFAULT_ACCEPTED_TCB_STATUSES))
        + ")",
    )
    ident.add_argument(
        "--expect-policy-digest", type=_hex(32), metavar="HEX", help="the provider's policy digest (v1)"
    )


def _key_arguments(p: argparse.ArgumentParser) -> None:
    key = p.add_argument_group("key")
    key.add_argument("--key-name", default=DEFAULT_KEY_NAME, help=f"key name (default {DEFAULT_KEY_NAME!r})")
    key.add_argument(
        "--key-version",
        type=_key_version,
        metavar="N",
        default=DEFAULT_KEY_VERSION,
        help=f"key version, 0..{MAX_KEY_VERSION} (default {DEFAULT_KEY_VERSION})",
    )
    key.add_argument(
        "--scheme",
        help=f"derivation scheme, sent and required in the answer (default {DEFAULT_SCHEME}; legacy: "
        f"{LEGACY_SCHEME})",
    )
    key.add_argument("--freshness", action="store_true", help="bind a provider nonce into the TD quote (v1)")
    key.add_argument(
        "--per-request-quote",
        action="store_true",
        help="ask for an SGX quote over this answer instead of the attested key's signature (v1)",
    )


def _verification_arguments(p: argparse.ArgumentParser) -> None:
    verify = p.add_argument_group("verifying the provider's quote")
    coll = verify.add_mutually_exclusive_group()
    coll.add_argument(
        "--pccs-url",
        type=pccs_url_arg,
        metavar="URL",
        help=f"PCCS or Intel PCS for collateral (default {DEFAULT_PCCS_URL})",
    )
    coll.add_argument("--collateral", metavar="FILE", help="collateral file or bundle (offline)")
    tls = verify.add_mutually_exclusive_group()
    tls.add_argument(
        "--ca-bundle",
        metavar="PEM",
        help="CA certificates to verify the TLS certificate of --pccs-url (a private or self-signed PCCS)",
    )
    tls.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the TLS certificate of --pccs-url (collateral is still verified)",
    )
    verify.add_argument(
        "--trust-anchor",
        metavar="PEM",
        help="root CA to verify against instead of the pinned Intel SGX Root CA (e.g. the simulator's)",
    )


def _own_quote_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_argument_group("the TD's own quote")
    source.add_argument(
        "--quote-source",
        choices=("auto", "configfs", "tdx-guest", "sim"),
        default="auto",
        help=(
            "auto (default): configfs-tsm, else /dev/tdx_guest with the host's QGS over vsock; "
            "configfs or tdx-guest: only that one; sim: a simulated TD"
        ),
    )
    source.add_argument(
        "--sim-state-dir",
        metavar="DIR",
        help="simulated platform state directory (default: $XDG_DATA_HOME/sealing-key-provider/sim, the "
        "one sim init, serve --platform sim and make run-provider use)",
    )
    source.add_argument("--sim-mrtd", type=_hex(48), metavar="HEX", help="simulated TD's MRTD")
    for i in range(4):
        source.add_argument(f"--sim-rtmr{i}", type=_hex(48), metavar="HEX", help=f"simulated TD's RTMR{i}")


def _output_arguments(p: argparse.ArgumentParser) -> None:
    out = p.add_argument_group("output (exactly one)")
    dest = out.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", metavar="FILE", help="write the key to a new file with mode 0600")
    dest.add_argument("--hex", action="store_true", help="print the key as hex on stdout")
    out.add_argument("--force", action="store_true", help="replace an existing --out file")
