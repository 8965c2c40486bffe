"""What an evaluation leaves: metrics files, saved predictions scored again, the headline
line, and the TEST.EXPECTED_RESULTS check."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detector.evaluation.evaluator import DatasetEvaluator

__all__ = [
    "check_expected_results",
    "find_saved_predictions",
    "format_metrics",
    "reevaluate_saved",
    "write_metrics",
]

logger = logging.getLogger(__name__)


def write_metrics(directory: Path, metrics: dict[str, float]) -> Path:
    """Writes `metrics` to directory/metrics.json (NaN as null); returns the path."""
    path = directory / "metrics.json"
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    path.write_text(json.dumps(clean, indent=2))
    return path


def find_saved_predictions(directory: str | Path, evaluator: DatasetEvaluator) -> list[Path]:
    """The `<evaluator.name>_<kind>_results.json` files that `evaluator` wrote in `directory`."""
    return sorted(Path(directory).glob(f"{evaluator.name}_*_results.json"))


def reevaluate_saved(evaluator: DatasetEvaluator, saved: str | Path) -> dict[str, float]:
    """Scores saved predictions without the model: `saved` is a predictions JSON file or a
    folder holding the evaluator's `*_results.json` files (e.g. OUTPUT_DIR/inference/<dataset>).
    """
    saved = Path(saved)
    files = find_saved_predictions(saved, evaluator) if saved.is_dir() else [saved]
    if not files:
        raise FileNotFoundError(
            f"no saved predictions {evaluator.name}_*_results.json in {saved}; run tools/test.py "
            "without --eval-only-saved first"
        )
    metrics: dict[str, float] = {}
    for path in files:
        metrics.update(evaluator.evaluate_saved(path))
    return metrics


def check_expected_results(
    metrics: dict[str, float], expected: Sequence[Sequence[Any]], sigma_tol: float
) -> list[str]:
    """Compares metrics with TEST.EXPECTED_RESULTS [[task, metric, value, std], ...] (as
    maskrcnn_benchmark does): a metric passes within sigma_tol * std of the value. Logs each
    check; returns the failures as text (a missing metric is a failure)."""
    failures: list[str] = []
    for entry in expected:
        if len(entry) != 4:
            raise ValueError(
                f"TEST.EXPECTED_RESULTS entry {list(entry)} must be [task, metric, value, std], "
                "e.g. ['bbox', 'AP', 0.37, 0.01]"
            )
        task, metric, value, std = entry
        key = f"{task}/{metric}"
        actual = metrics.get(key)
        low, high = value - sigma_tol * std, value + sigma_tol * std
        ok = actual is not None and low <= actual <= high
        line = f"{key}: {actual} {'within' if ok else 'NOT within'} [{low:.4f}, {high:.4f}]"
        if ok:
            logger.info("expected result %s", line)
        else:
            logger.error("expected result %s", line)
            failures.append(line)
    return failures


_HEADLINE = ("AP", "AP50", "AP75", "mAP", "AR@100", "AR@1000")


def format_metrics(metrics: dict[str, float]) -> str:
    """The headline metrics (AP, AP50, AP75 per task, VOC mAP, proposal AR) as 'key=value' text;
    every metric when none of them is present."""
    headline = [(k, v) for k, v in metrics.items() if k.split("/")[-1] in _HEADLINE]
    shown = ", ".join(f"{k}={v:.4f}" for k, v in headline or metrics.items())
    return shown or "no metric"
