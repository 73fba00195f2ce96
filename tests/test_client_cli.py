"""``sealing-key-provider get-key`` against a real provider on loopback: output modes, file safety,
usage errors (exit 2) and failed checks (exit 1 with the code)."""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealing_key_provider.cli import get_key as client_cli
from sealing_key_provider.cli import main
from sealing_key_provider.cli.get_key import write_key_file
from sealing_key_provider.client.transport import Transport
from sealing_key_provider.dcap import Verifier
from sealing_key_provider.keys import MAX_KEY_VERSION, build_registry
from sealing_key_provider.policy import Policy
from sealing_key_provider.provider import Provider
from sealing_key_provider.sim import SimSgxPlatform
from sealing_key_provider.sim.pccs_server import PccsServer, StaticCatalog
from tests.tls_helpers import self_signed_localhost

from .client_helpers import InProcessTransport, ServedProvider, SimSource, free_port, start_provider


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProvider]:
    server = start_provider(tmp_path_factory.mktemp("served-cli"))
    try:
        yield server
    finally:
        server.stop()


def base(
    served: ServedProvider, provider: str | None = None, *, pin: bool = True, pccs: list[str] | None = None
) -> list[str]:
    """get-key against ``served``; collateral from its file unless ``pccs`` gives other options."""
    args = [
        "get-key",
        "--provider",
        provider or served.http_url,
        *(pccs if pccs is not None else ["--collateral", str(served.collateral)]),
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


def test_legacy_protocol_from_host_port(
    served: ServedProvider, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    rc, _, err = run([*base(served, served.legacy_address), "--hex"], capsys)
    assert rc == 1 and "LEGACY_NOT_ALLOWED" in err and "--legacy" in err  # not without asking
    with caplog.at_level(logging.WARNING, logger="sealing_key_provider.client"):
        rc, out, err = run([*base(served, served.legacy_address), "--legacy", "--hex"], capsys)
    assert rc == 0, err
    assert "the provider's answer is not bound to this TD's quote" in caplog.text  # the risk, named
    assert "(the legacy-sha256 key, which has no name or version;" in err
    assert "'default'" not in err and "version 1" not in err  # the legacy protocol has no key names
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
    assert rc == 2 and f"--out {path} exists; refusing to overwrite it (use --force" in err
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
        ("{legacy}", ["--key-name", "app"], "--key-name needs the HTTP API"),
        ("{legacy}", ["--freshness"], "--freshness needs the HTTP API"),
        ("{legacy}", ["--key-version", "2", "--freshness"], "--key-version, --freshness need the HTTP API"),
        ("{http}/v1", [], "--provider takes the provider's base URL, e.g. http://127.0.0.1:"),
        ("{http}/v1/keys", [], "(the client adds /v1/keys and /v1/nonce itself)"),
        ("{http}/?x=1", [], "--provider takes the provider's base URL"),
        ("http://:8080", [], "--provider: no host"),
        ("http://127.0.0.1:99999", [], "--provider: bad port"),
        ("{http}", ["--ca-bundle", "ca.pem"], "--ca-bundle applies to --pccs-url only"),
        ("{http}", ["--insecure"], "--insecure applies to --pccs-url only"),
        ("ftp://127.0.0.1:1", [], "http(s):// URL or HOST:PORT"),
        ("no-port", [], "--provider"),
        ("{http}", ["--force"], "--force applies to --out only"),
    ],
)
def test_combination_usage_errors_exit_2(
    served: ServedProvider, provider: str, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    address = provider.format(http=served.http_url, legacy=served.legacy_address)
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
    rc, _, err = run([*base(served, f"127.0.0.1:{free_port()}"), "--legacy", "--hex"], capsys)
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


# --- collateral from a PCCS with a private CA ----------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed_localhost(tmp_path, "private PCCS")


@pytest.fixture
def tls_pccs(served: ServedProvider, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The ``sim pccs`` server over HTTPS with a self-signed certificate, serving the provider's
    collateral; yields its URL and the certificate (the CA bundle that trusts it)."""
    cert, key = _self_signed(tmp_path)
    server = PccsServer(StaticCatalog.from_file(served.collateral), tls_cert=cert, tls_key=key)
    server.start()
    try:
        yield server.url, cert
    finally:
        server.stop()


def test_private_ca_pccs_needs_ca_bundle_or_insecure(
    served: ServedProvider, tls_pccs: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, cert = tls_pccs
    assert url.startswith("https://")
    rc, out, err = run([*base(served, pccs=["--pccs-url", url]), "--hex"], capsys)
    assert rc == 1 and out == ""
    assert "COLLATERAL_UNAVAILABLE" in err and "TLS certificate of the PCCS not trusted" in err
    rc, out, err = run([*base(served, pccs=["--pccs-url", url, "--ca-bundle", str(cert)]), "--hex"], capsys)
    assert rc == 0, err
    key = out.strip()
    rc, out, err = run([*base(served, pccs=["--pccs-url", url, "--insecure"]), "--hex"], capsys)
    assert rc == 0, err
    assert out.strip() == key


def test_ca_bundle_usage_errors(
    served: ServedProvider, tls_pccs: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, cert = tls_pccs
    both = ["--pccs-url", url, "--ca-bundle", str(cert), "--insecure"]
    rc, _, err = run([*base(served, pccs=both), "--hex"], capsys)
    assert rc == 2 and "not allowed with argument" in err
    missing = tmp_path / "no-such-ca.pem"
    rc, _, err = run([*base(served, pccs=["--pccs-url", url, "--ca-bundle", str(missing)]), "--hex"], capsys)
    assert rc == 2 and f"cannot load the PCCS CA bundle {missing}" in err


# --- no TDX guest: the CLI's advice --------------------------------------------------------------------------


def test_auto_quote_source_outside_a_td_suggests_the_sim_option(
    served: ServedProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    if Path("/sys/kernel/config/tsm/report").is_dir() or Path("/dev/tdx_guest").exists():
        pytest.skip("this machine is a TDX guest")
    args = base(served)
    del args[args.index("--quote-source") : args.index("--sim-state-dir") + 2]  # the default: auto
    rc, out, err = run([*args, "--hex"], capsys)
    assert rc == 1 and out == ""
    assert "QUOTE_SOURCE_UNAVAILABLE: no TDX quote source" in err
    assert err.rstrip().endswith(
        "outside a TDX guest use --quote-source sim [--sim-state-dir DIR] (a simulated TD, for tests and demos)"
    )
    assert "SimTdQuoteSource" not in err


# --- usage errors found before any network call ---------------------------------------------------------------


def test_bad_trust_anchor_is_a_usage_error_naming_the_file(
    served: ServedProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # exit 2, not TRANSPORT_ERROR: nothing was sent
    not_a_cert = tmp_path / "not-a-cert.pem"
    not_a_cert.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    cases = {
        tmp_path / "nope.pem": "cannot read trust anchor {path}: No such file or directory",
        tmp_path: "cannot read trust anchor {path}: Is a directory",
        not_a_cert: "trust anchor {path} is not a usable root CA certificate: trust anchor is not a PEM or DER certificate",
    }
    for path, message in cases.items():
        args = base(served, nowhere)
        args[args.index("--trust-anchor") + 1] = str(path)
        rc, out, err = run([*args, "--hex"], capsys)
        assert rc == 2 and out == "", err
        assert message.format(path=path) in err


def test_unreadable_collateral_is_a_usage_error_and_malformed_collateral_a_failure(
    served: ServedProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # nothing is sent in either case
    missing = tmp_path / "nope.json"
    rc, out, err = run([*base(served, nowhere), "--collateral", str(missing), "--hex"], capsys)
    assert rc == 2 and out == "" and f"cannot read collateral {missing}: No such file or directory" in err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    rc, out, err = run([*base(served, nowhere), "--collateral", str(broken), "--hex"], capsys)
    assert rc == 1 and out == "" and "COLLATERAL_MALFORMED" in err and "TRANSPORT_ERROR" not in err


def test_unwritable_out_is_a_usage_error(
    served: ServedProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    a_file = tmp_path / "file"
    a_file.write_bytes(b"")
    cases = [
        (tmp_path / "missing" / "key.bin", [], f"directory {tmp_path / 'missing'} does not exist"),
        (a_file / "key.bin", [], f"{a_file} is not a directory"),
        (a_file, [], "exists; refusing to overwrite it (use --force to replace it)"),
        (tmp_path, ["--force"], f"--out {tmp_path} is a directory"),
    ]
    for out, extra, message in cases:
        rc, _, err = run([*base(served, nowhere), "--out", str(out), *extra], capsys)
        assert rc == 2 and message in err, err
    assert a_file.read_bytes() == b""


@pytest.mark.parametrize("version", ["-1", str(MAX_KEY_VERSION + 1), "1.5", "0x10"])
def test_key_version_out_of_the_servers_range_exits_2_at_parse_time(
    served: ServedProvider, version: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run([*base(served), "--hex", "--key-version", version], capsys)
    assert rc == 2 and "argument --key-version" in err
    if version.startswith("-") or version.isdigit():
        assert f"must be in 0..{MAX_KEY_VERSION}" in err


def test_largest_key_version_is_served(served: ServedProvider, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run([*base(served), "--hex", "--key-version", str(MAX_KEY_VERSION)], capsys)
    assert rc == 0, err
    assert f"version {MAX_KEY_VERSION}" in err and len(bytes.fromhex(out.strip())) == 32


# --- the wrong port ----------------------------------------------------------------------------------------


def test_legacy_client_on_the_http_port_is_told_to_use_http(
    served: ServedProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    http_address = served.http_url.removeprefix("http://")
    rc, _, err = run([*base(served, http_address), "--legacy", "--hex"], capsys)
    assert rc == 1
    assert "RESPONSE_MALFORMED: the provider at" in err and "answered with HTTP" in err
    assert f"--provider http://{http_address}" in err and "1213486160" not in err


def test_http_client_on_the_legacy_port_is_told_to_drop_http(
    served: ServedProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run([*base(served, "http://" + served.legacy_address), "--hex"], capsys)
    assert rc == 1
    assert "TRANSPORT_ERROR: no HTTP answer from the provider" in err
    assert "is this the legacy port? then give HOST:PORT without http://" in err


def test_base_url_with_a_trailing_slash_is_accepted(
    served: ServedProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run([*base(served, served.http_url + "/"), "--hex"], capsys)
    assert rc == 0, err
    assert len(bytes.fromhex(out.strip())) == 32


# --- the provider's own messages, with the CLI's hint ----------------------------------------------------------


def test_freshness_refusal_suggests_the_option(
    served: ServedProvider, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A provider whose policy requires freshness, in process (its answer is relayed as over HTTP)."""
    strict = Provider(
        SimSgxPlatform.load(served.sim.state_dir),
        SimSource(served.sim, int(time.time())),
        Verifier(trust_anchor=served.sim.root_certificate),
        Policy(freshness_required=True),
        build_registry(),
    )

    def in_process(args: object) -> Transport:
        return InProcessTransport(strict)

    monkeypatch.setattr(client_cli, "_transport", in_process)
    rc, out, err = run([*base(served), "--hex"], capsys)
    assert rc == 1 and out == ""
    assert "FRESHNESS_INVALID: provider refused: this provider requires a freshness token" in err
    assert "(get-key: add --freshness, which fetches that token)" in err
    rc, out, err = run([*base(served), "--hex", "--freshness"], capsys)
    assert rc == 0, err
