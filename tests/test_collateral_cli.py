"""End to end: ``collateral fetch``, ``quote verify --pccs-url`` and ``sim pccs`` (a real process)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sealing_key_provider.cli import main
from sealing_key_provider.cli.sim import _SimFactory
from sealing_key_provider.collateral import FileSource, PccsClient, collateral_next_update, for_quote
from sealing_key_provider.dcap.abi import parse_quote
from sealing_key_provider.dcap.collateral import Collateral
from sealing_key_provider.dcap.verify import Verifier
from sealing_key_provider.errors import ProviderError
from sealing_key_provider.sim import SgxEnclaveIdentity, SimPlatform
from sealing_key_provider.sim.pccs_server import PccsServer, RegeneratingCatalog, StaticCatalog

CORPUS = Path(__file__).resolve().parent / "data" / "dcap"


def _case(name: str, group: str = "cases") -> dict[str, Any]:
    index = CORPUS / "INDEX.json"
    if not index.is_file():
        pytest.fail(f"DCAP corpus not found at {CORPUS} (expected tests/data/dcap in the repository)")
    for case in json.loads(index.read_text())[group]:
        if case["name"] == name:
            result: dict[str, Any] = case
            return result
    pytest.fail(f"corpus case {name} missing from INDEX.json")


def _path(case: dict[str, Any], what: str) -> Path:
    return CORPUS / str(case["files"][what])


@pytest.fixture
def corpus_server() -> Iterator[dict[str, str]]:
    """One PCCS per corpus case used here, keyed by case name."""
    servers = {
        name: PccsServer(StaticCatalog.from_file(_path(_case(name, group), "collateral")))
        for name, group in [
            ("tdx-v4-phala-1", "cases"),
            ("sgx-v3-phala-1", "cases"),
            ("tdx-tcbinfo-altered", "negative"),
        ]
    }
    for s in servers.values():
        s.start()
    yield {name: s.url for name, s in servers.items()}
    for s in servers.values():
        s.stop()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_collateral_fetch_writes_the_served_collateral(
    corpus_server: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = _case("tdx-v4-phala-1")
    out = tmp_path / "collateral.json"
    argv = ["collateral", "fetch", str(_path(case, "quote")), "--pccs-url", corpus_server[case["name"]]]
    assert main([*argv, "--out", str(out), "--timeout", "5"]) == 0
    served = Collateral.from_json(_path(case, "collateral").read_text())
    assert Collateral.from_json(out.read_text()) == served
    assert out.read_text() == served.to_json()
    assert "tdx/B0C06F000000/platform" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*.tmp"))

    # The file is what `quote verify --collateral` takes.
    rc = main(["quote", "verify", str(_path(case, "quote")), "--collateral", str(out), "--json"])
    assert rc == 1  # fail closed: today is long past this collateral's nextUpdate
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "COLLATERAL_EXPIRED"
    at = str(case["verify_unix_time"])
    rc = main(["quote", "verify", str(_path(case, "quote")), "--collateral", str(out), "--at", at, "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["status"] == case["expected"]["status"]


def test_collateral_fetch_of_several_quotes_writes_a_bundle(tmp_path: Path) -> None:
    tdx, sgx = _case("tdx-v4-phala-1"), _case("sgx-v3-phala-1")
    both = StaticCatalog(
        [
            Collateral.from_json(_path(tdx, "collateral").read_text()),
            Collateral.from_json(_path(sgx, "collateral").read_text()),
        ]
    )
    with PccsServer(both) as server:
        out = tmp_path / "bundle.json"
        quotes = [str(_path(tdx, "quote")), str(_path(sgx, "quote"))]
        assert main(["collateral", "fetch", *quotes, "--pccs-url", server.url, "--out", str(out)]) == 0
    source = FileSource(out)
    assert source.single is None and len(source.entries) == 2
    for case in (tdx, sgx):
        quote = parse_quote(_path(case, "quote").read_bytes())
        collateral = source.get(*for_quote(quote))
        result = Verifier().verify(quote, collateral, now=case["verify_unix_time"])
        assert str(result.status) == case["expected"]["status"]


def test_collateral_fetch_failure_exits_1_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c.json"
    quote = str(_path(_case("tdx-v4-phala-1"), "quote"))
    argv = [
        "collateral",
        "fetch",
        quote,
        "--pccs-url",
        _closed_port_url(),
        "--out",
        str(out),
        "--timeout",
        "1",
    ]
    assert main(argv) == 1
    assert "COLLATERAL_UNAVAILABLE" in capsys.readouterr().err
    assert not out.exists()


def test_collateral_fetch_of_an_unreadable_quote_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Like ``quote verify``: exit 2, the file named, and every quote read before the PCCS is asked."""
    out = tmp_path / "c.json"
    quote = str(_path(_case("tdx-v4-phala-1"), "quote"))
    missing = str(tmp_path / "missing.bin")
    # The PCCS URL would fail (exit 1), so exit 2 shows the quotes were read first.
    argv = ["collateral", "fetch", quote, missing, "--pccs-url", _closed_port_url(), "--out", str(out)]
    assert main([*argv, "--timeout", "1"]) == 2
    assert capsys.readouterr().err == (
        f"sealing-key-provider collateral fetch: error: cannot read quote {missing}: No such file or directory\n"
        "Try 'sealing-key-provider collateral fetch --help' for the options.\n"
    )
    assert not out.exists()


def test_quote_verify_with_pccs_url(
    corpus_server: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("tdx-v4-phala-1", "sgx-v3-phala-1"):
        case = _case(name)
        at = str(case["verify_unix_time"])
        rc = main(
            [
                "quote",
                "verify",
                str(_path(case, "quote")),
                "--pccs-url",
                corpus_server[name],
                "--at",
                at,
                "--json",
            ]
        )
        out = json.loads(capsys.readouterr().out)
        assert rc == 0, out
        assert out["status"] == case["expected"]["status"]
        assert sorted(out["advisory_ids"]) == sorted(case["expected"].get("advisory_ids", []))

    bad = _case("tdx-tcbinfo-altered", "negative")
    argv = ["quote", "verify", str(_path(bad, "quote")), "--pccs-url", corpus_server[bad["name"]]]
    assert main([*argv, "--at", str(bad["verify_unix_time"]), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "COLLATERAL_SIGNATURE_INVALID"

    case = _case("tdx-v4-phala-1")
    argv = [
        "quote",
        "verify",
        str(_path(case, "quote")),
        "--pccs-url",
        _closed_port_url(),
        "--timeout",
        "1",
        "--json",
    ]
    assert main(argv) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "COLLATERAL_UNAVAILABLE"

    # --collateral and --pccs-url together are a usage error, refused before anything is fetched.
    argv = ["quote", "verify", str(_path(case, "quote")), "--pccs-url", corpus_server[case["name"]]]
    assert main([*argv, "--collateral", str(_path(case, "collateral")), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "not allowed with argument" in err


def test_quote_verify_picks_the_quotes_entry_of_a_fetched_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``collateral fetch`` of a TD and an SGX quote from ``sim pccs``; ``quote verify`` takes the bundle."""
    state = tmp_path / "sim"
    assert main(["sim", "init", "--state-dir", str(state)]) == 0
    tdx, sgx = tmp_path / "td.bin", tmp_path / "sgx.bin"
    quote = ["sim", "quote", "--state-dir", str(state)]
    assert main([*quote, "--tee", "tdx", "--report-data", "01", "--out", str(tdx)]) == 0
    assert (
        main([*quote, "--tee", "sgx", "--mrenclave", "11" * 32, "--mrsigner", "22" * 32, "--out", str(sgx)])
        == 0
    )
    bundle = tmp_path / "bundle.json"
    proc, url = _start_pccs_process("--state-dir", str(state))
    try:
        argv = ["collateral", "fetch", str(tdx), str(sgx), "--pccs-url", url, "--out", str(bundle)]
        assert main([*argv, "--timeout", "10"]) == 0
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    capsys.readouterr()
    assert json.loads(bundle.read_text())["format"] == "sealing-key-provider/collateral-bundle/v1"
    entries = FileSource(bundle).entries
    assert sorted(k.tee for k in entries) == ["sgx", "tdx"]

    anchor = str(state / "root-ca.pem")
    # Each entry verifies only quotes of its own TEE type, so both passing means each got its own entry.
    for path in (tdx, sgx):
        argv = ["quote", "verify", str(path), "--collateral", str(bundle), "--trust-anchor", anchor, "--json"]
        assert main(argv) == 0, capsys.readouterr()
        result = json.loads(capsys.readouterr().out)
        assert result["ok"] is True and result["status"] == "UpToDate"
    for key, collateral in entries.items():  # ...and the wrong one would not do
        wrong = sgx if key.tee == "tdx" else tdx
        with pytest.raises(ProviderError):
            Verifier(trust_anchor=(state / "root-ca.pem").read_bytes()).verify(
                wrong.read_bytes(), collateral, int(time.time())
            )

    # A quote of a platform the bundle has no entry for: the check fails (exit 1), it is not a usage error.
    other = tmp_path / "other"
    assert main(["sim", "init", "--state-dir", str(other), "--fmspc", "00806F050000"]) == 0
    stranger = tmp_path / "stranger.bin"
    assert main(["sim", "quote", "--state-dir", str(other), "--tee", "tdx", "--out", str(stranger)]) == 0
    capsys.readouterr()
    argv = ["quote", "verify", str(stranger), "--collateral", str(bundle), "--trust-anchor", anchor, "--json"]
    assert main(argv) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "COLLATERAL_UNAVAILABLE"
    assert error["message"] == f"collateral file {bundle} has no entry for tdx/00806F050000/platform"


# --- sim pccs ------------------------------------------------------------------------------------------


def _start_pccs_process(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sealing_key_provider.cli", "sim", "pccs", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        _, err = proc.communicate(timeout=5)
        pytest.fail(f"sim pccs did not start: {url!r} {err}")
    return proc, url


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sim_pccs_process_serves_recorded_collateral_and_stops_on_signal(sig: signal.Signals) -> None:
    case = _case("tdx-v5-gotdx-1")
    proc, url = _start_pccs_process("--collateral", str(_path(case, "collateral")))
    try:
        quote = parse_quote(_path(case, "quote").read_bytes())
        with PccsClient(url, timeout=5) as client:
            fetched = client.get(*for_quote(quote))
        assert fetched == Collateral.from_json(_path(case, "collateral").read_text())
    finally:
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("sim pccs did not stop on the signal")
    assert proc.returncode == 0, err
    assert "GET /tdx/certification/v4/tcb?fmspc=90C06F000000" in err
    assert "shutting down" in err


def test_sim_pccs_bad_configuration_exits_1(tmp_path: Path) -> None:
    collateral = str(_path(_case("tdx-v4-phala-1"), "collateral"))
    for args in (
        ["--state-dir", str(tmp_path / "none")],
        ["--collateral", str(tmp_path / "none.json")],
        ["--collateral", collateral, "--state-dir", str(tmp_path)],
    ):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "sealing_key_provider.cli",
                "sim",
                "pccs",
                "--listen",
                "127.0.0.1:0",
                *args,
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert proc.returncode == 1, proc.stderr
        assert re.fullmatch(
            r"(SIM_STATE_NOT_FOUND|COLLATERAL_UNAVAILABLE|CONFIG_INVALID): [^\n]+\n", proc.stderr
        )


def test_simulated_platform_collateral_over_http_verifies(tmp_path: Path) -> None:
    platform = SimPlatform.init(tmp_path / "sim")
    now = int(time.time())
    catalog = RegeneratingCatalog(_SimFactory(platform, "up-to-date"), lambda: float(now))
    verifier = Verifier(trust_anchor=platform.root_certificate)
    with PccsServer(catalog) as server, PccsClient(server.url, timeout=5) as client:
        tdx = platform.tdx_quote(report_data=b"x" * 64, mrtd=bytes(48), rtmrs=(bytes(48),) * 4)
        result = verifier.verify(tdx, client.get(*for_quote(parse_quote(tdx))), now=now)
        assert str(result.status) == "UpToDate"
        sgx = platform.sgx_quote(
            b"y" * 64, enclave=SgxEnclaveIdentity(mrenclave=b"\1" * 32, mrsigner=b"\2" * 32)
        )
        result = verifier.verify(sgx, client.get(*for_quote(parse_quote(sgx))), now=now)
        assert str(result.status) == "UpToDate"


class _CountingFactory:
    def __init__(self, platform: SimPlatform) -> None:
        self.inner = _SimFactory(platform, "up-to-date")
        self.calls: list[tuple[str, int]] = []

    def collateral(self, tee: str, now: int) -> Collateral:
        self.calls.append((tee, now))
        return self.inner.collateral(tee, now)


def test_simulated_collateral_is_regenerated_before_it_expires(tmp_path: Path) -> None:
    platform = SimPlatform.init(tmp_path / "sim")
    factory = _CountingFactory(platform)
    clock = [1_800_000_000.0]
    catalog = RegeneratingCatalog(factory, lambda: clock[0], tees=("tdx",))
    first = catalog.entries()[0].collateral
    expiry = collateral_next_update(first)
    catalog.entries()
    assert len(factory.calls) == 1
    clock[0] = clock[0] + 0.5 * (expiry - clock[0])
    assert catalog.entries()[0].collateral is first
    clock[0] = expiry - 0.05 * (expiry - 1_800_000_000)  # inside the last 10 % of the window
    fresh = catalog.entries()[0].collateral
    assert len(factory.calls) == 2 and fresh is not first
    Verifier(trust_anchor=platform.root_certificate).verify(
        platform.tdx_quote(report_data=b"", mrtd=bytes(48), rtmrs=(bytes(48),) * 4), fresh, now=int(clock[0])
    )
