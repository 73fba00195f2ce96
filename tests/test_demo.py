"""``make demo`` is part of the product: it must keep passing, so CI runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sealing_key_provider.demo import run_demo


def test_demo_holds_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert out.count("[ok]") == 7 and "[FAIL]" not in out
    assert "PLATFORM_MISMATCH" in out and "QUOTE_SIGNATURE_INVALID" in out
    # Every process was stopped: their logs exist and end with a clean shutdown or nothing pending.
    assert (tmp_path / "provider.log").exists() and (tmp_path / "pccs.log").exists()
