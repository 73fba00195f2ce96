"""The attested provider key: statement bytes, signing, renewal schedule, failure behaviour, and the
provider's answers (signed by default, quoted on request, legacy unchanged)."""

from __future__ import annotations

import base64
import hashlib
import logging
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from sealing_key_provider.attestation import (
    ATTESTATION_LABEL,
    SIGNATURE_LABEL,
    AttestationDocument,
    AttestationStatement,
    signed_message,
    verify_signature,
)
from sealing_key_provider.attested_key import AttestedKeys
from sealing_key_provider.binding import RequestContext, report_data_v1
from sealing_key_provider.dcap import parse_quote
from sealing_key_provider.errors import (
    BadRequest,
    PlatformError,
    ProviderError,
    QuoteSignatureInvalid,
    ResponseBindingInvalid,
    RestartRequired,
)
from sealing_key_provider.provider import KeyRequest, Provider
from sealing_key_provider.ratls import RaTlsIdentity, make_ratls_identity
from sealing_key_provider.sim import SimPlatform
from tests.test_provider import NOW, Td, make_provider

DIGEST = hashlib.sha256(b"policy").digest()


def _frame(*fields: bytes) -> bytes:
    """The length-prefixed framing, written out independently of binding.encode_fields."""
    return struct.pack(">I", len(fields)) + b"".join(struct.pack(">I", len(f)) + f for f in fields)


def test_statement_bytes_are_the_documented_layout() -> None:
    s = AttestationStatement(b"\x01" * 32, b"\x02" * 32, 100, 200, DIGEST)
    expected = _frame(
        ATTESTATION_LABEL,
        b"ed25519",
        b"\x01" * 32,
        b"\x02" * 32,
        struct.pack(">Q", 100),
        struct.pack(">Q", 200),
        DIGEST,
    )
    assert s.encode() == expected
    assert s.report_data() == hashlib.sha256(expected).digest() + bytes(32)
    assert s.attestation_id == hashlib.sha256(expected).hexdigest()[:32]
    assert signed_message(s.attestation_id, b"\x05" * 64) == _frame(
        SIGNATURE_LABEL, s.attestation_id.encode(), b"\x05" * 64
    )


@given(
    field=st.sampled_from(["signing_key", "tls_spki_sha256", "not_before", "not_after", "policy_digest"]),
    value=st.binary(min_size=32, max_size=32),
)
def test_every_field_changes_the_report_data(field: str, value: bytes) -> None:
    base = AttestationStatement(b"\x01" * 32, b"\x02" * 32, 100, 10**9, DIGEST)
    kwargs = {
        "signing_key": base.signing_key,
        "tls_spki_sha256": base.tls_spki_sha256,
        "not_before": base.not_before,
        "not_after": base.not_after,
        "policy_digest": base.policy_digest,
    }
    new: object = int.from_bytes(value[:3], "big") + 101 if field.startswith("not_") else value
    if new == kwargs[field]:
        return
    kwargs[field] = new
    changed = AttestationStatement(**kwargs)  # type: ignore[arg-type]
    assert changed.report_data() != base.report_data()


def test_statement_rejects_bad_sizes_and_validity() -> None:
    for args in [
        (b"\x01" * 31, b"", 1, 2, DIGEST),
        (b"\x01" * 32, b"\x02" * 31, 1, 2, DIGEST),
        (b"\x01" * 32, b"", 2, 2, DIGEST),
        (b"\x01" * 32, b"", 1, 2, DIGEST[:31]),
        (b"\x01" * 32, b"", -1, 2, DIGEST),
    ]:
        with pytest.raises(ValueError):
            AttestationStatement(*args)


def test_signature_checks() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    s = AttestationStatement(public, b"", 1, 2, DIGEST)
    binding = b"\x07" * 64
    signature = key.sign(signed_message(s.attestation_id, binding))
    verify_signature(s, signature, binding)
    for bad_sig, bad_binding in [
        (signature, b"\x08" * 64),
        (bytes([signature[0] ^ 1]) + signature[1:], binding),
        (signature[:63], binding),
        # the same key signing the same binding without the label is not an answer signature
        (key.sign(binding), binding),
    ]:
        with pytest.raises(ResponseBindingInvalid):
            verify_signature(s, bad_sig, bad_binding)
    other = AttestationStatement(public, b"", 1, 3, DIGEST)  # another attestation of the same key
    with pytest.raises(ResponseBindingInvalid):
        verify_signature(other, signature, binding)


