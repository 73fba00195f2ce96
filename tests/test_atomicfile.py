"""The one atomic file write (``atomicfile``): whole or nothing, exact modes, nothing left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sealing_key_provider.atomicfile import create_exclusive, write_atomically


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_atomically_creates_and_replaces_with_exact_mode(tmp_path: Path) -> None:
    target = tmp_path / "out.pem"
    old = os.umask(0)
    try:
        write_atomically(target, b"one", 0o640)
        assert target.read_bytes() == b"one" and _mode(target) == 0o640
        target.chmod(0o666)
        write_atomically(target, b"two", 0o600)  # the old file's mode does not carry over
    finally:
        os.umask(old)
    assert target.read_bytes() == b"two" and _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["out.pem"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    write_atomically(target, b"old")

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        write_atomically(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_create_exclusive_never_replaces_anything(tmp_path: Path) -> None:
    target = tmp_path / "key"
    assert create_exclusive(target, b"first")
    assert not create_exclusive(target, b"second")
    assert target.read_bytes() == b"first" and _mode(target) == 0o600
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "nowhere")
    assert not create_exclusive(dangling, b"x")
    assert not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key", "link"]


def test_create_exclusive_without_hard_links_falls_back_to_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "state"
    assert create_exclusive(target, b"a", 0o644)
    assert not create_exclusive(target, b"b")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    assert not create_exclusive(tmp_path / "link", b"c")  # a dangling symlink counts as existing
    assert target.read_bytes() == b"a" and _mode(target) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "state"]
