"""The command line's exit contract, for every subcommand.

A failed check: exit 1 and exactly one line on stderr, ``CODE: message``. A usage error: exit 2, one
line naming the bad flag or value, then one line pointing to ``--help`` (never the usage dump). A
misspelled flag is named as unknown, with the closest known flag, even when a required flag is missing.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from sealing_key_provider.cli import main
from sealing_key_provider.sim import SimPlatform

ROOT = Path(__file__).resolve().parent.parent
CASE = ROOT / "tests" / "data" / "dcap" / "tdx-v4-phala-1"
CODE_LINE = re.compile(r"([A-Z][A-Z0-9_]+): \S.*")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("contract") / "state")


def _failures(sim: SimPlatform, tmp: Path) -> list[tuple[list[str], str]]:
    """(argv, expected code) for a failing check of every subcommand."""
    garbage = tmp / "garbage.bin"
    garbage.write_bytes(b"\x04\x00\x02\x00" + bytes(20))
    other_root = SimPlatform.init(tmp / "other").root_ca_pem_path
    dead = f"http://127.0.0.1:{_closed_port()}"
    sim_td = ["--quote-source", "sim", "--sim-state-dir", str(sim.state_dir)]
    missing_state = str(tmp / "no-state")
    bad_toml = tmp / "bad.toml"
    bad_toml.write_text("[server]\nio_timout = 1\n")
    return [
        (["quote", "inspect", str(garbage)], "QUOTE_MALFORMED"),
        (["quote", "verify", str(CASE / "quote.bin"), "--collateral", str(CASE / "collateral.json")], "*"),
        (
            [
                "quote",
                "verify",
                str(CASE / "quote.bin"),
                "--collateral",
                str(CASE / "collateral.json"),
                "--trust-anchor",
                str(other_root),
                "--at",
                "1750000000",
            ],
            "PCK_CHAIN_INVALID",
        ),
        (
            ["quote", "verify", str(CASE / "quote.bin"), "--pccs-url", dead, "--timeout", "2"],
            "COLLATERAL_UNAVAILABLE",
        ),
        (
            [
                "collateral",
                "fetch",
                str(CASE / "quote.bin"),
                "--pccs-url",
                dead,
                "--out",
                str(tmp / "c.json"),
                "--timeout",
                "2",
            ],
            "COLLATERAL_UNAVAILABLE",
        ),
        (
            ["sim", "quote", "--tee", "tdx", "--state-dir", missing_state, "--out", str(tmp / "q")],
            "SIM_STATE_NOT_FOUND",
        ),
        (
            ["sim", "collateral", "--tee", "tdx", "--state-dir", missing_state, "--out", str(tmp / "c")],
            "SIM_STATE_NOT_FOUND",
        ),
        (["sim", "pccs", "--state-dir", missing_state, "--listen", "127.0.0.1:0"], "SIM_STATE_NOT_FOUND"),
        (["serve", "--platform", "sim", "--config", str(bad_toml)], "CONFIG_INVALID"),
        (["serve", "--platform", "sim", "--config", str(tmp / "absent.toml")], "CONFIG_INVALID"),
        (
            [
                "get-key",
                "--provider",
                dead,
                "--expect-mrenclave",
                "00" * 32,
                "--collateral",
                str(CASE / "collateral.json"),
                "--timeout",
                "2",
                "--hex",
                "--trust-anchor",
                str(sim.root_ca_pem_path),
                *sim_td,
            ],
            "TRANSPORT_ERROR",
        ),
        (
            [
                "get-key",
                "--provider",
                dead,
                "--expect-mrenclave",
                "00" * 32,
                "--collateral",
                str(CASE / "collateral.json"),
                "--hex",
                *sim_td,
            ],
            "TD_QUOTE_INVALID",
        ),
        (
            [
                "get-key",
                "--provider",
                dead,
                "--expect-mrenclave",
                "00" * 32,
                "--quote-source",
                "sim",
                "--sim-state-dir",
                missing_state,
                "--collateral",
                str(CASE / "collateral.json"),
                "--hex",
            ],
            "SIM_STATE_NOT_FOUND",
        ),
    ]


def test_every_failed_check_is_one_line_starting_with_its_code(
    sim: SimPlatform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, expected in _failures(sim, tmp_path):
        code = main(argv)
        _out, err = capsys.readouterr()
        lines = err.splitlines()
        assert code == 1, (argv, err)
        assert len(lines) == 1, (argv, err)
        match = CODE_LINE.fullmatch(lines[0])
        assert match is not None, (argv, err)
        assert expected == "*" or match.group(1) == expected, (argv, err)


def test_a_chain_to_another_root_names_both_roots_and_the_flag(
    sim: SimPlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    """The simulator's TD quote against the default (Intel) root, and Intel's quote against the simulator's."""
    td = ["--quote-source", "sim", "--sim-state-dir", str(sim.state_dir), "--hex"]
    for argv in (
        [
            "get-key",
            "--provider",
            f"http://127.0.0.1:{_closed_port()}",
            "--expect-mrenclave",
            "00" * 32,
            *td,
            "--collateral",
            str(CASE / "collateral.json"),
        ],
        [
            "quote",
            "verify",
            str(CASE / "quote.bin"),
            "--collateral",
            str(CASE / "collateral.json"),
            "--trust-anchor",
            str(sim.root_ca_pem_path),
        ],
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "Simulated Intel SGX Root CA" in err and "CN=Intel SGX Root CA" in err, err
        assert "not the trusted root" in err and "--trust-anchor PEM trusts another root" in err, err


def test_json_output_carries_the_same_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(10))
    assert main(["quote", "inspect", str(garbage), "--json"]) == 1
    out, err = capsys.readouterr()
    code = json.loads(out)["error"]["code"]
    assert err.startswith(f"{code}: ") and len(err.splitlines()) == 1


def _usages(tmp: Path) -> list[tuple[list[str], str]]:
    """(argv, what the one line must say) for usage errors of every subcommand."""
    quote = str(CASE / "quote.bin")
    return [
        (["quote", "inspect", quote, "--jsno"], "unknown flag --jsno (did you mean --json?)"),
        (
            ["quote", "verify", quote, "--pccs-url", "ftp://pccs"],
            "argument --pccs-url: PCCS URL must be http(s)",
        ),
        (["quote", "inspect", str(tmp / "absent.bin")], "cannot read quote"),
        (
            ["collateral", "fetch", quote, "--pccs-ulr", "http://x", "--out", "x"],
            "unknown flag --pccs-ulr (did you mean --pccs-url?)",
        ),
        (
            ["collateral", "fetch", quote, "--pccs-url", "pccs:8081", "--out", "x"],
            "argument --pccs-url: PCCS URL must be",
        ),
        (["sim", "init", "--fmspc", "0011"], "argument --fmspc"),
        (["sim", "quote", "--tee", "sev", "--out", "x"], "argument --tee: invalid choice"),
        (["serve", "--http-lisen", "127.0.0.1:0"], "unknown flag --http-lisen (did you mean --http-listen?)"),
        (["get-key", "--provder", "http://127.0.0.1:1"], "unknown flag --provder (did you mean --provider?)"),
        (["get-key", "--provider", "http://127.0.0.1:1", "--pccs-url", "ftp://x"], "argument --pccs-url"),
        (["get-key"], "the following arguments are required: --provider"),
        (["demo", "--workdri", "x"], "unknown flag --workdri (did you mean --workdir?)"),
        (["get-kye"], "unknown command 'get-kye' (did you mean get-key?)"),
    ]


def test_every_usage_error_is_one_line_and_a_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, says in _usages(tmp_path):
        code = main(argv)
        out, err = capsys.readouterr()
        lines = err.splitlines()
        assert code == 2, (argv, err)
        assert out == "" and len(lines) == 2, (argv, err)
        assert "error: " in lines[0] and says in lines[0], (argv, err)
        assert re.fullmatch(r"Try 'sealing-key-provider( [a-z-]+)* --help' for the options\.", lines[1]), (
            argv,
            err,
        )
