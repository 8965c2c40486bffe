"""Runs a benchmark script as a user would: a fresh interpreter in the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(script: str, *args: str, timeout: float = 600) -> str:
    """`python benchmarks/<script> args...`; returns its standard output after checking that
    it exited with 0 (the failure shows the end of its standard error)."""
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=timeout, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout
