"""Report data binding: frozen layouts shared by provider and client."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealing_key_provider.binding import (
    REQUEST_CONTEXT_LABEL,
    RequestContext,
    encode_fields,
    report_data_legacy,
    report_data_v1,
    u32be,
    verify_report_data_legacy,
    verify_report_data_v1,
)
from sealing_key_provider.errors import ResponseBindingInvalid


def ctx(**changes: object) -> RequestContext:
    base: dict[str, object] = {
        "td_quote_sha256": hashlib.sha256(b"quote").digest(),
        "scheme": "hkdf-sha256-v1",
        "key_name": "app/db",
        "key_version": 3,
        "policy_digest": bytes(32),
        "measurements": ("mrtd", "rtmr0"),
        "tcb_status": "UpToDate",
        "advisory_ids": ("INTEL-SA-00615",),
        "dev_mode": False,
    }
    base.update(changes)
    return RequestContext(**base)  # type: ignore[arg-type]


def test_legacy_layout_matches_original() -> None:
    ek = bytes(range(80))
    rd = report_data_legacy(ek)
    assert rd == hashlib.sha256(ek).digest() + bytes(32)
    assert report_data_legacy(bytes(80)).hex() == (
        "5b6fb58e61fa475939767d68a446f97f1bff02c0e5935a3ea8bb51e6515783d8" + "00" * 32
    )


def test_request_context_frozen_encoding() -> None:
    c = ctx()
    assert c.encode().hex() == (
        "0000000a"
        "0000002f" + REQUEST_CONTEXT_LABEL.hex() + "00000020"
        "6327245c3a45d3d9ea72b70fbb671926e7b80f63d311bfd73dde876d5df02b26"
        "0000000e" + b"hkdf-sha256-v1".hex() + "00000006" + b"app/db".hex() + "00000004"
        "00000003"
        "00000020" + "00" * 32 + "00000015"
        "00000002"
        + "00000004"
        + b"mrtd".hex()
        + "00000005"
        + b"rtmr0".hex()
        + "00000008"
        + b"UpToDate".hex()
        + "00000016"
        + "00000001"
        + "0000000e"
        + b"INTEL-SA-00615".hex()
        + "00000001"
        + "00"
    )
    assert c.digest().hex() == "25e0ca6e80db5eebc7069cfc7ea770f58d59b17ec6b48f862cca5b8038120102"
    assert report_data_v1(bytes(80), c).hex() == (
        "5b6fb58e61fa475939767d68a446f97f1bff02c0e5935a3ea8bb51e6515783d8"
        "25e0ca6e80db5eebc7069cfc7ea770f58d59b17ec6b48f862cca5b8038120102"
    )


def test_for_quote_hashes_the_quote() -> None:
    c = RequestContext.for_quote(
        b"quote",
        scheme="hkdf-sha256-v1",
        key_name="app/db",
        key_version=3,
        policy_digest=bytes(32),
        measurements=("mrtd", "rtmr0"),
        tcb_status="UpToDate",
        advisory_ids=("INTEL-SA-00615",),
        dev_mode=False,
    )
    assert c == ctx()


@pytest.mark.parametrize(
    "change",
    [
        {"td_quote_sha256": hashlib.sha256(b"other").digest()},
        {"scheme": "legacy-sha256"},
        {"key_name": "app/dc"},
        {"key_version": 4},
        {"policy_digest": b"\x01" * 32},
        {"measurements": ("mrtd", "rtmr0", "rtmr1")},
        {"measurements": ("mrtd",)},
        {"tcb_status": "SWHardeningNeeded"},
        {"advisory_ids": ()},
        {"advisory_ids": ("INTEL-SA-00615", "INTEL-SA-00289")},
        {"dev_mode": True},
    ],
)
def test_every_field_is_bound(change: dict[str, object]) -> None:
    assert ctx(**change).digest() != ctx().digest()


@pytest.mark.parametrize(
    "bad",
    [
        {"td_quote_sha256": b"short"},
        {"policy_digest": bytes(31)},
        {"key_version": -1},
        {"key_version": 2**32},
    ],
)
def test_context_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ctx(**bad)


def test_verify_v1() -> None:
    ek = b"\x07" * 80
    rd = report_data_v1(ek, ctx())
    verify_report_data_v1(rd, ek, ctx())
    with pytest.raises(ResponseBindingInvalid, match="encrypted key"):
        verify_report_data_v1(rd, b"\x08" * 80, ctx())
    with pytest.raises(ResponseBindingInvalid, match="request"):
        verify_report_data_v1(rd, ek, ctx(key_version=9))
    with pytest.raises(ResponseBindingInvalid):
        verify_report_data_v1(rd[:63], ek, ctx())


def test_verify_legacy() -> None:
    ek = b"\x07" * 80
    verify_report_data_legacy(report_data_legacy(ek), ek)
    with pytest.raises(ResponseBindingInvalid):
        verify_report_data_legacy(report_data_v1(ek, ctx()), ek)
    with pytest.raises(ResponseBindingInvalid):
        verify_report_data_legacy(b"", ek)


_FIELDS = st.lists(st.binary(max_size=6), max_size=5).map(tuple)


@given(_FIELDS, _FIELDS)
def test_encode_fields_injective(a: tuple[bytes, ...], b: tuple[bytes, ...]) -> None:
    if a != b:
        assert encode_fields(*a) != encode_fields(*b)


@given(st.text(max_size=8), st.text(max_size=8), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_context_injective(n1: str, n2: str, v1: int, v2: int) -> None:
    if (n1, v1) != (n2, v2):
        assert ctx(key_name=n1, key_version=v1).encode() != ctx(key_name=n2, key_version=v2).encode()


def test_u32be_bounds() -> None:
    assert u32be(0) == bytes(4)
    assert u32be(2**32 - 1) == b"\xff" * 4
    for bad in (-1, 2**32):
        with pytest.raises(ValueError):
            u32be(bad)
