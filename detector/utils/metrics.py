"""Training metrics: smoothed values for log lines, and writers for metrics.jsonl and TensorBoard.

metrics.jsonl holds one JSON object per line: ``{"iteration": 20, "loss": 1.23, "lr": 0.01, ...}``
(evaluation results are lines of their own, keyed like ``"bbox/AP"``). A resumed run appends to
the same file; lines for iterations past the resume point may then appear twice, and readers
should keep the last line of each iteration.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from statistics import median
from typing import Any, cast

from torch import Tensor

__all__ = ["JSONWriter", "MetricsWriter", "SmoothedValue", "TensorboardWriter", "flatten_dict"]


class SmoothedValue:
    """A scalar series: the median and mean of the last `window` values, and the global mean."""

    def __init__(self, window: int = 20) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.total = 0.0
        self.count = 0

    def update(self, value: float) -> None:
        self.values.append(value)
        self.total += value
        self.count += 1

    @property
    def median(self) -> float:
        return median(self.values) if self.values else math.nan

    @property
    def avg(self) -> float:
        return sum(self.values) / len(self.values) if self.values else math.nan

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else math.nan

    @property
    def latest(self) -> float:
        return self.values[-1] if self.values else math.nan


def flatten_dict(results: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """{"bbox": {"AP": 0.3}} -> {"bbox/AP": 0.3}; values that are not numbers are dropped."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_dict(cast("Mapping[str, Any]", value), name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
        elif isinstance(value, Tensor) and value.numel() == 1:
            flat[name] = float(value.item())
    return flat


class JSONWriter:
    """Appends one JSON line per `write` to `path` and flushes it (readable while training)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")

    def write(self, iteration: int, scalars: Mapping[str, float]) -> None:
        record = {"iteration": iteration, **{k: _json_number(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _json_number(value: float) -> float | str:
    """JSON has no NaN/inf: they are written as the strings "nan", "inf", "-inf"."""
    return value if math.isfinite(value) else str(value)


class TensorboardWriter:
    """Scalars into TensorBoard event files under `log_dir` (torch.utils.tensorboard)."""

    def __init__(self, log_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when used

        self._writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, iteration: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            # torch leaves add_scalar's `new_style` parameter unannotated
            self._writer.add_scalar(name, value, iteration)  # pyright: ignore[reportUnknownMemberType]

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


class MetricsWriter:
    """Writes scalars to OUTPUT_DIR/metrics.jsonl and (optionally) OUTPUT_DIR/tensorboard/."""

    def __init__(self, output_dir: str | Path, *, tensorboard: bool = True) -> None:
        output_dir = Path(output_dir)
        self.writers: list[JSONWriter | TensorboardWriter] = [
            JSONWriter(output_dir / "metrics.jsonl")
        ]
        if tensorboard:
            self.writers.append(TensorboardWriter(output_dir / "tensorboard"))

    def write(self, iteration: int, scalars: Mapping[str, float]) -> None:
        for writer in self.writers:
            writer.write(iteration, scalars)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
