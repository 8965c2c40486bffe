"""benchmarks/train_speed.py runs both models in both precisions and reports every ratio (a small
image, one timed iteration: a check that the benchmark works, not a speed measurement)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fp32_and_bf16_rows_with_ratios() -> None:
    command = [sys.executable, "benchmarks/train_speed.py", "--threads", "1", "--iters", "1",
               "--size", "96", "128", "--batch", "1", "--models", "faster",
               "--precision", "fp32", "bf16"]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| faster |")]
    assert [row.split("|")[2].strip() for row in rows] == ["fp32", "bf16"]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 14
        numbers = [float(c) for c in cells[2:]]  # times, memory and ratios all measured
        assert all(n > 0 for n in numbers[:2]) and all(n > 0 for n in numbers[8:10])
