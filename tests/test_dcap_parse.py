"""Quote parser: exact offsets, strict length handling, and typed errors for every malformed input."""

from __future__ import annotations

import struct

import pytest

from sealing_key_provider.dcap import BodyType, TeeType, parse_quote
from sealing_key_provider.dcap.abi import MAX_QUOTE_SIZE
from sealing_key_provider.errors import QuoteMalformed, UnsupportedQuote

from .corpus import case

V4 = case("tdx-v4-phala-1").quote
V5 = case("tdx-v5-gotdx-1").quote
V3 = case("sgx-v3-phala-1").quote


def test_v4_fields_at_intel_offsets() -> None:
    q = parse_quote(V4)
    assert q.header.version == 4 and q.header.tee_type == TeeType.TDX and q.body_type == BodyType.TD10
    td = q.td_report
    assert td.mrtd == V4[184:232]
    assert td.rtmr0 == V4[376:424] and td.rtmr3 == V4[520:568]
    assert td.report_data == V4[568:632]
    assert q.signed_data == V4[:632]
    assert q.signature == V4[636:700]
    assert q.qe_report.raw == V4[770:1154]
    assert q.header.qe_id == V4[28:44]


def test_v5_fields_at_intel_offsets() -> None:
    q = parse_quote(V5)
    assert q.header.version == 5 and q.body_type == BodyType.TD15
    td = q.td_report
    assert td.mrtd == V5[190:238] and td.report_data == V5[574:638]
    assert td.tee_tcb_svn2 == V5[638:654] and td.mrservicetd == V5[654:702]
    assert q.signed_data == V5[:702]


def test_v3_fields_at_intel_offsets() -> None:
    q = parse_quote(V3)
    r = q.enclave_report
    assert r.mrenclave == V3[112:144] and r.mrsigner == V3[176:208] and r.report_data == V3[368:432]
    assert q.signed_data == V3[:432]
    with pytest.raises(UnsupportedQuote):
        _ = q.td_report


def test_trailing_bytes_are_ignored() -> None:
    q = parse_quote(V4 + b"\x00" * 100 + b"junk")
    assert q.size == parse_quote(V4).size


@pytest.mark.parametrize("cut", [0, 10, 47, 48, 200, 631, 633, 700, 1000, 1300, 4000])
def test_truncation_is_malformed(cut: int) -> None:
    with pytest.raises(QuoteMalformed):
        parse_quote(V4[:cut])


def test_every_truncation_of_the_signed_quote_is_rejected() -> None:
    size = parse_quote(V4).size
    for cut in range(0, size, 7):
        with pytest.raises((QuoteMalformed, UnsupportedQuote)):
            parse_quote(V4[:cut])


def test_oversized_input_is_refused_before_parsing() -> None:
    with pytest.raises(QuoteMalformed, match="limit"):
        parse_quote(V4 + bytes(MAX_QUOTE_SIZE))


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


@pytest.mark.parametrize(
    ("offset", "fmt", "value"),
    [(0, "<H", 2), (0, "<H", 6), (2, "<H", 3), (4, "<I", 0x82)],
    ids=["version2", "version6", "p384", "tee"],
)
def test_unsupported_header_values(offset: int, fmt: str, value: int) -> None:
    with pytest.raises(UnsupportedQuote):
        parse_quote(_patch(V4, offset, fmt, value))


def test_foreign_vendor_id_is_unsupported() -> None:
    bad = bytearray(V4)
    bad[12] ^= 0xFF
    with pytest.raises(UnsupportedQuote, match="vendor"):
        parse_quote(bytes(bad))


def test_v3_must_be_sgx() -> None:
    with pytest.raises(UnsupportedQuote):
        parse_quote(_patch(V3, 4, "<I", 0x81))


def test_signature_length_beyond_input_is_malformed() -> None:
    with pytest.raises(QuoteMalformed):
        parse_quote(_patch(V4, 632, "<I", 0xFFFFFFFF))


def test_signature_length_with_extra_bytes_is_malformed() -> None:
    # Claim 10 more bytes of signature data than the certification data accounts for.
    sig_len = struct.unpack_from("<I", V4, 632)[0]
    with pytest.raises(QuoteMalformed):
        parse_quote(_patch(V4, 632, "<I", sig_len + 10))


def test_outer_certification_type_must_be_6() -> None:
    with pytest.raises(UnsupportedQuote):
        parse_quote(_patch(V4, 764, "<H", 5))


def test_nested_certification_type_must_be_5() -> None:
    with pytest.raises(UnsupportedQuote):
        parse_quote(_patch(V4, 1252, "<H", 4))


def test_v5_body_size_must_match_type() -> None:
    with pytest.raises(QuoteMalformed):
        parse_quote(_patch(V5, 50, "<I", 584))


def test_v5_body_type_must_match_tee() -> None:
    with pytest.raises(QuoteMalformed):
        parse_quote(_patch(V5, 48, "<H", 1))


def test_v5_unknown_body_type() -> None:
    with pytest.raises(UnsupportedQuote):
        parse_quote(_patch(V5, 48, "<H", 4))


def test_non_bytes_input_is_malformed() -> None:
    with pytest.raises(QuoteMalformed):
        parse_quote("not bytes")  # type: ignore[arg-type]
