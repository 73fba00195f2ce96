"""The enclave tree: everything the enclave runs, installed at one fixed prefix.

Layout (``PREFIX`` defaults to ``/opt/sealing-key-provider``)::

    bin/python3                 the interpreter (a copy of the build interpreter's binary)
    lib/python3.X/              its standard library, minus what the provider never imports
    lib/sys/                    the shared libraries they load, except the C library family that
                                Gramine supplies from its runtime directory
    site-packages/              the locked dependencies (--require-hashes) and this project's wheel
    etc/                        the measured configuration (config.toml, hosts, nsswitch.conf and,
                                with PCCS_CA=, pccs-ca.pem)

Everything that could vary between two builds of one commit is removed or fixed here: no byte code
(``__pycache__``; the enclave's file system is read-only and ``PYTHONDONTWRITEBYTECODE`` is set), no
``direct_url.json`` (it names the checkout's path), no ``RECORD``/``INSTALLER``/``REQUESTED``, no
console scripts (their ``#!`` line names the build interpreter); dependencies' own ``tests``
packages are removed too (code the provider never imports is still code the enclave would trust). The project's wheel is built from a
clean copy of ``src/`` so that stale build output can never enter it, and without :data:`EXCLUDED`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

PACKAGE: Final = "sealing_key_provider"

#: Code that must never be in the enclave: the simulator (platform, quoting enclaves, simulated PCCS,
#: test PKI), the demo and the commands that drive them. Paths relative to ``src/``; a directory ends
#: in ``/``. This is the one list: the wheel build, the tests and the dry run all read it from here.
EXCLUDED: Final = (
    f"{PACKAGE}/sim/",
    f"{PACKAGE}/demo.py",
    f"{PACKAGE}/cli/sim.py",
    f"{PACKAGE}/cli/demo.py",
)

#: Standard-library parts the provider never imports (GUI, tests, installers, REPL tooling).
STDLIB_EXCLUDED: Final = frozenset(
    {
        "site-packages",
        "dist-packages",
        "__pycache__",
        "test",
        "tests",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "pydoc_data",
        "venv",
        "turtle.py",
        "sqlite3",
        "curses",
    }
)
#: ... and extension modules (with the libraries they would pull in: ncurses, readline, sqlite, NIS).
_STDLIB_EXCLUDED_RE: Final = re.compile(
    r"^(config-3\.\d+.*|(_tkinter|_test.*|_ctypes_test|xxlimited.*|xxsubtype|readline|_curses.*|_sqlite3|nis|"
    r"_dbm|_gdbm|_crypt)\..*\.so)$"
)

#: Libraries of the C library that Gramine provides from ``gramine.runtimedir()`` (mounted at /lib).
RUNTIME_LIBS_RE: Final = re.compile(
    r"^(ld-linux.*|libc|libm|libmvec|libpthread|libdl|librt|libresolv|libutil|libanl|libnss_[a-z]+|"
    r"libBrokenLocale|libthread_db)\.so(\.\d+)*$"
)
#: Marks a directory as an enclave tree, so a rebuild may replace it (and nothing else).
MARKER: Final = ".enclave-tree"
_DIST_INFO_DROP: Final = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")


def is_excluded(relpath: str) -> bool:
    """Whether a path relative to ``src/`` (or to site-packages) is excluded from the enclave."""
    return any(relpath == e or (e.endswith("/") and relpath.startswith(e)) for e in EXCLUDED)


def interpreter_facts(python: str) -> dict[str, str]:
    """What the tree needs to know about the enclave's interpreter, asked from the interpreter itself."""
    code = (
        "import json, sys, sysconfig; p = sysconfig.get_paths(); print(json.dumps({"
        "'executable': sys.executable, 'stdlib': p['stdlib'], 'platstdlib': p['platstdlib'], "
        "'version': '%d.%d' % sys.version_info[:2], 'nodot': '%d%d' % sys.version_info[:2], "
        "'implementation': sys.implementation.name}))"
    )
    out = subprocess.run([python, "-I", "-S", "-c", code], check=True, capture_output=True, text=True)
    facts: dict[str, str] = json.loads(out.stdout)
    if facts["implementation"] != "cpython":
        raise SystemExit(f"{python}: the enclave tree needs CPython, not {facts['implementation']}")
    facts["binary"] = os.path.realpath(facts["executable"])
    return facts


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o755 if os.access(src, os.X_OK) else 0o644)