def test_document_json_round_trip_and_strictness() -> None:
    s = AttestationStatement(b"\x01" * 32, b"", 1, 2, DIGEST)
    doc = AttestationDocument(s, b"quote")
    obj = doc.to_json()
    assert AttestationDocument.from_json(obj) == doc
    for name, value in [
        ("attestation_id", "ab" * 16),
        ("signing_algorithm", "rsa"),
        ("not_after", "2"),
        ("not_before", True),
        ("signing_key", "zz"),
        ("policy_digest", "00"),
        ("quote", "not base64!"),
    ]:
        with pytest.raises(BadRequest):
            AttestationDocument.from_json({**obj, name: value})
    missing = dict(obj)
    del missing["quote"]
    with pytest.raises(BadRequest):
        AttestationDocument.from_json(missing)


# --- the schedule -----------------------------------------------------------------------------------------


class FakeQuotes:
    """A quote function that records report data and can be made to fail."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.error: ProviderError | None = None

    def __call__(self, report_data: bytes) -> bytes:
        if self.error is not None:
            raise self.error
        self.calls.append(report_data)
        return b"Q" + report_data


def test_renewal_schedule_backoff_health_and_expiry() -> None:
    quotes = FakeQuotes()
    keys = AttestedKeys(quotes, DIGEST, lifetime=1000)
    first = keys.attest(0)
    assert first.document.quote == b"Q" + first.statement.report_data()
    assert first.statement.not_after == 1000 and keys.health(0) == "ok"
    assert not keys.maintain(499) and len(quotes.calls) == 1  # not due before half the lifetime
    second_id, _ = keys.sign(b"\x00" * 64, 499)
    assert second_id == first.attestation_id
    assert keys.maintain(500) and len(quotes.calls) == 2
    second = keys.current(500)
    assert second.attestation_id != first.attestation_id
    # Renewal fails: the current attestation stays, retries back off (1, 2, 4 ... s).
    quotes.error = PlatformError("AESM unavailable (test)")
    assert not keys.maintain(1000)
    assert keys.current(1000) is second and keys.health(1000) == "ok"
    assert not keys.maintain(1000.5)  # within the 1 s backoff: no attempt
    assert not keys.maintain(1001) and not keys.maintain(1002.5)  # attempts at 1001 (then 2 s wait)
    assert not keys.maintain(1003)  # third failure: next try at 1007
    # Readiness fails once a quarter of the lifetime or less is left, well before expiry.
    assert keys.health(1249) == "ok"
    with pytest.raises(PlatformError, match="re-attestation keeps failing"):
        keys.health(1251)
    # An expired attestation never signs.
    keys.sign(b"\x00" * 64, 1499)
    with pytest.raises(PlatformError, match="expired"):
        keys.sign(b"\x00" * 64, 1500)
    # The quoting enclave is back: the next attempt renews.
    quotes.error = None
    assert keys.maintain(1600) and keys.health(1600) == "ok"
    keys.sign(b"\x00" * 64, 1600)


def test_renewal_when_the_quote_no_longer_verifies_and_restart_required() -> None:
    quotes = FakeQuotes()
    refused: set[bytes] = set()

    def check(quote: bytes, now: float) -> None:
        if quote in refused:
            raise QuoteSignatureInvalid("TCB recovery (test)")

    keys = AttestedKeys(quotes, DIGEST, lifetime=1000, check=check)
    first = keys.attest(0)
    # A renewal that never runs (a stuck maintenance task) shows in readiness too.
    assert keys.health(749) == "ok"
    with pytest.raises(PlatformError, match="has not happened"):
        keys.health(751)
    assert not keys.maintain(10)
    refused.add(first.document.quote)
    assert keys.maintain(11) and keys.current(11).attestation_id != first.attestation_id
    quotes.error = RestartRequired("permission denied (test)")
    with pytest.raises(RestartRequired):
        keys.maintain(600)


def test_a_renewed_quote_that_fails_the_check_is_a_failed_renewal_with_backoff() -> None:
    """A check no new quote can pass (a revoked PCK) must not re-attest on every tick: the new quote is
    checked before it becomes current, and its failure backs off like any failed renewal."""
    quotes = FakeQuotes()
    failing = [False]

    def check(quote: bytes, now: float) -> None:
        if failing[0]:
            raise QuoteSignatureInvalid("PCK revoked (test)")

    keys = AttestedKeys(quotes, DIGEST, lifetime=1000, check=check)
    first = keys.attest(0)
    failing[0] = True
    assert not keys.maintain(10)  # the current quote fails, and so does the renewed one
    assert keys.current(10).attestation_id == first.attestation_id  # the current one stays
    assert len(quotes.calls) == 2
    assert not keys.maintain(10.5)  # within the 1 s backoff: no new quote
    assert len(quotes.calls) == 2
    assert not keys.maintain(11)  # next try, fails again: backoff doubles to 2 s
    assert not keys.maintain(12.5) and len(quotes.calls) == 3


# --- the provider's answers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("platform"))


@pytest.fixture(scope="module")
def provider(sim: SimPlatform) -> Provider:
    return make_provider(sim)


def test_v1_answers_are_signed_by_the_attested_key_without_a_quote(
    provider: Provider, sim: SimPlatform
) -> None:
    doc = AttestationDocument.from_json(provider.attestation())
    quote = parse_quote(doc.quote)
    assert quote.enclave_report.report_data == doc.statement.report_data()
    assert quote.enclave_report.mrenclave == provider.identity.mrenclave
    assert doc.statement.policy_digest == provider.policy_digest and doc.statement.tls_spki_sha256 == b""
    before = provider.quote_stats.count
    td = Td(sim)
    td_quote = td.quote()
    resp = provider.handle(KeyRequest(quote=td_quote, key_name="app/x"))
    assert provider.quote_stats.count == before  # no quote for a signed answer
    assert (
        resp.evidence == "signature"
        and resp.provider_quote == b""
        and resp.attestation_id == doc.attestation_id
    )
    ctx = RequestContext.for_quote(
        td_quote,
        scheme=resp.scheme,
        key_name="app/x",
        key_version=resp.key_version,
        policy_digest=provider.policy_digest,
        measurements=resp.measurements,
        tcb_status=resp.tcb_status,
        advisory_ids=resp.advisory_ids,
        dev_mode=False,
    )
    binding = report_data_v1(resp.encrypted_key, ctx)
    assert resp.binding == binding
    verify_signature(doc.statement, resp.signature, binding)
    # A per-request quote on request, and always for the legacy protocol: one quote each.
    quoted = provider.handle(KeyRequest(quote=Td(sim).quote(), evidence="quote"))
    assert quoted.evidence == "quote" and not quoted.signature and provider.quote_stats.count == before + 1
    legacy = provider.handle(KeyRequest(quote=Td(sim).quote(), legacy=True))
    assert legacy.evidence == "quote" and provider.quote_stats.count == before + 2
    with pytest.raises(BadRequest):
        provider.handle(KeyRequest(quote=Td(sim).quote(), evidence="ratls"))


def test_provider_start_up_quotes_are_counted(sim: SimPlatform) -> None:
    p = make_provider(sim)
    assert p.quote_stats.count == 2  # its identity (over a nonce) and its attested key
    assert p.readiness() == {"attestation": "ok", "collateral": "ok"}
    assert not p.maintain()  # not due at the same instant
    assert p.attested.current(NOW).statement.not_after == NOW + 24 * 3600


def test_private_keys_never_appear_in_logs_or_reprs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    quotes = FakeQuotes()
    keys = AttestedKeys(quotes, DIGEST, lifetime=1000, tls_factory=make_ratls_identity)
    attestation = keys.attest(0)
    keys.sign(b"\x01" * 64, 1)
    quotes.error = PlatformError("down (test)")
    keys.maintain(600)
    signing = attestation._signing_key.private_bytes_raw()
    tls = attestation.tls
    assert isinstance(tls, RaTlsIdentity)
    tls_secret = tls._key.private_numbers().private_value.to_bytes(48, "big")
    texts = [caplog.text, repr(attestation), repr(tls), repr(attestation.document), str(keys.current(1))]
    for secret in (signing, tls_secret):
        for text in texts:
            assert secret.hex() not in text and base64.b64encode(secret).decode() not in text
    assert attestation.statement.tls_spki_sha256 == tls.spki_sha256
