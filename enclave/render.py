"""A ``gramine-manifest`` for machines without Gramine: render, fill defaults, check, hash.

It reproduces the parts of Gramine's renderer (graminelibos, v1.8+) that a template can observe:

- Jinja2 with ``StrictUndefined``, ``keep_trailing_newline``, no autoescape; ``-D key=value`` gives a
  string variable, ``-D key`` gives ``True``;
- the globals ``gramine`` (``libos``, ``pkglibdir``, ``runtimedir(libc='glibc')``), ``python``
  (``stdlib``, ``platstdlib``, ``purelib``, ``distlib``, ``get_sys_path``, ``get_path``,
  ``get_paths``, ``get_config_var``, ``ext_suffix``, ``implementation``), ``env`` and ``ldd``;
- the defaults the ``Manifest`` constructor fills in (``sgx.*``, string trusted files become tables);
- the schema check for every key this project's template can produce (unknown keys are errors);
- trusted-file expansion: directories (URI ending in ``/``) walked in sorted order, symlinked
  directories skipped, every file SHA-256 hashed, duplicates merged;
- ``tomli_w`` output.

What only an installed Gramine knows is a variable: ``--pkglibdir`` (its library directory, the
Debian path by default). When that directory does not exist here, the runtime directory's trusted
entry stays a directory entry without hashes and ``loader.entrypoint`` is left for
``gramine-sgx-sign`` to fill in; the renderer says so on stderr, and the measurement preview lists
the entry as "provided by Gramine". Everything else is rendered as ``gramine-manifest`` would.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import jinja2
import tomli_w

DEFAULT_PKGLIBDIR: Final = "/usr/lib/x86_64-linux-gnu/gramine"
DEFAULT_ENCLAVE_SIZE_NO_EDMM: Final = "256M"
DEFAULT_ENCLAVE_SIZE_WITH_EDMM: Final = "1024G"
DEFAULT_THREAD_NUM: Final = 4


class ManifestError(Exception):
    """The template or the manifest it produced is not one Gramine would accept."""


class RuntimeDir:
    """``gramine.runtimedir``: callable (``runtimedir('musl')``) and usable as a path itself."""

    def __init__(self, pkglibdir: Path) -> None:
        self._pkglibdir = pkglibdir

    def __call__(self, libc: str = "glibc") -> Path:
        if libc not in ("glibc", "musl"):
            raise ManifestError(f"gramine.runtimedir: unknown libc {libc!r}")
        return (self._pkglibdir / "runtime" / libc).resolve()

    def __str__(self) -> str:
        return str(self())

    def __truediv__(self, other: str) -> Path:
        return self() / other


class GramineGlobals:
    """The ``gramine`` template global."""

    def __init__(self, pkglibdir: Path) -> None:
        self.pkglibdir = pkglibdir
        self.libos = pkglibdir / "libsysdb.so"
        self.runtimedir = RuntimeDir(pkglibdir)


def get_sys_path(interpreter: str, include_nonexisting: bool = False) -> Iterator[Path]:
    """``python.get_sys_path``: the *target* interpreter's ``sys.path``, as it reports it."""
    out = subprocess.run(
        [interpreter, "-c", "import sys; print('\\0'.join(sys.path), end='')"],
        check=True,
        capture_output=True,
    ).stdout.decode()
    for entry in out.split("\0"):
        if entry and (include_nonexisting or Path(entry).exists()):
            yield Path(entry)


class PythonGlobals:
    """The ``python`` template global: paths of the Python running the renderer, like Gramine's."""

    def __init__(self) -> None:
        paths = sysconfig.get_paths()
        self.stdlib = Path(paths["stdlib"])
        self.platstdlib = Path(paths["platstdlib"])
        self.purelib = Path(paths["purelib"])
        self.distlib = Path(sysconfig.get_path("stdlib", vars={"py_version_short": "3"})) / "dist-packages"
        self.get_sys_path = get_sys_path
        self.get_path = sysconfig.get_path
        self.get_paths = sysconfig.get_paths
        self.get_config_var = sysconfig.get_config_var
        self.ext_suffix = sysconfig.get_config_var("EXT_SUFFIX")
        self.implementation = sys.implementation


