"""The production enclave, built and run the way users do: ``make SGX=1 manifest measure dry-run``.

One module fixture builds the enclave tree twice, from two copies of this checkout at two different
paths and at two different times (the second copy's files carry other modification times), into the
same PREFIX, exactly through the Makefile; both measurement previews must agree. The tests then
read what the second build produced, and run the dry run (where this machine allows private mount
and network namespaces; otherwise each dry-run test is skipped and says why).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from enclave import dryrun, measure, tree

REPO = Path(__file__).resolve().parent.parent
#: A PEM private key with its base64 body (not just the marker, which cryptography's sources contain).
PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=\r\n]{40,}-----END")
VENV = REPO / ".venv"
#: The clones share this checkout's virtualenv; make must never reinstall it (from a clone, the editable
#: install would then point into a temporary directory).
NO_VENV_REBUILD = ("-o", str(VENV / ".installed"))
pytestmark = pytest.mark.timeout(600)


@dataclass(frozen=True)
class Build:
    clone: Path
    prefix: Path
    manifest: Path
    preview: Path
    digests: tuple[str, str]
    output: str


def _copy_checkout(dest: Path) -> None:
    """The checkout's files as git sees them (tracked and new, not ignored): a clone of the working tree."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        rel = raw.decode()
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _make(
    clone: Path, *targets: str, prefix: Path, wheelhouse: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "make",
            "-s",
            *NO_VENV_REBUILD,
            "SGX=1",
            *targets,
            f"PREFIX={prefix}",
            f"VENV={VENV}",
            f"WHEELHOUSE={wheelhouse}",
        ],
        cwd=clone,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env},
    )


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Build]:
    base = tmp_path_factory.mktemp("enclave-build")
    # Not under /tmp: the manifest mounts a tmpfs there, which would hide the tree.
    prefix = Path("/var/tmp") / f"skp-test-{uuid.uuid4().hex[:12]}" / "opt" / "sealing-key-provider"
    wheelhouse = base / "wheelhouse"
    digests = []
    output = ""
    try:
        for i, name in enumerate(("clone-a", "somewhere/else/clone-b")):
            clone = base / name
            clone.mkdir(parents=True)
            _copy_checkout(clone)
            if i == 1:  # "later": every file of the second clone has another modification time
                for path in clone.rglob("*"):
                    os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i))
            result = _make(clone, "manifest", "measure", prefix=prefix, wheelhouse=wheelhouse)
            output = result.stdout + result.stderr
            assert result.returncode == 0, output
            digests.append(measure.read_digest(clone / "build" / "enclave-measurement.txt").hex())
        yield Build(
            clone=base / "somewhere/else/clone-b",
            prefix=prefix,
            manifest=base / "somewhere/else/clone-b/build/sealing-key-provider.manifest",
            preview=base / "somewhere/else/clone-b/build/enclave-measurement.txt",
            digests=(digests[0], digests[1]),
            output=output,
        )
    finally:
        shutil.rmtree(prefix.parent.parent, ignore_errors=True)


def _manifest(build: Build) -> dict[str, object]:
    return tomllib.loads(build.manifest.read_text())


def _trusted(build: Build) -> list[dict[str, str]]:
    return list(_manifest(build)["sgx"]["trusted_files"])  # type: ignore[index]


# --- reproducibility ---------------------------------------------------------------------------------


def test_two_clones_at_different_paths_and_times_give_the_same_preview(build: Build) -> None:
    a, b = build.digests
    assert a == b
    assert len(bytes.fromhex(a)) == 32
    assert f"preview digest {a}" in build.output


def test_the_tree_holds_nothing_that_varies_by_path_or_time(build: Build) -> None:
    for path in build.prefix.rglob("*"):
        assert not path.is_symlink(), path
        assert path.name not in ("direct_url.json", "RECORD", "INSTALLER", "REQUESTED", "__pycache__"), path
        assert path.suffix not in (".pyc", ".pyo"), path
    assert not (build.prefix / "site-packages" / "bin").exists()
    # Nothing in the tree names the checkout it was built from.
    needle = str(build.clone.parent).encode()
    for path in build.prefix.rglob("*"):
        if path.is_file() and path.stat().st_size < 4 * 1024 * 1024:
            assert needle not in path.read_bytes(), path


# --- what the enclave trusts ---------------------------------------------------------------------------


def test_trusted_files_are_exactly_the_runtime_dir_and_the_tree(build: Build) -> None:
    entries = _trusted(build)
    unhashed = [e["uri"] for e in entries if "sha256" not in e]
    assert unhashed == ["file:/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc/"]
    hashed = [Path(e["uri"].removeprefix("file:")) for e in entries if "sha256" in e]
    assert all(p.is_relative_to(build.prefix) for p in hashed)
    on_disk = sorted(p for p in build.prefix.rglob("*") if p.is_file())
    assert sorted(hashed) == on_disk
    assert build.prefix / "bin" / "python3" in hashed
    assert build.prefix / "etc" / "config.toml" in hashed
    assert any(p.name == "libpython3.11.so.1.0" or p.name.startswith("libssl") for p in hashed)


def test_trusted_files_hold_no_simulator_demo_test_bench_or_test_pki(build: Build) -> None:
    site = build.prefix / "site-packages"
    package = site / tree.PACKAGE
    assert (package / "platform" / "gramine.py").is_file()
    for entry in _trusted(build):
        path = Path(entry["uri"].removeprefix("file:"))
        if not path.is_relative_to(build.prefix):
            continue
        rel = path.relative_to(build.prefix)
        assert "tests" not in rel.parts and "bench" not in rel.parts, path
        if path.is_relative_to(site):
            assert not tree.is_excluded(path.relative_to(site).as_posix()), path
        if path.is_relative_to(package):
            assert "sim" not in path.relative_to(package).parts and "demo" not in path.stem, path
        assert not PEM_PRIVATE_KEY.search(path.read_bytes()), f"{path} holds a private key"
        if path.suffix == ".pem":
            assert path.name == "cacert.pem" and "certifi" in path.parts, path


def test_manifest_keeps_the_production_settings(build: Build) -> None:
    m = _manifest(build)
    text = build.manifest.read_text()
    assert "insecure__" not in text
    sgx = m["sgx"]
    assert isinstance(sgx, dict)
    assert sgx["debug"] is False
    assert sgx["remote_attestation"] == "dcap"
    assert sgx["file_check_policy"] == "strict"
    assert "allowed_files" not in sgx
    assert (sgx["isvprodid"], sgx["isvsvn"]) == (0, 1)
    assert sgx["seal_key"] == {
        "flags_mask": "0xffffffffffffffff",
        "xfrm_mask": "0xfffffffffff9ff1b",
        "misc_mask": "0xffffffff",
    }
    loader = m["loader"]
    assert isinstance(loader, dict)
    python = f"{build.prefix}/bin/python3"
    assert loader["argv"] == [
        python, "-P", "-S", "-m", "sealing_key_provider", "serve", "--platform", "gramine",
        "--config", f"{build.prefix}/etc/config.toml",
    ]  # fmt: skip
    assert m["libos"] == {"entrypoint": python}
    assert loader["env"]["PYTHONPATH"] == f"{build.prefix}/site-packages"
    assert all(isinstance(v, str) for v in loader["env"].values())


