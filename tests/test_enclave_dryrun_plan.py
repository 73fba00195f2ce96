"""The dry run's view plan and its diagnosis, without namespaces: what gets mounted, and what a failure
says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from enclave.dryrun import DRY_RUN_ANCHOR, DryRunError, Manifest, diagnose, plan_view, template_line

TEMPLATE_TEXT = """# header
libos.entrypoint = "x"
loader.env.PYTHONPATH = "x"
fs.mounts = [
]
sgx.trusted_files = [
]
"""


def _manifest(
    prefix: Path, mounts: list[dict[str, str]], trusted: list[Path], env: dict[str, str] | None = None
) -> Manifest:
    data: dict[str, Any] = {
        "libos": {"entrypoint": "/bin/sh"},
        "loader": {"argv": ["/bin/sh"], "env": env or {}},
        "fs": {"mounts": mounts},
        "sgx": {"trusted_files": [{"uri": f"file:{p}", "sha256": "0" * 64} for p in trusted]},
    }
    m = Manifest(prefix / "m.manifest", data)
    m.trusted = {str(p): "0" * 64 for p in trusted}
    return m


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "prefix"
    (root / "site-packages" / "pkg").mkdir(parents=True)
    (root / "site-packages" / "pkg" / "__init__.py").write_text("")
    (root / "site-packages" / "pkg" / "mod.py").write_text("")
    (root / "etc").mkdir()
    (root / "etc" / "config.toml").write_text("")
    return root


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _plan(m: Manifest, tmp_path: Path, hide: list[Path] | None = None) -> Any:
    return plan_view(
        m,
        pkglibdir=tmp_path / "gramine",
        attestation_dir=tmp_path / "att",
        config_overlay=None,
        anchor_pem="PEM",
        hide=hide or [],
    )


def test_a_fully_trusted_tree_is_one_read_only_bind(tree: Path, tmp_path: Path) -> None:
    mounts = [{"path": "/opt/prefix", "uri": f"file:{tree}"}, {"type": "tmpfs", "path": "/tmp"}]
    plan = _plan(_manifest(tree, mounts, _files(tree)), tmp_path)
    binds = [op for op in plan.ops if op["op"] == "bind" and op["path"] == "/opt/prefix"]
    assert binds == [{"op": "bind", "source": str(tree), "path": "/opt/prefix"}]
    assert {"op": "tmpfs", "path": "/tmp"} in plan.ops
    assert {"op": "file", "path": DRY_RUN_ANCHOR, "content": "PEM"} in plan.ops
    assert any(op["path"] == "/dev/attestation" and op["source"] == str(tmp_path / "att") for op in plan.ops)
    assert plan.hidden == []


def test_untrusted_or_hidden_files_are_left_out_file_by_file(tree: Path, tmp_path: Path) -> None:
    untrusted = tree / "etc" / "config.toml"
    hidden = tree / "site-packages" / "pkg" / "mod.py"
    trusted = [p for p in _files(tree) if p != untrusted]
    m = _manifest(tree, [{"path": "/view", "uri": f"file:{tree}"}], trusted)
    plan = _plan(m, tmp_path, hide=[hidden])
    sources = {op["source"] for op in plan.ops if op["op"] == "bind" and op["path"].startswith("/view")}
    assert str(tree / "site-packages" / "pkg" / "__init__.py") in sources
    assert str(untrusted) not in sources and str(hidden) not in sources and str(tree) not in sources
    assert {
        "op": "bind",
        "source": str(tree / "site-packages/pkg/__init__.py"),
        "path": "/view/site-packages/pkg/__init__.py",
    } in plan.ops
    assert sorted(plan.hidden) == sorted([untrusted, hidden])
    assert any("2 of 3 files" in note for note in plan.notes)


def test_a_mount_hidden_by_a_later_mount_is_refused(tree: Path, tmp_path: Path) -> None:
    m = _manifest(
        tree,
        [{"path": "/tmp/prefix", "uri": f"file:{tree}"}, {"type": "tmpfs", "path": "/tmp"}],
        _files(tree),
    )
    with pytest.raises(DryRunError, match="/tmp/prefix is hidden by the later mount of /tmp"):
        _plan(m, tmp_path)


def test_relative_and_missing_uris_are_refused(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(DryRunError, match="relative to gramine-sgx's working directory"):
        _plan(_manifest(tree, [{"path": "/x", "uri": "file:helper-files"}], []), tmp_path)
    with pytest.raises(DryRunError, match="does not exist on this host"):
        _plan(_manifest(tree, [{"path": "/x", "uri": f"file:{tmp_path}/missing"}], []), tmp_path)


# --- diagnosis ------------------------------------------------------------------------------------------


@pytest.fixture
def template(tmp_path: Path) -> Path:
    path = tmp_path / "t.manifest.template"
    path.write_text(TEMPLATE_TEXT)
    return path


def _diag(tree: Path, template: Path, stderr: str, hidden: list[Path] | None = None) -> list[str]:
    m = _manifest(
        tree,
        [{"path": str(tree), "uri": f"file:{tree}"}],
        _files(tree),
        env={"PYTHONPATH": f"{tree}/site-packages"},
    )
    return diagnose(stderr, m, template, hidden or [])


def test_template_lines_are_named(template: Path) -> None:
    assert template_line(template, "sgx.trusted_files") == f"{template}:6 (sgx.trusted_files)"
    assert template_line(template, "fs.mounts") == f"{template}:4 (fs.mounts)"


def test_a_missing_module_is_named_with_its_file_and_the_manifest_line(tree: Path, template: Path) -> None:
    hidden = tree / "site-packages" / "pkg" / "mod.py"
    (finding,) = _diag(tree, template, "ModuleNotFoundError: No module named 'pkg.mod'\n", [hidden])
    assert f"{tree}/site-packages/pkg/mod.py" in finding
    assert "hidden on purpose" in finding and f"{template}:6 (sgx.trusted_files)" in finding


def test_an_excluded_module_is_a_defect_of_the_importer(tree: Path, template: Path) -> None:
    (finding,) = _diag(tree, template, "ModuleNotFoundError: No module named 'sealing_key_provider.sim'\n")
    assert "excluded from the enclave tree (enclave/tree.py EXCLUDED)" in finding
    assert "production code must not import it" in finding


def test_a_module_nowhere_points_at_the_lock(tree: Path, template: Path) -> None:
    (finding,) = _diag(tree, template, "ModuleNotFoundError: No module named 'yaml'\n")
    assert "make lock" in finding and "loader.env.PYTHONPATH" in finding


def test_files_outside_any_mount_and_missing_inside_one(tree: Path, template: Path) -> None:
    stderr = (
        "FileNotFoundError: [Errno 2] No such file or directory: '/etc/ssl/certs/ca-certificates.crt'\n"
        f"start-up failed code=CONFIG_INVALID reason=configuration file '{tree}/etc/other.toml' does not exist\n"
        "PermissionError: [Errno 13] Permission denied: '/dev/attestation/quote'\n"
    )
    outside, inside = _diag(tree, template, stderr)
    assert "/etc/ssl/certs/ca-certificates.crt is under no fs.mounts entry" in outside
    assert f"{template}:4 (fs.mounts)" in outside
    assert f"file {tree}/etc/other.toml (host {tree}/etc/other.toml)" in inside


def test_a_missing_shared_library(tree: Path, template: Path) -> None:
    stderr = "python3: error while loading shared libraries: libssl.so.3: cannot open shared object file\n"
    (finding,) = _diag(tree, template, stderr)
    assert "shared library libssl.so.3" in finding and "loader.env.LD_LIBRARY_PATH" in finding


def test_the_dry_run_never_replaces_a_directory_it_did_not_make(tmp_path: Path) -> None:
    import subprocess
    import sys

    foreign = tmp_path / "somebodys"
    foreign.mkdir()
    (foreign / "data").write_text("keep me")
    result = subprocess.run(
        [
            sys.executable, "-c",
            "import sys; from enclave import dryrun; dryrun.enter_network_namespace = lambda: 'test'; "
            "sys.exit(dryrun.main(sys.argv[1:]))",
            "--work", str(foreign), "--manifest", str(tmp_path / "none"),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "is not a dry run's directory: refusing to replace it" in result.stderr
    assert (foreign / "data").read_text() == "keep me"
