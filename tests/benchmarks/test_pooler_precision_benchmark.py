"""benchmarks/pooler_precision.py times both pooling rules and prints a row per pooler and head
with the ratio (a small image and one round: a check that the benchmark works, not a
measurement)."""

from __future__ import annotations

from tests.benchmarks.scripts import run_script


def test_prints_both_heads_with_measured_times_and_ratio() -> None:
    stdout = run_script(
        "pooler_precision.py", "--threads", "1", "--size", "128", "160", "--repeat", "1"
    )
    rows = [line for line in stdout.splitlines() if line.startswith("| RO")]
    heads = [(row.split("|")[1].strip(), row.split("|")[3].strip()) for row in rows]
    assert heads == [(t, size) for t in ("ROIAlignV2", "ROIPool") for size in ("7x7", "14x14")]
    for row in rows:
        old, new, ratio = (float(c) for c in row.strip("|").split("|")[3:])
        assert old > 0 and new > 0 and abs(ratio - new / old) <= 0.05 * ratio + 0.01
