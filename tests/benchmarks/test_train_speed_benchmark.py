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
        assert len(cells) == 18
        # four groups (train s, train peak MiB, infer s, infer peak MiB) of ours, tv, ratio,
        # ratio to tv fp32: all measured; a peak may be 0 for a small image whose step fits in
        # memory the process already holds, and then its ratio is "-"
        for group, positive in ((2, True), (6, False), (10, True), (14, False)):
            ours, tv = float(cells[group]), float(cells[group + 1])
            assert (ours > 0 and tv > 0) if positive else (ours >= 0 and tv >= 0)
            if tv > 0:
                assert abs(float(cells[group + 2]) - ours / tv) <= 0.01 + 0.05 * ours / tv
