"""ruff (lint + format) and mypy are part of the test suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(*cmd: str) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"


def test_ruff_lint() -> None:
    run(str(BIN / "ruff"), "check", "srpo_mcore", "tests", "tools")


def test_ruff_format() -> None:
    run(str(BIN / "ruff"), "format", "--check", "srpo_mcore", "tests", "tools")


def test_mypy() -> None:
    run(str(BIN / "mypy"), "--config-file", ".mypy.ini")