def ldd(*binaries: str | Path) -> list[str]:
    """``ldd(...)``: sorted, de-duplicated absolute paths of the libraries the binaries load."""
    found: set[str] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
                found.add(parts[2])
            elif parts and parts[0].startswith("/"):
                found.add(parts[0])
    return sorted(found)


def render_template(template: str, variables: Mapping[str, object], pkglibdir: Path) -> str:
    """Render like ``gramine-manifest``: variables shadow the globals of the same name."""
    # TOML, not HTML: escaping would change the manifest, and Gramine's renderer does not escape.
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701
    )
    env.globals.update(
        {"gramine": GramineGlobals(pkglibdir), "python": PythonGlobals(), "env": os.environ, "ldd": ldd}
    )
    return env.from_string(template).render(**variables)


def apply_defaults(manifest: dict[str, Any]) -> dict[str, Any]:
    """What graminelibos' ``Manifest`` constructor adds, in its order (tomli_w keeps dict order)."""
    sgx = manifest.setdefault("sgx", {})
    sgx.setdefault("trusted_files", [])
    sgx.setdefault("max_threads", DEFAULT_THREAD_NUM)
    sgx.setdefault("isvprodid", 0)
    sgx.setdefault("isvsvn", 0)
    sgx.setdefault("remote_attestation", "none")
    sgx.setdefault("debug", False)
    sgx.setdefault("enable_stats", False)
    sgx.setdefault("edmm_enable", False)
    sgx.setdefault(
        "enclave_size", DEFAULT_ENCLAVE_SIZE_WITH_EDMM if sgx["edmm_enable"] else DEFAULT_ENCLAVE_SIZE_NO_EDMM
    )
    sgx.setdefault("use_exinfo", False)
    features = sgx.setdefault("cpu_features", {})
    for key, default in (
        ("avx", "unspecified"),
        ("avx512", "unspecified"),
        ("amx", "unspecified"),
        ("mpx", "disabled"),
        ("pkru", "disabled"),
    ):
        features.setdefault(key, default)
    if not isinstance(sgx["trusted_files"], list):
        raise ManifestError("sgx.trusted_files must be a list")
    files = []
    for entry in sgx["trusted_files"]:
        if isinstance(entry, str):
            files.append({"uri": entry})
        elif isinstance(entry, dict) and "uri" in entry:
            files.append(entry)
        else:
            raise ManifestError(f"unknown trusted file format: {entry!r}")
    sgx["trusted_files"] = files
    return manifest


# --- schema (the subset of graminelibos' manifest_check a template of this project can reach) ---------

_BOOL, _INT, _STR = bool, int, str
_SCHEMA: Final[dict[str, Any]] = {
    "libos": {"entrypoint": _STR, "check_invalid_pointers": _BOOL},
    "loader": {
        "entrypoint": {"uri": _STR, "sha256": _STR},
        "argv": [_STR],
        "argv_src_file": _STR,
        "env": "env",
        "env_src_file": _STR,
        "uid": _INT,
        "gid": _INT,
        "insecure__use_cmdline_argv": _BOOL,
        "insecure__use_host_env": _BOOL,
        "insecure__disable_aslr": _BOOL,
        "log_file": _STR,
        "log_level": ("none", "error", "warning", "debug", "trace", "all"),
    },
    "fs": {"mounts": "mounts", "root": "mount", "start_dir": _STR, "insecure__keys": "strmap"},
    "sys": {
        "enable_sigterm_injection": _BOOL,
        "enable_extra_runtime_domain_names_conf": _BOOL,
        "disallow_subprocesses": _BOOL,
        "experimental__enable_flock": _BOOL,
        "insecure__allow_eventfd": _BOOL,
        "stack": {"size": _STR},
        "brk": {"max_size": _STR},
        "fds": {"limit": _INT},
    },
    "sgx": {
        "allowed_files": [_STR],
        "trusted_files": "trusted",
        "enclave_size": _STR,
        "max_threads": _INT,
        "isvprodid": _INT,
        "isvsvn": _INT,
        "insecure__rpc_thread_num": _INT,
        "seal_key": {"flags_mask": _STR, "xfrm_mask": _STR, "misc_mask": _STR},
        "file_check_policy": ("strict", "allow_all_but_log"),
        "remote_attestation": ("none", "dcap"),
        "cpu_features": {
            "avx": ("unspecified", "disabled", "required"),
            "avx512": ("unspecified", "disabled", "required"),
            "amx": ("unspecified", "disabled", "required"),
            "mpx": ("disabled", "required"),
            "pkru": ("disabled", "required"),
        },
        "debug": _BOOL,
        "edmm_enable": _BOOL,
        "enable_stats": _BOOL,
        "preheat_enclave": _BOOL,
        "use_exinfo": _BOOL,
        "vtune_profile": _BOOL,
        "insecure__allow_memfaults_without_exinfo": _BOOL,
    },
}
_REQUIRED_TOP: Final = ("fs", "libos", "loader")


def _check(value: object, schema: object, where: str) -> None:
    if schema is bool:
        if not isinstance(value, bool):
            raise ManifestError(f"{where} must be a boolean")
    elif schema is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ManifestError(f"{where} must be an integer")
    elif schema is str:
        if not isinstance(value, str):
            raise ManifestError(f"{where} must be a string")
    elif isinstance(schema, tuple):
        if value not in schema:
            raise ManifestError(f"{where} must be one of {', '.join(schema)}, got {value!r}")
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise ManifestError(f"{where} must be a list")
        for i, item in enumerate(value):
            _check(item, schema[0], f"{where}[{i}]")
    elif isinstance(schema, dict):
        if not isinstance(value, dict):
            raise ManifestError(f"{where} must be a table")
        for key, item in value.items():
            if key not in schema:
                raise ManifestError(f"{where}.{key} is not a manifest key Gramine accepts")
            _check(item, schema[key], f"{where}.{key}")
    elif schema == "env":
        _check_env(value, where)
    elif schema in ("mounts", "mount"):
        if schema == "mounts":
            if not isinstance(value, list):
                raise ManifestError(f"{where} must be a list")
            for i, mount in enumerate(value):
                _check_mount(mount, f"{where}[{i}]", True)
        else:
            _check_mount(value, where, False)
    elif schema == "strmap":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ManifestError(f"{where} must map names to strings")
    elif schema == "trusted":
        if not isinstance(value, list):
            raise ManifestError(f"{where} must be a list")
        for i, entry in enumerate(value):
            if not isinstance(entry, dict) or set(entry) - {"uri", "sha256"} or "uri" not in entry:
                raise ManifestError(f"{where}[{i}] must be a URI or {{uri, sha256}}")
            _check(entry, {"uri": _STR, "sha256": _STR}, f"{where}[{i}]")


def _check_env(value: object, where: str) -> None:
    if not isinstance(value, dict):
        raise ManifestError(f"{where} must be a table")
    for name, item in value.items():
        ok = isinstance(item, str) or (
            isinstance(item, dict)
            and (
                (set(item) == {"value"} and isinstance(item["value"], str))
                or (set(item) == {"passthrough"} and item["passthrough"] is True)
            )
        )
        if not ok:
            raise ManifestError(f"{where}.{name} must be a string, {{value = ...}} or {{passthrough = true}}")


def _check_mount(mount: object, where: str, needs_path: bool) -> None:
    if not isinstance(mount, dict):
        raise ManifestError(f"{where} must be a table")
    kind = mount.get("type", "chroot")
    allowed = {
        "chroot": {"type", "uri", "path"},
        "encrypted": {"type", "uri", "path", "key_name", "enable_recovery"},
        "tmpfs": {"type", "uri", "path"},
        "untrusted_shm": {"type", "uri", "path"},
    }.get(kind)
    if allowed is None:
        raise ManifestError(f"{where}.type: unknown mount type {kind!r}")
    extra = set(mount) - allowed
    if extra:
        raise ManifestError(f"{where}: unknown key(s) {', '.join(sorted(extra))} for a {kind} mount")
    if needs_path and not isinstance(mount.get("path"), str):
        raise ManifestError(f"{where}.path is required")
    if kind != "tmpfs" and not isinstance(mount.get("uri"), str):
        raise ManifestError(f"{where}.uri is required")