def copy_stdlib(stdlib: Path, dest: Path) -> int:
    """Copy the standard library (regular files, symlinks followed), minus :data:`STDLIB_EXCLUDED`."""
    count = 0
    for root, dirs, files in os.walk(stdlib, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in STDLIB_EXCLUDED and not _STDLIB_EXCLUDED_RE.match(d))
        rel = Path(root).relative_to(stdlib)
        for name in sorted(files):
            if name in STDLIB_EXCLUDED or _STDLIB_EXCLUDED_RE.match(name) or name.endswith((".pyc", ".pyo")):
                continue
            src = Path(root) / name
            if src.is_file():
                _copy_file(src, dest / rel / name)
                count += 1
    return count


def elf_files(tree: Path) -> Iterator[Path]:
    """Shared objects and executables in ``tree`` (by ELF magic, not by name)."""
    for path in sorted(tree.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    yield path


_LDD_LINE = re.compile(r"^\s*(\S+)\s+=>\s+(\S+)\s+\(0x[0-9a-f]+\)$")


def needed_libraries(binaries: Iterable[Path], tree: Path) -> dict[str, Path]:
    """soname → host path of every library ``binaries`` load that is neither in ``tree`` nor part of
    the C library Gramine supplies. ``ldd`` resolves them exactly as the host's loader would."""
    out: dict[str, Path] = {}
    for binary in binaries:
        result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            if "not a dynamic executable" in result.stdout + result.stderr:
                continue
            raise SystemExit(f"ldd {binary} failed: {result.stderr.strip()}")
        for line in result.stdout.splitlines():
            if "not found" in line:
                raise SystemExit(f"{binary}: a library it needs is not installed: {line.strip()}")
            m = _LDD_LINE.match(line)
            if not m:
                continue
            soname, path = m.group(1), Path(m.group(2))
            if RUNTIME_LIBS_RE.match(soname) or path.resolve().is_relative_to(tree.resolve()):
                continue
            out.setdefault(soname, path)
    return out


def build_wheel(source: Path, out_dir: Path, constraints: Path) -> Path:
    """This project's wheel from a clean copy of the checkout, without :data:`EXCLUDED`.

    The build backend is pinned through ``constraints.txt`` (pip's ``--build-constraint``), so the
    wheel's metadata does not depend on the day's setuptools release.
    """
    with tempfile.TemporaryDirectory(prefix="skp-wheel-") as tmp:
        work = Path(tmp) / "project"
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (source / name).exists():
                _copy_file(source / name, work / name)
        src = source / "src"
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src).as_posix()
            if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(".egg-info"):
                if ".egg-info" in rel or is_excluded(rel):
                    continue
                _copy_file(path, work / "src" / rel)
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.glob("*.whl"):
            old.unlink()
        subprocess.run(
            [
                sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--build-constraint",
                str(constraints.resolve()), "-w", str(out_dir), str(work),
            ],
            check=True,
            env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"},
        )  # fmt: skip
    wheels = sorted(out_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel in {out_dir}, found {len(wheels)}")
    return wheels[0]


def pip_install(lock: Path, wheel: Path, site: Path, facts: dict[str, str], wheelhouse: Path) -> None:
    """The locked dependencies (hashes required, wheels only, for the enclave's interpreter) and the
    project's wheel, into ``site`` with no byte code and no scripts."""
    target = [
        "--only-binary=:all:", "--python-version", facts["version"], "--implementation", "cp",
        "--abi", f"cp{facts['nodot']}", "--abi", "abi3", "--abi", "none",
    ]  # fmt: skip
    pip = [sys.executable, "-m", "pip", "--quiet"]
    subprocess.run(
        [*pip, "download", "--no-deps", "--require-hashes", "-r", str(lock), "-d", str(wheelhouse), *target],
        check=True,
    )
    subprocess.run(
        [
            *pip, "install", "--no-deps", "--require-hashes", "--no-index", "--find-links", str(wheelhouse),
            "--no-compile", "--target", str(site), "-r", str(lock), *target,
        ],
        check=True,
    )  # fmt: skip
    shutil.rmtree(site / "bin", ignore_errors=True)  # scripts are never kept (normalize_tree)
    subprocess.run(
        [
            *pip,
            "install",
            "--no-deps",
            "--no-index",
            "--no-compile",
            "--target",
            str(site),
            str(wheel),
            *target,
        ],
        check=True,
    )


def normalize_tree(prefix: Path, site: Path) -> None:
    """Remove what varies by path or time (see the module docstring) and what is not needed."""
    shutil.rmtree(site / "bin", ignore_errors=True)
    for tests in sorted(p for p in site.rglob("*") if p.is_dir() and p.name in ("test", "tests")):
        shutil.rmtree(tests, ignore_errors=True)  # dependencies' own test suites: never imported
    for cache in sorted(prefix.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)
    for pyc in prefix.rglob("*.py[co]"):
        pyc.unlink()
    for dist_info in site.glob("*.dist-info"):
        for name in _DIST_INFO_DROP:
            (dist_info / name).unlink(missing_ok=True)
    for path in prefix.rglob("*"):
        if path.is_symlink():
            raise SystemExit(f"{path}: symlinks are not allowed in the enclave tree")
        if path.is_dir():
            os.chmod(path, 0o755)
        elif path.is_file():
            os.chmod(path, 0o755 if os.access(path, os.X_OK) else 0o644)


def build(
    *,
    prefix: Path,
    python: str,
    lock: Path,
    wheel: Path,
    config: Path,
    hosts: Path,
    nsswitch: Path,
    wheelhouse: Path,
    pccs_ca: Path | None = None,
) -> None:
    """Build the enclave tree at ``prefix`` from scratch (an existing tree there is replaced)."""
    facts = interpreter_facts(python)
    if prefix.exists():
        if not (prefix / MARKER).exists() and any(prefix.iterdir()):
            raise SystemExit(f"{prefix} exists and is not an enclave tree: refusing to replace it")
        shutil.rmtree(prefix)
    prefix.mkdir(parents=True)
    (prefix / MARKER).write_text(
        "An enclave tree of gramine-sealing-key-provider: `make SGX=1 enclave-tree` replaces it.\n"
    )
    site = prefix / "site-packages"
    pylib = prefix / "lib" / f"python{facts['version']}"
    _copy_file(Path(facts["binary"]), prefix / "bin" / "python3")
    n = copy_stdlib(Path(facts["stdlib"]), pylib)
    if facts["platstdlib"] != facts["stdlib"]:
        n += copy_stdlib(Path(facts["platstdlib"]), pylib)
    pip_install(lock, wheel, site, facts, wheelhouse)
    for name in sorted(os.listdir(site)):
        if is_excluded(name) or is_excluded(name + "/"):
            raise SystemExit(f"{site / name}: excluded code reached the enclave tree")
    for excluded in EXCLUDED:
        if (site / excluded.rstrip("/")).exists():
            raise SystemExit(f"{site / excluded}: excluded code reached the enclave tree")
    libs = needed_libraries(elf_files(prefix), prefix)
    for soname, path in sorted(libs.items()):
        _copy_file(path, prefix / "lib" / "sys" / soname)
    # The copied libraries may need more libraries in turn.
    more = needed_libraries(sorted((prefix / "lib" / "sys").glob("*")), prefix)
    for soname, path in sorted(more.items()):
        _copy_file(path, prefix / "lib" / "sys" / soname)
    _copy_file(config, prefix / "etc" / "config.toml")
    _copy_file(hosts, prefix / "etc" / "hosts")
    _copy_file(nsswitch, prefix / "etc" / "nsswitch.conf")
    if pccs_ca is not None:
        _copy_file(pccs_ca, prefix / "etc" / "pccs-ca.pem")
    normalize_tree(prefix, site)
    files = sum(1 for p in prefix.rglob("*") if p.is_file())
    print(
        f"enclave tree {prefix}: python {facts['version']} from {facts['binary']}, {n} stdlib files, "
        f"{len(libs) + len(more)} system libraries, {files} files in all"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m enclave.tree", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("wheel", help="build this project's enclave wheel from a clean copy")
    w.add_argument("--source", type=Path, default=Path())
    w.add_argument("--out", type=Path, required=True)
    w.add_argument("--constraints", type=Path, default=Path("constraints.txt"))
    b = sub.add_parser("install", help="build the enclave tree at PREFIX")
    b.add_argument("--prefix", type=Path, required=True)
    b.add_argument("--python", required=True, help="the interpreter the enclave runs")
    b.add_argument("--lock", type=Path, required=True)
    b.add_argument("--wheel-dir", type=Path, required=True)
    b.add_argument("--config", type=Path, required=True)
    b.add_argument("--hosts", type=Path, required=True)
    b.add_argument("--nsswitch", type=Path, required=True)
    b.add_argument("--wheelhouse", type=Path, required=True)
    b.add_argument("--pccs-ca", type=Path, help="CA of a self-signed PCCS: etc/pccs-ca.pem, measured")
    args = parser.parse_args(argv)
    if args.command == "wheel":
        print(build_wheel(args.source, args.out, args.constraints))
        return 0
    if not args.prefix.is_absolute():
        raise SystemExit("PREFIX must be an absolute path: the manifest names it")
    wheels = sorted(args.wheel_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel in {args.wheel_dir}, found {len(wheels)}")
    build(
        prefix=args.prefix,
        python=args.python,
        lock=args.lock,
        wheel=wheels[0],
        config=args.config,
        hosts=args.hosts,
        nsswitch=args.nsswitch,
        wheelhouse=args.wheelhouse,
        pccs_ca=args.pccs_ca,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
