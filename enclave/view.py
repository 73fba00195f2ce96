"""Stage two of the dry run: build the enclave's file view in a private mount namespace, then exec.

``python -m enclave.view PLAN.json`` runs as the enclave process itself: it enters a new mount
namespace (``unshare(CLONE_NEWNS)``; the caller already made it root, really or in a user namespace),
mounts an empty tmpfs as the new root, applies the plan's operations in order (read-only bind mounts
of host files and directories, tmpfs mounts, small generated files, pseudo-devices), pivots into it,
makes the root read-only, drops to ``nobody`` when it really is root, and ``execve``\\s the manifest's
entrypoint with exactly the manifest's argv and environment. Its PID is the enclave's, so the caller's
signals reach the provider directly. The plan is computed by :mod:`enclave.dryrun`; this module only
applies it, with the standard library alone (it runs before anything else is set up).
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Final

CLONE_NEWNS: Final = 0x00020000
MS_RDONLY: Final = 0x1
MS_NOSUID: Final = 0x2
MS_NODEV: Final = 0x4
MS_NOEXEC: Final = 0x8
MS_REMOUNT: Final = 0x20
MS_BIND: Final = 0x1000
MS_REC: Final = 0x4000
MS_PRIVATE: Final = 1 << 18
MNT_DETACH: Final = 0x2
ST_FLAGS: Final = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC))
SYS_PIVOT_ROOT: Final = {"x86_64": 155, "aarch64": 41}
NOBODY: Final = 65534

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            None if source is None else os.fsencode(source),
            os.fsencode(target),
            None if fstype is None else fstype.encode(),
            ctypes.c_ulong(flags),
            None if data is None else data.encode(),
        ),
        f"mount {source} on {target}",
    )


def bind(source: str, target: str, *, readonly: bool, recursive: bool = False) -> None:
    """Bind ``source`` on ``target``; read-only with a remount that keeps the source's locked flags."""
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    if readonly:
        locked = 0
        st = os.statvfs(source)
        for st_flag, ms_flag in ST_FLAGS:
            if st.f_flag & st_flag:
                locked |= ms_flag
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | locked)


def _make_point(path: Path, is_file: bool) -> None:
    if is_file:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.touch()
    else:
        path.mkdir(parents=True, exist_ok=True)


def apply(plan: dict[str, Any]) -> None:
    """Build the view at ``plan['root']`` (inside the new mount namespace) and pivot into it."""
    root = Path(plan["root"])
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", str(root), "tmpfs", MS_NOSUID, "mode=0755,size=64m")
    for op in plan["ops"]:
        target = root / op["path"].lstrip("/")
        kind = op["op"]
        if kind == "bind":
            _make_point(target, not Path(op["source"]).is_dir())
            bind(
                op["source"],
                str(target),
                readonly=op.get("readonly", True),
                recursive=op.get("recursive", False),
            )
        elif kind == "tmpfs":
            _make_point(target, False)
            mount(
                "tmpfs", str(target), "tmpfs", MS_NOSUID | MS_NODEV, op.get("options", "mode=1777,size=64m")
            )
        elif kind == "file":
            _make_point(target.parent, False)
            target.write_text(op["content"])
            os.chmod(target, 0o644)
        elif kind == "dir":
            _make_point(target, False)
        elif kind == "symlink":
            _make_point(target.parent, False)
            os.symlink(op["target"], target)
        else:
            raise ValueError(f"unknown view operation {kind!r}")
    os.chdir(root)
    old = root / ".old-root"
    old.mkdir()
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(0, f"pivot_root: no syscall number known for {platform.machine()}")
    _check(_libc.syscall(number, b".", b".old-root"), "pivot_root")
    os.chdir("/")
    _check(_libc.umount2(b"/.old-root", MNT_DETACH), "umount the old root")
    os.rmdir("/.old-root")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m enclave.view PLAN.json", file=sys.stderr)
        return 2
    plan = json.loads(Path(args[0]).read_text())
    try:
        apply(plan)
    except OSError as e:
        print(f"dry run: cannot build the enclave view: {e}", file=sys.stderr)
        return 125
    if plan.get("drop_privileges") and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    run = plan["exec"]
    os.chdir(run.get("cwd", "/"))
    try:
        os.execve(run["path"], run["argv"], run["env"])  # noqa: S606 (the manifest's exact argv, no shell)
    except OSError as e:
        print(f"dry run: cannot execute {run['path']} in the enclave view: {e.strerror}", file=sys.stderr)
        return 127
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
