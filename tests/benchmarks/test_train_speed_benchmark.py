"""benchmarks/train_speed.py runs both models in both precisions and reports every ratio (a small
image, one timed iteration: a check that the benchmark works, not a speed measurement)."""

from __future__ import annotations

import pytest

from tests.benchmarks.scripts import run_script


@pytest.mark.slow
def test_fp32_and_bf16_rows_with_ratios() -> None:
    stdout = run_script(
        "train_speed.py", "--threads", "1", "--iters", "1", "--size", "96", "128", "--batch",
        "1", "--models", "faster", "--precision", "fp32", "bf16",
    )  # fmt: skip
    rows = [line for line in stdout.splitlines() if line.startswith("| faster |")]
    assert [row.split("|")[2].strip() for row in rows] == ["fp32", "bf16"]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 14
        numbers = [float(c) for c in cells[2:]]  # times, memory and ratios all measured
        assert all(n > 0 for n in numbers[:2]) and all(n > 0 for n in numbers[8:10])
