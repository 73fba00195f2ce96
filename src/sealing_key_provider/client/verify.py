"""The TD-side checks of a provider's answer, in the order they must run. Pure: no I/O, time is a
parameter, collateral is handed in.

Nothing from the answer is used until all of these pass (the sealed box is opened only afterwards):

1. the provider quote parses and is an SGX quote;
2. DCAP verification with the given collateral, at the given time, chained to the verifier's anchor;
3. the TCB status of the provider's platform is accepted and no denied advisory applies;
4. the enclave is *the* provider: MRENCLAVE / MRSIGNER (and ISVPRODID / ISVSVN if pinned), not DEBUG;
5. the quote's report data binds this answer (legacy: the ciphertext; v1: the ciphertext and the
   request context: our exact TD quote, scheme, key name, key version, policy digest);
6. same platform: the PPID and FMSPC of the provider's verified PCK certificate equal those of the PCK
   certificate in the TD's own quote.

Why 6 on the client when the provider already checks it: the TD's quote carries whatever PCK chain the
host attached, and a genuine provider refuses a TD on another platform; repeating the comparison on
the TD side means a provider build that skipped it (or a bug) still cannot hand a TD a key from
another machine, which would be a key that does not survive on this one.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography import x509

from ..binding import RequestContext, verify_report_data_legacy, verify_report_data_v1
from ..collateral.source import CollateralSource, for_quote
from ..dcap import PckIdentity, Quote, TeeType, VerifiedQuote, Verifier, parse_quote
from ..dcap.pck import X509_ERRORS, pck_identity
from ..errors import (
    AdvisoryDenied,
    CollateralError,
    PlatformMismatch,
    ProviderIdentityMismatch,
    QuoteError,
    ResponseBindingInvalid,
    TcbStatusRejected,
    UnsupportedQuote,
)
from ..wire import KeyResponseV1
from .errors import TdQuoteInvalid
from .trust import ProviderTrust

#: A TD quote whose PCK certificate cannot be read: cryptography's parse errors, or none at all.
_PCK_READ_ERRORS: tuple[type[Exception], ...] = (*X509_ERRORS, IndexError, QuoteError)


@dataclass(frozen=True, slots=True)
class TdQuoteInfo:
    """What the TD knows about its own quote: the bytes it sent and its platform identity."""

    quote: bytes
    parsed: Quote
    pck: PckIdentity


def inspect_td_quote(td_quote: bytes, report_data: bytes) -> TdQuoteInfo:
    """Parse the TD's own quote, check it carries ``report_data``, and read its PCK certificate.

    Done before the request is sent: a quote with other report data would ask for a key sealed to
    someone else's public key, and one without a PCK certificate can be checked by nobody.
    """
    try:
        parsed = parse_quote(td_quote)
    except QuoteError as e:
        raise TdQuoteInvalid(f"the TD quote source returned an unreadable quote: {e.message}") from None
    if not parsed.is_tdx:
        raise TdQuoteInvalid("the TD quote source returned an SGX quote; a TDX quote is needed")
    if not hmac.compare_digest(parsed.td_report.report_data, report_data):
        raise TdQuoteInvalid("the TD quote does not carry the report data it was asked for")
    try:
        leaf = x509.load_pem_x509_certificates(parsed.pck_chain_pem)[0]
        pck = pck_identity(leaf)
    except _PCK_READ_ERRORS as e:
        detail = e.message if isinstance(e, QuoteError) else "no readable PCK certificate chain"
        raise TdQuoteInvalid(f"the TD quote carries no usable PCK certificate: {detail}") from None
    return TdQuoteInfo(td_quote, parsed, pck)


def verify_provider_quote(
    provider_quote: bytes,
    *,
    trust: ProviderTrust,
    verifier: Verifier,
    collateral: CollateralSource,
    now: int,
) -> VerifiedQuote:
    """Steps 1-4: a genuine, acceptable, pinned provider enclave produced ``provider_quote``.

    DCAP and collateral failures keep their own type and code (``QUOTE_SIGNATURE_INVALID``,
    ``COLLATERAL_EXPIRED``, ...); their message says it is the provider's quote that failed.
    """
    try:
        quote = parse_quote(provider_quote)
        if quote.header.tee_type != TeeType.SGX:
            raise UnsupportedQuote("the provider answered with a TDX quote; a provider quote is an SGX quote")
        tee, fmspc, ca = for_quote(quote)
        verified = verifier.verify(quote, collateral.get(tee, fmspc, ca), now)
    except (QuoteError, CollateralError) as e:
        raise type(e)(f"provider quote: {e.message}", code=e.code) from None

    status = verified.status.value
    if status not in trust.accepted_tcb_statuses:
        raise TcbStatusRejected(
            f"provider platform TCB status {status} is not accepted "
            f"(accepted: {', '.join(sorted(trust.accepted_tcb_statuses))})"
        )
    denied = [a for a in verified.advisory_ids if a in trust.denied_advisory_ids]
    if denied:
        raise AdvisoryDenied(f"provider platform is affected by denied advisory {denied[0]}")

    report = quote.enclave_report
    if trust.mrenclave is not None and not hmac.compare_digest(report.mrenclave, trust.mrenclave):
        raise ProviderIdentityMismatch(
            f"provider MRENCLAVE {report.mrenclave.hex()} is not the expected {trust.mrenclave.hex()}"
        )
    if trust.mrsigner is not None and not hmac.compare_digest(report.mrsigner, trust.mrsigner):
        raise ProviderIdentityMismatch(
            f"provider MRSIGNER {report.mrsigner.hex()} is not the expected {trust.mrsigner.hex()}"
        )
    if trust.isvprodid is not None and report.isvprodid != trust.isvprodid:
        raise ProviderIdentityMismatch(
            f"provider ISVPRODID {report.isvprodid} is not the expected {trust.isvprodid}"
        )
    if trust.min_isvsvn is not None and report.isvsvn < trust.min_isvsvn:
        raise ProviderIdentityMismatch(
            f"provider ISVSVN {report.isvsvn} is below the required minimum {trust.min_isvsvn}"
        )
    if report.debug and not trust.allow_debug_provider:
        raise ProviderIdentityMismatch(
            "provider enclave has the DEBUG attribute: the host can read its memory, so its keys are not secret"
        )
    return verified


def verify_binding_legacy(verified: VerifiedQuote, encrypted_key: bytes) -> None:
    """Step 5, legacy: report data is ``SHA-256(encrypted_key) || 32 zero bytes``."""
    verify_report_data_legacy(verified.quote.report_data, encrypted_key)


def verify_binding_v1(
    verified: VerifiedQuote,
    response: KeyResponseV1,
    *,
    td_quote: bytes,
    key_name: str,
    key_version: int,
    scheme: str,
    trust: ProviderTrust,
) -> None:
    """Step 5, v1: the response answers *our* request, and the quote binds it and its policy digest.

    The response must name the key name, version and scheme we asked for: the client always names a
    scheme, since a request without one could be rewritten in transit to another scheme that the
    provider would honour and bind honestly, giving the TD another key. The request context is then rebuilt from our own TD quote bytes and the response's values,
    so a response for another request, another quote or another policy fails the report-data check.
    """
    if response.key_name != key_name or response.key_version != key_version:
        raise ResponseBindingInvalid(
            f"provider answered for key {response.key_name!r} version {response.key_version}, "
            f"not the requested {key_name!r} version {key_version}"
        )
    if response.scheme != scheme:
        raise ResponseBindingInvalid(
            f"provider answered with scheme {response.scheme!r}, not the requested {scheme!r}"
        )
    try:
        context = RequestContext.for_quote(
            td_quote,
            scheme=response.scheme,
            key_name=response.key_name,
            key_version=response.key_version,
            policy_digest=response.policy_digest,
            measurements=response.measurements,
            tcb_status=response.tcb_status,
            advisory_ids=response.advisory_ids,
            dev_mode=response.dev_mode,
        )
    except ValueError as e:
        raise ResponseBindingInvalid(f"provider answer cannot be bound: {e}") from None
    verify_report_data_v1(verified.quote.report_data, response.encrypted_key, context)
    expected = trust.expected_policy_digest
    if expected is not None and not hmac.compare_digest(response.policy_digest, expected):
        raise ProviderIdentityMismatch(
            f"provider policy digest {response.policy_digest.hex()} is not the expected {expected.hex()}"
        )
    if response.dev_mode and not trust.allow_dev_mode_provider:
        raise ProviderIdentityMismatch("provider runs in development mode (TD quotes are not verified)")


def verify_same_platform(verified: VerifiedQuote, td: TdQuoteInfo) -> None:
    """Step 6: the provider's (verified) PCK identity names the TD's platform."""
    mine, theirs = td.pck, verified.pck
    if not hmac.compare_digest(mine.ppid, theirs.ppid) or mine.fmspc != theirs.fmspc:
        raise PlatformMismatch(
            "the provider runs on another platform: its PCK certificate has PPID/FMSPC "
            f"{theirs.ppid.hex()}/{theirs.fmspc.hex().upper()}, this TD's has "
            f"{mine.ppid.hex()}/{mine.fmspc.hex().upper()}"
        )


__all__ = [
    "TdQuoteInfo",
    "inspect_td_quote",
    "verify_binding_legacy",
    "verify_binding_v1",
    "verify_provider_quote",
    "verify_same_platform",
]
