"""The import rules (pyproject.toml's import-linter contracts) hold, and a breach of each is caught and
named: run on a copy of the package with one forbidden import planted per rule."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "sealing_key_provider"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

#: (file, line to add, contract name, "importer -> imported" as the report names it)
BREACHES = [
    (
        "server/assembly.py",
        "from ..sim import SimPlatform as _SimPlatform",
        "Production code never imports the simulator or the command line",
        "sealing_key_provider.server.assembly -> sealing_key_provider.sim",
    ),
    (
        "dcap/abi.py",
        "from ..keys import DEFAULT_KEY_NAME as _DEFAULT_KEY_NAME",
        "dcap imports nothing of the project but the error types",
        "sealing_key_provider.dcap.abi -> sealing_key_provider.keys",
    ),
    (
        "client/tdx_guest.py",
        "from .quote_source import DEFAULT_TSM_ROOT as _DEFAULT_TSM_ROOT",
        "client/quote_source.py and client/tdx_guest.py do not import each other",
        "sealing_key_provider.client.tdx_guest -> sealing_key_provider.client.quote_source",
    ),
    (
        "client/sdk.py",
        "import fastapi as _fastapi",
        "The TD side (client, get-key) needs neither the server nor its web stack",
        "sealing_key_provider.client.sdk -> fastapi",
    ),
    (
        "acceptance.py",
        "from .policy import Policy as _Policy",
        "One direction: the command line on top, dcap and the errors at the bottom",
        "sealing_key_provider.acceptance -> sealing_key_provider.policy",
    ),
    (
        "policy.py",
        "from .provider import Provider as _Provider",
        "One direction: the command line on top, dcap and the errors at the bottom",
        "sealing_key_provider.policy -> sealing_key_provider.provider",
    ),
]


def _lint(src: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "NO_COLOR": "1", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_project_keeps_every_contract(tmp_path: Path) -> None:
    result = _lint(ROOT / "src", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("file", "line", "contract", "edge"), BREACHES, ids=[b[0] for b in BREACHES])
def test_a_forbidden_import_breaks_its_contract_and_is_named(
    tmp_path: Path, file: str, line: str, contract: str, edge: str
) -> None:
    """One forbidden import planted in an otherwise clean copy: the contract it breaks can only be
    broken by that import, so each contract is shown to catch its own breach."""
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "sealing_key_provider", ignore=shutil.ignore_patterns("__pycache__"))
    path = src / "sealing_key_provider" / file
    text = path.read_text()
    assert line not in text
    path.write_text(text + f"\n{line}\n")
    result = _lint(src, tmp_path)
    out = " ".join(result.stdout.split())
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{' '.join(contract.split())} BROKEN" in out
    assert edge in out, result.stdout


def test_a_module_without_a_layer_breaks_the_layers_and_is_named(tmp_path: Path) -> None:
    """The layers are exhaustive: a new top-level module is refused until it is given its place."""
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "sealing_key_provider", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "sealing_key_provider" / "unplaced.py").write_text('"""A module nobody placed."""\n')
    result = _lint(src, tmp_path)
    out = " ".join(result.stdout.split())
    assert result.returncode == 1, result.stdout + result.stderr
    assert "One direction: the command line on top, dcap and the errors at the bottom BROKEN" in out
    assert "not listed as layers: - sealing_key_provider.unplaced" in out
