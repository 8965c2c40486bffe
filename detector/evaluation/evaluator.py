"""The interface every dataset evaluator follows, and what they share: saving predictions and
metrics as JSON, re-evaluating saved predictions, and text tables.

Usage (what tools/test.py does):

    evaluator.reset()
    for images, image_ids in loader:
        evaluator.process(image_ids, model(images))  # list[Instances] in original image pixels
    metrics = evaluator.evaluate()                    # {"bbox/AP": 0.37, ...}

    # later, without the model:
    metrics = evaluator.evaluate_saved("output/coco_instances_results.json")

An evaluator turns each image's `Instances` into plain JSON-able records as they come (masks are
RLE-encoded at once), so memory grows with the number of detections, not with pixels.
"""

from __future__ import annotations

import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, cast

from detector.structures import Instances

__all__ = ["DatasetEvaluator", "format_table"]

logger = logging.getLogger(__name__)

# A prediction record: one detection (or proposal) as a JSON-able dict.
Record = dict[str, Any]


class DatasetEvaluator(ABC):
    """Accumulates per-image predictions, then computes flat metrics `{"<task>/<metric>": float}`.

    Subclasses define how `Instances` become records (`_to_records`), how saved records are
    checked (`_check_record`) and how records are scored (`_evaluate_records`).
    """

    #: Prefix of the files written to `output_dir` ("coco" -> coco_metrics.json).
    name: str = "dataset"

    def __init__(self, output_dir: str | Path | None = None) -> None:
        """Args:
        output_dir: where predictions, metrics and precision/recall plots are written; None
            writes nothing.
        """
        self.output_dir = Path(output_dir) if output_dir is not None else None
        #: Text tables (per-category AP, ...) of the last evaluation, by title.
        self.tables: dict[str, str] = {}
        self._records: dict[str, list[Record]] = {}
        self._image_ids: dict[Hashable, None] = {}  # processed ids, in order, without repeats
        self.reset()

    # ----------------------------------------------------------------------------------------
    # Accumulation
    # ----------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forgets every processed prediction (call before a new evaluation run)."""
        self._records = {}
        self._image_ids = {}
        self.tables = {}

    def process(self, image_ids: Sequence[Hashable], predictions: Sequence[Instances]) -> None:
        """Adds the predictions of a batch of images.

        Args:
            image_ids: the dataset's id of each image (COCO: int image id; VOC: the file stem).
            predictions: one `Instances` per image, in ORIGINAL image pixels, with either
                pred_boxes (Boxes, xyxy), scores (Tensor[R]), pred_classes (Tensor[R] int64,
                1..K) and optionally pred_masks (Tensor[R, H, W] bool/uint8 pasted masks), or
                proposal_boxes and objectness_logits (RPN-only models).
        """
        if len(image_ids) != len(predictions):
            raise ValueError(
                f"{type(self).__name__}.process: got {len(image_ids)} image ids but "
                f"{len(predictions)} predictions; pass one Instances per image id"
            )
        for image_id, instances in zip(image_ids, predictions, strict=True):
            if not isinstance(instances, Instances):  # pyright: ignore[reportUnnecessaryIsInstance]
                raise TypeError(
                    f"{type(self).__name__}.process: predictions for image {image_id!r} must be "
                    f"an Instances, got {type(instances).__name__}"
                )
            image_id = self._check_image_id(image_id)
            if image_id in self._image_ids:
                raise ValueError(
                    f"{type(self).__name__}.process: image {image_id!r} was already processed; "
                    "call reset() before evaluating again"
                )
            # Convert first: a prediction that fails leaves the evaluator as it was.
            converted = self._to_records(image_id, instances)
            self._image_ids[image_id] = None
            for kind, records in converted.items():
                self._records.setdefault(kind, []).extend(records)

    @property
    def image_ids(self) -> list[Hashable]:
        """The ids of the images processed since the last reset, in order."""
        return list(self._image_ids)

    @property
    def records(self) -> dict[str, list[Record]]:
        """The accumulated prediction records by kind ("instances", "proposals", ...)."""
        return self._records

    def state(self) -> dict[str, Any]:
        """What was processed, as picklable/JSON-able data: in a multi-process run each process
        sends its `state()` (e.g. `torch.distributed.all_gather_object`) and the main process
        calls `merge_state` with the others' before `evaluate()`."""
        return {"image_ids": self.image_ids, "records": self._records}

    def merge_state(self, state: dict[str, Any]) -> None:
        """Adds another evaluator's `state()` (same dataset); an image processed by both is an
        error."""
        repeated = [i for i in state["image_ids"] if i in self._image_ids]
        if repeated:
            raise ValueError(
                f"{type(self).__name__}.merge_state: images {repeated[:5]} were processed by "
                "both evaluators; give each process a disjoint share of the images"
            )
        for image_id in state["image_ids"]:
            self._image_ids[image_id] = None
        for kind, records in state["records"].items():
            self._records.setdefault(kind, []).extend(records)

    # ----------------------------------------------------------------------------------------
    # Evaluation
    # ----------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Scores the processed predictions on the processed images.

        Writes `<name>_<kind>_results.json` and `<name>_metrics.json` to `output_dir` if set.
        Returns flat metrics (an empty dict, with a warning, when nothing was processed).
        """
        if not self._image_ids:
            logger.warning("%s: no image was processed; nothing to evaluate", type(self).__name__)
            return {}
        if self.output_dir is not None:
            self.save_predictions()
        metrics = self._evaluate_records(self._records, self.image_ids)
        if self.output_dir is not None:
            self.save_metrics(metrics)
        return metrics

    def evaluate_saved(
        self, predictions_json: str | Path, image_ids: Sequence[Hashable] | None = None
    ) -> dict[str, float]:
        """Scores predictions saved by `save_predictions` (or any file in the same format),
        without running the model. The processed state is left unchanged.

        Args:
            predictions_json: a `<name>_<kind>_results.json` file.
            image_ids: the images to evaluate on; None evaluates on every image of the dataset
                (images without a record then count as images with no detection).
        """
        path = Path(predictions_json)
        if not path.is_file():
            raise FileNotFoundError(f"predictions file not found: {path}")
        with open(path) as f:
            loaded = json.load(f)
        if not isinstance(loaded, list):
            raise ValueError(f"{path}: expected a JSON list of prediction records")
        records = cast("list[Record]", loaded)  # each one is checked below
        kind = self._record_kind(records, path)
        for index, record in enumerate(records):
            self._check_record(record, f"{path}, record {index}")
        if image_ids is None:
            image_ids = self.dataset_image_ids()
        else:
            image_ids = [self._check_image_id(i) for i in image_ids]
        metrics = self._evaluate_records({kind: records}, list(image_ids))
        if self.output_dir is not None:
            self.save_metrics(metrics)
        return metrics

    # ----------------------------------------------------------------------------------------
    # Files
    # ----------------------------------------------------------------------------------------
    def save_predictions(self, output_dir: str | Path | None = None) -> list[Path]:
        """Writes each kind of record to `<output_dir>/<name>_<kind>_results.json`."""
        directory = self._directory(output_dir)
        paths: list[Path] = []
        for kind, records in self._records.items():
            path = directory / f"{self.name}_{kind}_results.json"
            with open(path, "w") as f:
                json.dump(records, f)
            logger.info("%s: wrote %d %s records to %s", self.name, len(records), kind, path)
            paths.append(path)
        return paths

    def save_metrics(self, metrics: dict[str, float], output_dir: str | Path | None = None) -> Path:
        """Writes `metrics` to `<output_dir>/<name>_metrics.json` (NaN is written as null)."""
        path = self._directory(output_dir) / f"{self.name}_metrics.json"
        clean = {k: (None if math.isnan(v) else v) for k, v in metrics.items()}
        with open(path, "w") as f:
            json.dump(clean, f, indent=2)
        return path

    def _directory(self, output_dir: str | Path | None) -> Path:
        directory = Path(output_dir) if output_dir is not None else self.output_dir
        if directory is None:
            raise ValueError(
                f"{type(self).__name__}: no output directory; pass output_dir to the constructor "
                "or to this method"
            )
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    # ----------------------------------------------------------------------------------------
    # What subclasses define
    # ----------------------------------------------------------------------------------------
    @abstractmethod
    def dataset_image_ids(self) -> Sequence[Hashable]:
        """Every image id of the evaluated dataset (split)."""

    @abstractmethod
    def _check_image_id(self, image_id: Hashable) -> Hashable:
        """Returns `image_id` normalised, or raises naming it when the dataset lacks it."""

    @abstractmethod
    def _to_records(self, image_id: Hashable, instances: Instances) -> dict[str, list[Record]]:
        """The records of one image's predictions, by kind."""

    @abstractmethod
    def _record_kind(self, records: list[Record], path: Path) -> str:
        """The kind of the records of a saved file."""

    @abstractmethod
    def _check_record(self, record: Record, where: str) -> None:
        """Raises naming `where` when a saved record is malformed or names an unknown id."""

    @abstractmethod
    def _evaluate_records(
        self, records: dict[str, list[Record]], image_ids: list[Hashable]
    ) -> dict[str, float]:
        """Flat metrics of `records` on the images `image_ids`."""


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table; floats print with 4 decimals and NaN as "-"."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.4f}"
        return str(value)

    cells = [list(header)] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = [
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True))
        for line in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)
