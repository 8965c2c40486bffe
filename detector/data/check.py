"""Checking a dataset up front: every image decoded and every annotation read, all problems
listed at once (tools/check_dataset.py), rather than the run stopping at the first bad image."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from detector.data.datasets import DetectionDataset
from detector.data.errors import DatasetError
from detector.utils.arrays import tolist

__all__ = ["Problem", "find_problems"]


@dataclass(frozen=True)
class Problem:
    """One image that cannot be used as it is."""

    index: int
    message: str

    def __str__(self) -> str:
        return f"image {self.index}: {self.message}"


def find_problems(dataset: DetectionDataset) -> Iterator[Problem]:
    """Reads every item of `dataset` (image, annotation, masks) and yields a Problem for each
    that raises a DatasetError or has boxes that are not finite or lie outside the image."""
    for index in range(len(dataset)):
        try:
            image, target, meta = dataset[index]
        except DatasetError as e:
            yield Problem(index, str(e))
            continue
        assert target.gt_boxes is not None  # every dataset's targets have gt_boxes
        message = _box_problem(target.gt_boxes.tensor, image.shape[-2:], meta)
        if message:
            yield Problem(index, message)


def _box_problem(boxes: torch.Tensor, size: torch.Size, meta: dict[str, Any]) -> str:
    """'' when every box is finite, inside the image and not empty; else what is wrong."""
    height, width = int(size[0]), int(size[1])
    where = meta.get("file_name", "")
    if not torch.isfinite(boxes).all():
        return f"{where}: a box has a non-finite coordinate"
    inside = (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= width)
    inside &= boxes[:, 3] <= height
    if not inside.all():
        bad: list[float] = tolist(boxes[~inside][0])
        return f"{where}: box {[round(v, 1) for v in bad]} lies outside the {width}x{height} image"
    empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if empty.any():
        bad = tolist(boxes[empty][0])
        return f"{where}: box {[round(v, 1) for v in bad]} is empty"
    return ""
