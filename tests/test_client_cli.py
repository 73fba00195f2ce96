"""``sealing-key-provider get-key`` against a real provider on loopback: output modes, file safety,
usage errors (exit 2) and failed checks (exit 1 with the code)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealing_key_provider.cli import main
from sealing_key_provider.client.cli import write_key_file

from .client_helpers import ServedProvider, free_port, start_provider


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProvider]:
    server = start_provider(tmp_path_factory.mktemp("served-cli"))
    try:
        yield server
    finally:
        server.stop()


def base(served: ServedProvider, provider: str | None = None, *, pin: bool = True) -> list[str]:
    args = [
        "get-key",
        "--provider",
        provider or served.http_url,
        "--collateral",
        str(served.collateral),
        "--trust-anchor",
        str(served.sim.root_ca_pem_path),
        "--quote-source",
        "sim",
        "--sim-state-dir",
        str(served.sim.state_dir),
        "--timeout",
        "10",
    ]
    return [*args, "--expect-mrenclave", served.mrenclave] if pin else args


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        rc = main(args)
    except SystemExit as e:  # argparse usage errors
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def test_hex_and_file_give_the_same_key(
    served: ServedProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run([*base(served), "--hex"], capsys)
    assert rc == 0, err
    key_hex = out.strip()
    assert len(bytes.fromhex(key_hex)) == 32
    assert "wrote the 32-byte key" in err and key_hex not in err

    path = tmp_path / "key.bin"
    rc, out, err = run([*base(served), "--out", str(path)], capsys)
    assert rc == 0, err
    assert out == "" and key_hex not in err
    assert path.read_bytes().hex() == key_hex
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_legacy_protocol_from_host_port(served: ServedProvider, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run([*base(served, served.legacy_address), "--hex"], capsys)
    assert rc == 0, err
    assert "legacy-sha256" in err
    rc2, out2, _ = run([*base(served), "--hex", "--scheme", "legacy-sha256"], capsys)
    assert rc2 == 0 and out2 == out


def test_mrsigner_pin_and_key_options(served: ServedProvider, capsys: pytest.CaptureFixture[str]) -> None:
    args = [*base(served, pin=False), "--expect-mrsigner", str(served.info["mrsigner"]), "--hex"]
    rc, default_key, err = run(args, capsys)
    assert rc == 0, err
    rc, named, err = run([*args, "--key-name", "app/db", "--key-version", "2", "--freshness"], capsys)
    assert rc == 0, err
    assert named != default_key


def test_existing_file_is_not_overwritten_without_force(
    served: ServedProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "key.bin"
    path.write_bytes(b"keep me")
    path.chmod(0o644)
    rc, _, err = run([*base(served), "--out", str(path)], capsys)
    assert rc == 1 and "refusing to overwrite" in err
    assert path.read_bytes() == b"keep me"
    rc, _, err = run([*base(served), "--out", str(path), "--force"], capsys)
    assert rc == 0, err
    assert len(path.read_bytes()) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key.bin"]  # no temporary file left behind


def test_symlink_is_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "key.bin"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        write_key_file(link, b"\x01" * 32)
    assert not target.exists()


def test_key_file_mode_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_key_file(tmp_path / "k", b"\x02" * 32)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "extra",
    [
        ["--hex", "--pin-nothing"],
        ["--out", "x", "--hex"],
        [],  # neither --out nor --hex
        ["--hex", "--expect-mrenclave", "abcd"],
        ["--hex", "--timeout", "0"],
    ],
)
def test_argparse_usage_errors_exit_2(
    served: ServedProvider, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, _ = run([*base(served, pin=False), *extra], capsys)
    assert rc == 2


def test_missing_pin_is_a_usage_error(served: ServedProvider, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run([*base(served, pin=False), "--hex"], capsys)
    assert rc == 2 and out == ""
    assert "--expect-mrenclave" in err and "no trust on first use" in err


@pytest.mark.parametrize(
    ("provider", "extra", "message"),
    [
        ("legacy", ["--key-name", "app"], "--key-name need the HTTP API"),
        ("legacy", ["--freshness"], "--freshness need the HTTP API"),
        ("ftp://127.0.0.1:1", [], "http(s):// URL or HOST:PORT"),
        ("no-port", [], "--provider"),
        ("http", ["--force"], "--force applies to --out only"),
    ],
)
def test_combination_usage_errors_exit_2(
    served: ServedProvider, provider: str, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    address = {"legacy": served.legacy_address, "http": served.http_url}.get(provider, provider)
    rc, _, err = run([*base(served, address), "--hex", *extra], capsys)
    assert rc == 2 and message in err


def test_sim_options_need_the_sim_quote_source(
    served: ServedProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    args = base(served)
    args[args.index("--quote-source") + 1] = "configfs"
    rc, _, err = run([*args, "--hex"], capsys)
    assert rc == 2 and "--sim-state-dir needs --quote-source sim" in err


def test_failed_check_exits_1_naming_the_code(
    served: ServedProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    args = base(served, pin=False)
    rc, out, err = run([*args, "--expect-mrenclave", "cd" * 32, "--hex"], capsys)
    assert rc == 1 and out == ""
    assert (
        f"PROVIDER_IDENTITY_MISMATCH: provider MRENCLAVE {served.mrenclave} is not the expected {'cd' * 32}"
        in err
    )
    rc, _, err = run([*base(served), "--accept-tcb-status", "OutOfDate", "--hex"], capsys)
    assert rc == 1 and "TCB_STATUS_REJECTED" in err


def test_failed_check_writes_no_file(
    served: ServedProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "key.bin"
    rc, _, err = run([*base(served, pin=False), "--expect-mrsigner", "ee" * 32, "--out", str(path)], capsys)
    assert rc == 1 and "PROVIDER_IDENTITY_MISMATCH" in err and not path.exists()


def test_provider_refusal_and_unreachable_provider_exit_1(
    served: ServedProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run([*base(served), "--hex", "--scheme", "no-such-scheme"], capsys)
    assert rc == 1 and "provider refused:" in err and "UNKNOWN_SCHEME" in err
    rc, _, err = run([*base(served, f"127.0.0.1:{free_port()}"), "--hex"], capsys)
    assert rc == 1 and "TRANSPORT_ERROR" in err


def test_missing_configfs_is_exit_1(served: ServedProvider, capsys: pytest.CaptureFixture[str]) -> None:
    args = [a for a in base(served) if a not in ("--sim-state-dir", str(served.sim.state_dir))]
    args[args.index("--quote-source") + 1] = "configfs"
    if Path("/sys/kernel/config/tsm/report").is_dir():
        pytest.skip("this machine is a TDX guest")
    rc, _, err = run([*args, "--hex"], capsys)
    assert rc == 1 and "configfs-tsm" in err


def test_tdx_guest_source_without_the_device_is_exit_1(
    served: ServedProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a for a in base(served) if a not in ("--sim-state-dir", str(served.sim.state_dir))]
    args[args.index("--quote-source") + 1] = "tdx-guest"
    if Path("/dev/tdx_guest").exists():
        pytest.skip("this machine is a TDX guest")
    rc, _, err = run([*args, "--hex"], capsys)
    assert rc == 1 and "QUOTE_SOURCE_UNAVAILABLE" in err and "/dev/tdx_guest does not exist" in err
