"""enclave/render.py against what gramine-manifest does (graminelibos v1.8+), and the measurement
preview built on its output."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import jinja2
import pytest

from enclave import measure
from enclave.render import ManifestError, parse_define, render, render_template

MINIMAL = """
libos.entrypoint = "/bin/true"
fs.mounts = [{ path = "/lib", uri = "file:{{ gramine.runtimedir() }}" }]
"""


def _render(
    tmp_path: Path, text: str, variables: dict[str, object] | None = None
) -> tuple[dict[str, object], list[str]]:
    template = tmp_path / "t.manifest.template"
    template.write_text(text)
    out, left = render(template, variables or {}, tmp_path / "no-gramine")
    return tomllib.loads(out), left


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- Jinja environment and globals ----------------------------------------------------------------------


def test_undefined_variables_are_errors() -> None:
    with pytest.raises(jinja2.UndefinedError):
        render_template("x = {{ nope }}", {}, Path("/p"))


def test_defines_are_strings_or_true() -> None:
    assert parse_define("isvsvn=1") == ("isvsvn", "1")
    assert parse_define("flag") == ("flag", True)
    assert parse_define("a=b=c") == ("a", "b=c")


def test_env_and_ldd_globals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKP_TEST_VAR", "from-env")
    assert (
        render_template("{{ env['SKP_TEST_VAR'] }}|{{ env.get('SKP_UNSET', 'd') }}", {}, Path("/p"))
        == "from-env|d"
    )
    libs = render_template("{{ ldd('/bin/sh') | join(' ') }}", {}, Path("/p")).split()
    assert libs and all(lib.startswith("/") for lib in libs) and any("libc.so" in lib for lib in libs)


def test_gramine_globals_and_shadowing(tmp_path: Path) -> None:
    pkglibdir = tmp_path / "lib" / "gramine"
    text = render_template(
        "{{ gramine.runtimedir() }}|{{ gramine.runtimedir }}|{{ gramine.runtimedir('musl') }}|"
        "{{ gramine.libos }}|{{ gramine.pkglibdir }}",
        {},
        pkglibdir,
    )
    glibc = (pkglibdir / "runtime" / "glibc").resolve()
    assert text.split("|") == [
        str(glibc), str(glibc), str((pkglibdir / "runtime" / "musl").resolve()),
        str(pkglibdir / "libsysdb.so"), str(pkglibdir),
    ]  # fmt: skip
    assert render_template("{{ gramine }}", {"gramine": "mine"}, pkglibdir) == "mine"
    with pytest.raises(ManifestError):
        render_template("{{ gramine.runtimedir('uclibc') }}", {}, pkglibdir)


def test_python_get_sys_path_asks_the_target_interpreter() -> None:
    text = render_template(
        "{% for p in python.get_sys_path('python3') %}{{ p }};{% endfor %}", {}, Path("/p")
    )
    paths = [p for p in text.split(";") if p]
    assert paths and all(Path(p).exists() for p in paths)


def test_keep_trailing_newline_and_no_escaping() -> None:
    assert render_template('a = "<&>"\n', {}, Path("/p")) == 'a = "<&>"\n'


# --- defaults and schema ----------------------------------------------------------------------------------


def test_manifest_defaults_in_gramines_order(tmp_path: Path) -> None:
    manifest, left = _render(tmp_path, MINIMAL)
    sgx = manifest["sgx"]
    assert isinstance(sgx, dict)
    assert list(sgx) == [
        "trusted_files", "max_threads", "isvprodid", "isvsvn", "remote_attestation", "debug",
        "enable_stats", "edmm_enable", "enclave_size", "use_exinfo", "cpu_features",
    ]  # fmt: skip
    assert (sgx["max_threads"], sgx["enclave_size"], sgx["remote_attestation"]) == (4, "256M", "none")
    assert sgx["cpu_features"] == {
        "avx": "unspecified", "avx512": "unspecified", "amx": "unspecified", "mpx": "disabled", "pkru": "disabled",
    }  # fmt: skip
    assert left == ["loader.entrypoint"]
    edmm, _ = _render(tmp_path, MINIMAL + "sgx.edmm_enable = true\n")
    assert edmm["sgx"]["enclave_size"] == "1024G"  # type: ignore[index]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("sgx.insecure__nope = true\n", "sgx.insecure__nope is not a manifest key"),
        ('sgx.remote_attestation = "epid"\n', "sgx.remote_attestation must be one of"),
        ("sgx.debug = 1\n", "sgx.debug must be a boolean"),
        ('loader.entrypoint = "file:/x"\n', "loader.entrypoint must be a table"),
        ("loader.env.X = 3\n", "loader.env.X must be a string"),
        ("unknown.key = 1\n", "unknown is not a manifest key"),
        ('fs.mounts = [{ type = "overlay", path = "/x", uri = "file:/x" }]\n', "unknown mount type"),
    ],
)
def test_schema_rejects_what_gramine_rejects(tmp_path: Path, extra: str, message: str) -> None:
    text = MINIMAL if "fs.mounts" not in extra else 'libos.entrypoint = "/x"\n'
    with pytest.raises(ManifestError, match=message):
        _render(tmp_path, text + extra)


def test_required_tables(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="fs is required"):
        _render(tmp_path, 'libos.entrypoint = "/x"\nloader.log_level = "error"\n')


# --- trusted files ----------------------------------------------------------------------------------------


def test_directories_expand_sorted_hashed_symlinked_dirs_skipped(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "b").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"a")
    (tree / ".hidden").write_bytes(b"h")
    (tree / "b" / "c.txt").write_bytes(b"c")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (tree / "linked-dir").symlink_to(outside)
    (tree / "linked-file").symlink_to(tree / "a.txt")
    text = MINIMAL + f'sgx.trusted_files = ["file:{tree}/", "file:{tree}/a.txt"]\n'
    manifest, left = _render(tmp_path, text)
    entries = manifest["sgx"]["trusted_files"]  # type: ignore[index]
    hashed = [(e["uri"], e.get("sha256")) for e in entries]
    assert hashed == [
        (f"file:{tree}/.hidden", _sha(b"h")),
        (f"file:{tree}/a.txt", _sha(b"a")),
        (f"file:{tree}/b/c.txt", _sha(b"c")),
        (f"file:{tree}/linked-file", _sha(b"a")),
    ]
    assert left == ["loader.entrypoint"]


def test_uri_slash_must_match_the_file_type(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(ManifestError, match="does not end with"):
        _render(tmp_path, MINIMAL + f'sgx.trusted_files = ["file:{tmp_path}/d"]\n')
    with pytest.raises(ManifestError, match="is not a directory"):
        _render(tmp_path, MINIMAL + f'sgx.trusted_files = ["file:{tmp_path}/f/"]\n')
    with pytest.raises(ManifestError, match="No such file"):
        _render(tmp_path, MINIMAL + f'sgx.trusted_files = ["file:{tmp_path}/missing"]\n')


def test_conflicting_hashes_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    text = (
        MINIMAL
        + f'sgx.trusted_files = ["file:{tmp_path}/f", {{ uri = "file:{tmp_path}/f", sha256 = "{"0" * 64}" }}]\n'
    )
    with pytest.raises(ManifestError, match="two different hashes"):
        _render(tmp_path, text)


def test_gramine_provided_entries_are_left_or_measured(tmp_path: Path) -> None:
    pkglibdir = tmp_path / "gramine"
    template = tmp_path / "t"
    template.write_text(MINIMAL + 'sgx.trusted_files = ["file:{{ gramine.runtimedir() }}/"]\n')
    _, left = render(template, {}, pkglibdir)
    assert left == ["loader.entrypoint", f"file:{(pkglibdir / 'runtime' / 'glibc').resolve()}/"]
    (pkglibdir / "runtime" / "glibc").mkdir(parents=True)
    (pkglibdir / "runtime" / "glibc" / "libc.so.6").write_bytes(b"libc")
    (pkglibdir / "libsysdb.so").write_bytes(b"libos")
    text, left = render(template, {}, pkglibdir)
    manifest = tomllib.loads(text)
    assert left == []
    assert manifest["loader"]["entrypoint"] == {
        "uri": f"file:{pkglibdir}/libsysdb.so",
        "sha256": _sha(b"libos"),
    }
    assert manifest["sgx"]["trusted_files"][0]["sha256"] == _sha(b"libc")


def test_the_real_gramine_manifest_renders_the_template_the_same(tmp_path: Path) -> None:
    """Where Gramine is installed, both renderers must produce the same manifest for the project's
    template (compared parsed: key order and formatting come from each side's tomli_w). Elsewhere the
    comparison cannot run; docs/deploy.md says how it is done on a Gramine host."""
    tool = shutil.which("gramine-manifest")
    if tool is None:
        pytest.skip("gramine-manifest is not installed: the two-renderer comparison runs where Gramine is")
    repo = Path(__file__).resolve().parent.parent
    template = repo / "gramine" / "sealing-key-provider.manifest.template"
    prefix = tmp_path / "prefix"
    for rel in ("bin/python3", "etc/config.toml", "etc/hosts", "etc/nsswitch.conf"):
        (prefix / rel).parent.mkdir(parents=True, exist_ok=True)
        (prefix / rel).write_bytes(rel.encode())
    variables = {"prefix": str(prefix), "log_level": "error", "isvprodid": "0", "isvsvn": "1"}
    theirs = subprocess.run(
        [tool, *(f"-D{k}={v}" for k, v in variables.items()), str(template), str(tmp_path / "theirs")],
        check=True,
        capture_output=True,
    )
    assert theirs.returncode == 0
    pkglibdir = Path(os.environ.get("GRAMINE_PKGLIBDIR", "/usr/lib/x86_64-linux-gnu/gramine"))
    ours, _ = render(template, variables, pkglibdir)
    assert tomllib.loads(ours) == tomllib.loads((tmp_path / "theirs").read_text())


# --- the measurement preview ------------------------------------------------------------------------------


def test_preview_covers_every_trusted_file_and_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_bytes(b"one")
    template = tmp_path / "t"
    template.write_text(
        MINIMAL + f'sgx.trusted_files = ["file:{tmp_path}/tree/", "file:{{{{ gramine.runtimedir() }}}}/"]\n'
    )
    manifest = tmp_path / "m.manifest"
    manifest.write_text(render(template, {}, tmp_path / "none")[0])
    text, digest = measure.preview(manifest)
    lines = text.splitlines()
    assert f"{_sha(b'one')} {tmp_path}/tree/f" in lines
    assert any(line.startswith("gramine file:") for line in lines)
    assert f"{_sha(manifest.read_bytes())} manifest" in lines
    assert lines[-1] == f"{digest} preview-digest"
    body = "".join(
        f"{line}\n" for line in lines if not line.startswith("#") and not line.endswith("preview-digest")
    )
    assert digest == _sha(body.encode())
    out = tmp_path / "preview.txt"
    out.write_text(text)
    assert measure.read_digest(out).hex() == digest
    # A trusted file that changed after rendering is refused, as Gramine would refuse to open it.
    (tmp_path / "tree" / "f").write_bytes(b"two")
    with pytest.raises(measure.MeasureError, match="changed since the manifest was rendered"):
        measure.preview(manifest)


def test_read_digest_refuses_a_file_without_one(tmp_path: Path) -> None:
    bad = tmp_path / "p"
    bad.write_text("# nothing\nabc manifest\n")
    with pytest.raises(measure.MeasureError):
        measure.read_digest(bad)
