"""``sealing-key-provider sim ...``: exit codes, output files, and that its outputs verify."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from sealing_key_provider.cli import build_parser, main
from sealing_key_provider.dcap import abi
from sealing_key_provider.dcap.collateral import Collateral
from sealing_key_provider.dcap.verify import Verifier
from sealing_key_provider.errors import ProviderError
from sealing_key_provider.sim import SimPlatform

NOW = 1_780_000_000


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sim-cli") / "state"
    assert main(["sim", "init", "--state-dir", str(d)]) == 0
    return d


def test_init_prints_identity_and_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "s"
    assert main(["sim", "init", "--state-dir", str(d), "--fmspc", "00806f050000"]) == 0
    first = capsys.readouterr().out
    p = SimPlatform.load(d)
    assert p.ppid.hex() in first and "00806F050000" in first and p.qe_id.hex() in first
    assert str(d / "root-ca.pem") in first
    assert main(["sim", "init", "--state-dir", str(d)]) == 0
    assert capsys.readouterr().out == first
    # A contradicting option is refused, not silently ignored.
    assert main(["sim", "init", "--state-dir", str(d), "--fmspc", "90C06F000000"]) == 1
    assert "SIM_STATE_INVALID" in capsys.readouterr().err


def test_quote_and_collateral_verify_end_to_end(state: Path, tmp_path: Path) -> None:
    p = SimPlatform.load(state)
    v = Verifier(trust_anchor=x509.load_pem_x509_certificate((state / "root-ca.pem").read_bytes()))
    mrtd, rtmr2 = "ab" * 48, "cd" * 48
    cases = {
        "tdx4": ["--tee", "tdx", "--mrtd", mrtd, "--rtmr2", rtmr2, "--report-data", "0102"],
        "tdx5": ["--tee", "tdx", "--version", "5", "--mrtd", mrtd, "--rtmr2", rtmr2, "--report-data", "0102"],
        "tdx5-td10": [
            "--tee",
            "tdx",
            "--version",
            "5",
            "--body",
            "td10",
            "--mrtd",
            mrtd,
            "--report-data",
            "0102",
        ],
        "sgx": ["--tee", "sgx", "--mrenclave", "11" * 32, "--mrsigner", "22" * 32, "--isvsvn", "3"],
    }
    for tee in ("tdx", "sgx"):
        out = tmp_path / f"{tee}.json"
        assert (
            main(
                [
                    "sim",
                    "collateral",
                    "--tee",
                    tee,
                    "--at",
                    str(NOW),
                    "--state-dir",
                    str(state),
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    for name, args in cases.items():
        out = tmp_path / f"{name}.bin"
        assert main(["sim", "quote", *args, "--state-dir", str(state), "--out", str(out)]) == 0, name
        data = out.read_bytes()
        q = abi.parse_quote(data)
        tee = "sgx" if name == "sgx" else "tdx"
        collateral = Collateral.from_json((tmp_path / f"{tee}.json").read_text())
        r = v.verify(data, collateral, NOW)
        assert r.status == "UpToDate" and r.pck.ppid == p.ppid
        if tee == "tdx":
            assert q.td_report.mrtd == bytes.fromhex(mrtd)
            assert q.report_data == b"\x01\x02" + bytes(62)
            if name != "tdx5-td10":
                assert q.td_report.rtmr2 == bytes.fromhex(rtmr2)
            assert q.header.version == (4 if name == "tdx4" else 5)
        else:
            e = q.enclave_report
            assert (e.mrenclave, e.mrsigner, e.isvsvn) == (b"\x11" * 32, b"\x22" * 32, 3)


def test_debug_and_scenarios(state: Path, tmp_path: Path) -> None:
    v = Verifier(trust_anchor=SimPlatform.load(state).root_certificate)
    quote, coll = tmp_path / "q.bin", tmp_path / "c.json"
    assert (
        main(["sim", "quote", "--tee", "tdx", "--debug", "--state-dir", str(state), "--out", str(quote)]) == 0
    )
    base = [
        "sim",
        "collateral",
        "--tee",
        "tdx",
        "--at",
        str(NOW),
        "--state-dir",
        str(state),
        "--out",
        str(coll),
    ]
    assert main([*base, "--scenario", "out-of-date"]) == 0
    r = v.verify(quote.read_bytes(), Collateral.from_json(coll.read_text()), NOW)
    assert r.status == "OutOfDate" and r.quote.td_report.debug
    assert main([*base, "--scenario", "revoked-pck"]) == 0
    with pytest.raises(ProviderError) as e:
        v.verify(quote.read_bytes(), Collateral.from_json(coll.read_text()), NOW)
    assert e.value.code == "PCK_REVOKED"


@pytest.mark.parametrize(
    "args",
    [
        ["quote", "--tee", "sgx"],  # SGX needs --mrenclave and --mrsigner
        ["quote", "--tee", "tdx", "--mrenclave", "11" * 32],
        ["quote", "--tee", "sgx", "--mrenclave", "11" * 32, "--mrsigner", "22" * 32, "--mrtd", "00" * 48],
        ["quote", "--tee", "tdx", "--version", "3"],
        ["quote", "--tee", "sgx", "--mrenclave", "11" * 32, "--mrsigner", "22" * 32, "--version", "4"],
        ["quote", "--tee", "tdx", "--body", "td15"],
        ["collateral", "--tee", "sgx", "--scenario", "tdx-module-out-of-date"],
    ],
)
def test_usage_errors_exit_2(
    state: Path, tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sim", *args, "--state-dir", str(state), "--out", str(tmp_path / "x")]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_sgx_quote_says_mrenclave_and_mrsigner_are_required(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sim", "quote", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--mrenclave HEX 32 bytes (SGX; required with --tee sgx)" in help_text
    assert "--mrsigner HEX 32 bytes (SGX; required with --tee sgx)" in help_text
    out = tmp_path / "q.bin"
    base = ["sim", "quote", "--tee", "sgx", "--state-dir", str(state), "--out", str(out)]
    for given, missing in (
        ([], "--mrenclave and --mrsigner"),
        (["--mrenclave", "11" * 32], "--mrsigner"),
        (["--mrsigner", "22" * 32], "--mrenclave"),
    ):
        assert main([*base, *given]) == 2
        assert capsys.readouterr().err == (
            "sealing-key-provider sim quote: error: --tee sgx requires --mrenclave and --mrsigner "
            f"(missing {missing})\nTry 'sealing-key-provider sim quote --help' for the options.\n"
        )
        assert not out.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["quote", "--tee", "tdx", "--mrtd", "zz"],
        ["quote", "--tee", "tdx", "--mrtd", "00" * 47],
        ["quote", "--tee", "tdx", "--report-data", "00" * 65],
        ["quote", "--tee", "tdx"],  # no --out
        ["collateral", "--tee", "tdx", "--scenario", "nonsense", "--out", "x"],
        ["init", "--fmspc", "0011"],
        ["quote", "--tee", "sev", "--out", "x"],
    ],
)
def test_argparse_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", *args]) == 2
    assert "error" in capsys.readouterr().err


def test_missing_state_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in (["quote", "--tee", "tdx"], ["collateral", "--tee", "tdx"]):
        assert main(["sim", *cmd, "--state-dir", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 1
        assert "SIM_STATE_NOT_FOUND" in capsys.readouterr().err


def test_pccs_subcommand_is_plugged_in() -> None:
    args = build_parser().parse_args(["sim", "pccs", "--state-dir", "/nonexistent"])
    assert callable(args.handler)
