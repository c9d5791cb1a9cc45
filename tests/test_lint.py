"""The code stays lint-, format- and type-clean: ``ruff check``, ``ruff format --check`` and ``mypy``
with pyproject.toml's settings, so that the test command runs them (the ``test`` extra installs them
next to this interpreter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_tool(name: str, *args: str) -> None:
    """Run the environment's ``name`` in the repository; fail with its own report when it finds anything."""
    tool = Path(sys.executable).parent / name
    if not tool.exists():
        pytest.fail(f"{name}: not installed next to {sys.executable} (pip install -e '.[test]')")
    proc = subprocess.run([str(tool), *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"{name} {' '.join(args)} (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}", pytrace=False)


def test_ruff_check():
    """Lint rules of [tool.ruff.lint] over launcher/, models/, bench/ and tests/."""
    run_tool("ruff", "check", "--no-fix", ".")


def test_ruff_format():
    """The formatting of [tool.ruff.format]."""
    run_tool("ruff", "format", "--check", ".")


@pytest.mark.slow
def test_mypy():
    """The packages of [tool.mypy] (launcher, models) type-check."""
    run_tool("mypy")
