"""Runs a benchmark script as a user would: a fresh interpreter in the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


# the suite's choice (tests/conftest.py): MODEL.PRECISION auto resolves to float32
_PRECISION = {k: v for k, v in os.environ.items() if k == "DETECTOR_CPU_BFLOAT16"}


def run_script(script: str, *args: str, timeout: float = 600) -> str:
    """`python benchmarks/<script> args...`; returns its standard output after checking that
    it exited with 0 (the failure shows the end of its standard error)."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **_PRECISION}
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=timeout, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout
