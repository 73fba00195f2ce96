"""Files written whole or not at all: the one way this project writes a file others will read.

Every write goes to a fresh temporary sibling (same directory, so the same file system), gets its
exact mode (``fchmod``: the umask can only clear bits), is fsynced, and is then renamed over the
target (:func:`write_atomically`) or hard-linked to it (:func:`create_exclusive`, which never
replaces anything, not even a dangling symlink). A crash leaves the old file or the new one, never a
half-written one; the temporary file is removed on every failure. The directory is fsynced last, on a
best-effort basis (some file systems refuse it; the file itself is synced either way).

This module imports nothing of the project, so every layer (the simulator's state, the command line)
can use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

#: errno values of a file system without hard links (create_exclusive then falls back to rename).
_NO_LINK_ERRNOS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV})


def _directory(target: Path) -> Path:
    return target.parent if str(target.parent) else Path(".")


def _write_temp(target: Path, data: bytes, mode: int) -> Path:
    """A fully written, fsynced temporary sibling of ``target`` with exactly ``mode``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=_directory(target))
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Create or replace ``path`` with ``data`` and exactly ``mode``; the old file's mode does not
    carry over."""
    target = Path(path)
    tmp = _write_temp(target, data, mode)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(_directory(target))


def create_exclusive(path: str | Path, data: bytes, mode: int = 0o600) -> bool:
    """Create ``path`` with ``data`` unless something (a file, a directory, a symlink, even a
    dangling one) is already there; True if this call created it.

    On a file system without hard links the fallback is a rename after a check, still all-or-nothing
    but a concurrent creator may then win silently (both callers then read the survivor).
    """
    target = Path(path)
    tmp = _write_temp(target, data, mode)
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in _NO_LINK_ERRNOS:
            raise
        if os.path.lexists(target):
            return False
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_directory(_directory(target))
    return True


__all__ = ["create_exclusive", "write_atomically"]