def check(manifest: Mapping[str, Any]) -> None:
    """Raise :class:`ManifestError` for anything ``gramine-manifest``'s schema check rejects."""
    for key in manifest:
        if key not in _SCHEMA:
            raise ManifestError(f"{key} is not a manifest key Gramine accepts")
    for key in _REQUIRED_TOP:
        if key not in manifest:
            raise ManifestError(f"{key} is required")
    if "mounts" not in manifest["fs"]:
        raise ManifestError("fs.mounts is required")
    if "entrypoint" not in manifest["libos"]:
        raise ManifestError("libos.entrypoint is required")
    for key, value in manifest.items():
        _check(value, _SCHEMA[key], key)


# --- trusted files ------------------------------------------------------------------------------------


def _uri_path(uri: str) -> Path:
    if not uri.startswith("file:"):
        raise ManifestError(f"unsupported URI type: {uri}")
    return Path(uri[len("file:") :])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _expand(uri: str) -> Iterator[str]:
    path = _uri_path(uri)
    if uri.endswith("/"):
        if not path.is_dir():
            raise ManifestError(f'URI {uri!r} ends with "/" but is not a directory')
        for child in sorted(path.glob("*")):
            if not (child.is_file() or child.is_dir()) or not os.access(child, os.R_OK):
                continue
            if child.is_dir():
                if child.is_symlink():
                    continue
                yield from _expand(f"file:{child}/")
            else:
                yield f"file:{child}"
    else:
        if path.is_dir():
            raise ManifestError(f'directory URI {uri!r} does not end with "/"')
        yield uri


def expand_trusted_files(manifest: dict[str, Any], provided_by_gramine: Path) -> list[str]:
    """Expand and hash ``sgx.trusted_files`` in place; return the entries left to Gramine (URIs under
    ``provided_by_gramine`` that do not exist on this machine)."""
    left: list[str] = []
    out: dict[str, dict[str, str]] = {}
    for entry in manifest["sgx"]["trusted_files"]:
        uri, sha = entry["uri"], entry.get("sha256")
        path = _uri_path(uri)
        if not path.exists() and path.is_relative_to(provided_by_gramine):
            left.append(uri)
            out.setdefault(uri, {"uri": uri})
            continue
        if sha is not None:
            expanded = [(uri, sha)]
        else:
            try:
                expanded = [(u, _sha256(_uri_path(u))) for u in _expand(uri)]
            except FileNotFoundError as e:
                raise ManifestError(f"trusted file {uri}: {e.strerror}: {e.filename}") from None
        for u, digest in expanded:
            old = out.get(u)
            if old is not None and old.get("sha256") not in (None, digest):
                raise ManifestError(f"trusted file {u} listed with two different hashes")
            out[u] = {"uri": u, "sha256": digest}
    manifest["sgx"]["trusted_files"] = list(out.values())
    return left


def render(template_path: Path, variables: Mapping[str, object], pkglibdir: Path) -> tuple[str, list[str]]:
    """The manifest text ``gramine-manifest`` would write, and the entries left to Gramine."""
    text = render_template(template_path.read_text(), variables, pkglibdir)
    try:
        manifest = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"the rendered template is not valid TOML: {e}") from None
    apply_defaults(manifest)
    loader = manifest.setdefault("loader", {})
    libos = pkglibdir / "libsysdb.so"
    if "entrypoint" not in loader and libos.exists():
        loader["entrypoint"] = {"uri": f"file:{libos}", "sha256": _sha256(libos)}
    check(manifest)
    left = expand_trusted_files(manifest, pkglibdir)
    if "entrypoint" not in loader:
        left.insert(0, "loader.entrypoint")
    return tomli_w.dumps(manifest), left


def parse_define(value: str) -> tuple[str, object]:
    key, sep, val = value.partition("=")
    return (key, val) if sep else (key, True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m enclave.render", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-D", "--define", action="append", default=[], type=parse_define, metavar="KEY[=VALUE]"
    )
    parser.add_argument("--pkglibdir", type=Path, default=Path(DEFAULT_PKGLIBDIR))
    parser.add_argument("template", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args(argv)
    try:
        text, left = render(args.template, dict(args.define), args.pkglibdir)
    except (ManifestError, jinja2.TemplateError) as e:
        print(f"error: {args.template}: {e}", file=sys.stderr)
        return 1
    args.output.write_text(text)
    for item in left:
        print(
            f"note: {item} is provided by Gramine, which is not installed here ({args.pkglibdir}); "
            "gramine-manifest/gramine-sgx-sign measure it on the signing host",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
