"""``quote inspect`` and ``quote verify``: output, JSON shape and exit codes (0 ok, 1 failed, 2 usage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sealing_key_provider.cli import main

from .corpus import CORPUS, case
from .x509_helpers import self_signed


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse usage errors
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_json_lists_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "quote", "inspect", str(CORPUS / "tdx-v5-gotdx-1" / "quote.bin"), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["header"]["version"] == 5
    assert info["body_type"] == "TD15"
    assert info["body"]["mrtd"] == case("tdx-v5-gotdx-1").meta["measurements"]["mrtd"]
    assert info["pck"]["fmspc"] == "90C06F000000"
    assert info["pck"]["ca_type"] == "platform"
    assert len(info["pck"]["tcb_components"]) == 16
    assert "mrsigner" in info["qe_report"]


def test_inspect_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "quote", "inspect", str(CORPUS / "sgx-v3-phala-1" / "quote.bin"))
    assert code == 0
    assert "mrenclave: 33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb" in out


def test_inspect_garbage_fails_with_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "q.bin"
    f.write_bytes(b"\x04\x00" + bytes(20))
    code, out, _ = _run(capsys, "quote", "inspect", str(f), "--json")
    assert code == 1
    assert json.loads(out)["error"]["code"] == "QUOTE_MALFORMED"


def test_verify_ok_json(capsys: pytest.CaptureFixture[str]) -> None:
    c = case("tdx-v4-dcaprs-1")
    d = CORPUS / c.name
    code, out, _ = _run(
        capsys,
        "quote",
        "verify",
        str(d / "quote.bin"),
        "--collateral",
        str(d / "collateral.json"),
        "--at",
        str(c.now),
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    assert result["ok"] is True
    assert result["status"] == "OutOfDate"
    assert result["advisory_ids"] == ["INTEL-SA-00960", "INTEL-SA-00982", "INTEL-SA-00986"]


def test_verify_failure_json_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    d = CORPUS / "negative" / "tdx-qe-report-flip"
    code, out, _ = _run(
        capsys,
        "quote",
        "verify",
        str(d / "quote.bin"),
        "--collateral",
        str(d / "collateral.json"),
        "--at",
        "1750332747",
        "--json",
    )
    assert code == 1
    assert json.loads(out) == {
        "ok": False,
        "error": {"code": "QE_REPORT_SIGNATURE_INVALID", "message": json.loads(out)["error"]["message"]},
    }


def test_verify_default_time_is_now_and_fails_closed(capsys: pytest.CaptureFixture[str]) -> None:
    d = CORPUS / "tdx-v4-phala-1"
    code, _, err = _run(
        capsys, "quote", "verify", str(d / "quote.bin"), "--collateral", str(d / "collateral.json")
    )
    assert code == 1
    assert "COLLATERAL_EXPIRED" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["quote", "verify", "missing.bin", "--collateral", "missing.json"],
        ["quote", "verify", str(CORPUS / "tdx-v4-phala-1" / "quote.bin")],
        [
            "quote",
            "verify",
            str(CORPUS / "tdx-v4-phala-1" / "quote.bin"),
            "--collateral",
            "x",
            "--at",
            "soon",
        ],
        ["quote"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = _run(capsys, *argv)
    assert code == 2


def test_collateral_and_pccs_url_are_exactly_one_of_two(capsys: pytest.CaptureFixture[str]) -> None:
    d = CORPUS / "tdx-v4-phala-1"
    quote, collateral = str(d / "quote.bin"), str(d / "collateral.json")
    argv = ["quote", "verify", quote, "--collateral", collateral, "--pccs-url", "http://127.0.0.1:1"]
    code, out, err = _run(capsys, *argv, "--json")
    assert (code, out) == (2, "")
    assert "argument --pccs-url: not allowed with argument --collateral" in err
    code, out, err = _run(capsys, "quote", "verify", quote, "--json")
    assert (code, out) == (2, "")
    assert "one of the arguments --collateral --pccs-url is required" in err
    _, out, _ = _run(capsys, "quote", "verify", "--help")
    assert "(--collateral FILE | --pccs-url URL)" in " ".join(out.split())


def _self_signed(tmp_path: Path, curve: ec.EllipticCurve) -> Path:
    cert = self_signed(
        "not the Intel root",
        (x509.BasicConstraints(ca=True, path_length=None), True),
        curve=curve,
        algorithm=hashes.SHA384(),
    )
    path = tmp_path / "anchor.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_unusable_input_files_are_usage_errors_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = CORPUS / "tdx-v4-phala-1"
    quote, collateral = str(d / "quote.bin"), str(d / "collateral.json")
    verify = ["quote", "verify"]
    p384 = str(_self_signed(tmp_path, ec.SECP384R1()))
    cases = [
        (
            [*verify, "/nope.bin", "--collateral", collateral],
            "cannot read quote /nope.bin: No such file or directory",
        ),
        (
            [*verify, quote, "--collateral", "/nope.json"],
            "cannot read collateral /nope.json: No such file or directory",
        ),
        (
            [*verify, quote, "--collateral", str(tmp_path)],
            f"cannot read collateral {tmp_path}: Is a directory",
        ),
        (
            [*verify, quote, "--collateral", collateral, "--trust-anchor", "/nope.pem"],
            "cannot read trust anchor /nope.pem: No such file or directory",
        ),
        (
            [*verify, quote, "--collateral", collateral, "--trust-anchor", collateral],
            f"trust anchor {collateral} is not a usable root CA certificate: trust anchor is not a PEM or DER certificate",
        ),
        (
            [*verify, quote, "--collateral", collateral, "--trust-anchor", p384],
            f"trust anchor {p384} is not a usable root CA certificate: trust anchor key is not ECDSA P-256",
        ),
        (["quote", "inspect", "/nope.bin"], "cannot read quote /nope.bin: No such file or directory"),
    ]
    for argv, message in cases:
        code, out, err = _run(capsys, *argv, "--json")
        assert (code, out) == (2, ""), argv
        prog = "sealing-key-provider " + " ".join(argv[:2])
        assert err == f"{prog}: error: {message}\nTry '{prog} --help' for the options.\n"


def test_a_p256_trust_anchor_file_is_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = case("tdx-v4-dcaprs-1")
    d = CORPUS / c.name
    anchor = str(_self_signed(tmp_path, ec.SECP256R1()))
    argv = ["quote", "verify", str(d / "quote.bin"), "--collateral", str(d / "collateral.json")]
    code, out, _ = _run(capsys, *argv, "--at", str(c.now), "--trust-anchor", anchor, "--json")
    # Read and accepted as the root; Intel's chain does not end in it, so the quote does not verify.
    assert code == 1
    assert json.loads(out)["error"]["code"] == "PCK_CHAIN_INVALID"
