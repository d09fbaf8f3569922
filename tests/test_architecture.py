"""The import directions of docs/architecture.md, checked by import-linter's contracts in pyproject.toml.

The installed package maps ``kernels/``, ``cli/`` and ``benchmarks/`` into ``minunet`` (see
``[tool.setuptools]``); import-linter reads packages from the file system, so the test lays the
source out as installed (a copy in a temporary folder) and runs ``lint-imports`` there.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"kernels": "kernels", "cli": "cli", "benchmarks": "benchmarks"}      # folder -> minunet.<name>


def _installed_layout(tmp_path, extra=None):
    skip = shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc")
    shutil.copytree(ROOT / "minunet", tmp_path / "minunet", ignore=skip)
    for folder, name in MAPPED.items():
        shutil.copytree(ROOT / folder, tmp_path / "minunet" / name, ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for path, text in (extra or {}).items():
        (tmp_path / path).write_text(text)
    return tmp_path


def _lint(folder):
    """import-linter's command, run by this interpreter (whether or not its script is on PATH)."""
    pytest.importorskip("importlinter", reason="import-linter is not installed (it is in the [test] extra)")
    env = dict(os.environ, PYTHONPATH=str(folder))
    command = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                                     "sys.exit(lint_imports_command())"]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=120)


def test_imports_follow_the_layers(tmp_path):
    result = _lint(_installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout


def test_a_kernel_importing_the_engine_breaks_the_contract(tmp_path):
    """The contract is live: a kernel module that imports from a higher layer fails it."""
    folder = _installed_layout(tmp_path)
    bad = folder / "minunet" / "kernels" / "shapes.py"
    bad.write_text(bad.read_text() + "\nfrom minunet.errors import UserError  # noqa\n")
    result = _lint(folder)
    assert result.returncode != 0 and "BROKEN" in result.stdout