def test_dev_mode_and_debug_keep_their_meaning(build: Build) -> None:
    """DEV_MODE=1 is measured (dev_mode = true in the tree's configuration) and gets ISVPRODID 1;
    DEBUG=1 raises log levels only: the enclave is never a debug enclave."""
    from enclave.render import render

    planned = subprocess.run(
        [
            "make",
            "-n",
            "SGX=1",
            "DEV_MODE=1",
            "DEBUG=1",
            "manifest",
            f"PREFIX={build.prefix}",
            f"VENV={VENV}",
        ],
        cwd=build.clone,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "-Disvprodid=1" in planned and "-Dlog_level=debug" in planned
    config = build.clone / "build" / "gramine" / "config.toml"
    try:
        subprocess.run(
            ["make", "-s", "DEV_MODE=1", "DEBUG=1", "build/gramine/config.toml"], cwd=build.clone, check=True
        )
        dev = tomllib.loads(config.read_text())
        assert dev["dev_mode"] is True and dev["logging"]["level"] == "debug"
    finally:
        subprocess.run(["make", "-s", "build/gramine/config.toml"], cwd=build.clone, check=True)
    assert tomllib.loads(config.read_text())["dev_mode"] is False
    assert tomllib.loads((build.prefix / "etc" / "config.toml").read_text())["dev_mode"] is False
    template = build.clone / "gramine" / "sealing-key-provider.manifest.template"
    variables = {"prefix": str(build.prefix), "log_level": "debug", "isvprodid": "1", "isvsvn": "1"}
    text, _ = render(template, variables, Path("/nonexistent/gramine"))
    debug = tomllib.loads(text)
    assert debug["loader"]["log_level"] == "debug"
    assert debug["sgx"]["debug"] is False
    assert debug["sgx"]["isvprodid"] == 1


# --- the dry run ------------------------------------------------------------------------------------------


def _skip_without_namespaces() -> None:
    why = dryrun.probe()
    if why is not None:
        pytest.skip(f"dry run not run: {why}")


def test_dry_run_serves_both_protocols_from_the_gramine_backend(build: Build) -> None:
    _skip_without_namespaces()
    result = _make(build.clone, "dry-run", prefix=build.prefix, wheelhouse=build.clone / "unused")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    digest = build.digests[1]
    assert f"MRENCLAVE (/dev/attestation emulation) = measurement preview digest {digest}" in out
    assert "legacy request answered by the Gramine backend" in out
    assert "v1 request answered by the Gramine backend" in out
    assert "v1 over RA-TLS answered by the Gramine backend" in out
    assert 'skp_requests_total{code="OK",protocol="legacy"} 1.0' in out
    assert "platform=gramine" in out
    assert "configuration differs from production only in collateral.pccs_url" in out
    assert "stand in for Gramine's runtime directory" in out
    assert "SIGTERM: the provider exited cleanly (status 0)" in out


def test_dry_run_names_a_trusted_file_missing_from_the_view(build: Build, tmp_path: Path) -> None:
    _skip_without_namespaces()
    missing = build.prefix / "site-packages" / tree.PACKAGE / "keys.py"
    result = subprocess.run(
        [
            sys.executable, "-m", "enclave.dryrun", "--manifest", str(build.manifest), "--preview", str(build.preview),
            "--template", str(build.clone / "gramine" / "sealing-key-provider.manifest.template"),
            "--work", str(tmp_path / "dry-run"), "--hide", str(missing),
        ],
        cwd=build.clone,
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "FAILED" in out
    assert f"{missing}" in out
    assert "module sealing_key_provider.keys" in out
    assert "sealing-key-provider.manifest.template:" in out and "(sgx.trusted_files)" in out


def test_dry_run_refuses_a_stale_preview(build: Build, tmp_path: Path) -> None:
    stale = tmp_path / "preview.txt"
    stale.write_text(build.preview.read_text().replace(build.digests[1], "00" * 32))
    result = subprocess.run(
        [
            sys.executable, "-c",
            "import sys; from enclave import dryrun; dryrun.enter_network_namespace = lambda: 'test'; "
            "sys.exit(dryrun.main(sys.argv[1:]))",
            "--manifest", str(build.manifest), "--preview", str(stale), "--work", str(tmp_path / "w"),
        ],
        cwd=build.clone,
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"{stale} is stale" in result.stderr


def test_where_namespaces_are_not_allowed_the_dry_run_says_so(tmp_path: Path) -> None:
    """What `make test` meets on a machine without namespace rights: the probe (which each dry-run
    test calls) answers with the reason, and the dry run itself stops with "SKIPPED" and that reason
    instead of failing. Shown here by running them without CAP_SYS_ADMIN."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to take CAP_SYS_ADMIN away")
    drop = [setpriv, "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin"]
    probe = subprocess.run(
        [*drop, sys.executable, "-m", "enclave.dryrun", "--probe"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode == dryrun.EXIT_SKIP
    assert "does not allow private mount/network namespaces" in probe.stdout
    run = subprocess.run(
        [*drop, sys.executable, "-m", "enclave.dryrun", "--work", str(tmp_path / "w")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == dryrun.EXIT_SKIP
    assert "SKIPPED: namespaces are not allowed here" in run.stderr
