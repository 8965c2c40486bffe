"""Typed helpers for per-image data in the model: the Instances fields a stage relies on, and
batch rows split back per image.

Instances declares every field optional (None while unset); each stage knows which fields its
inputs carry (proposals their proposal_boxes, sampled RoIs their gt_classes, detections their
pred_boxes, ...). `required` states that and gives the field's type without the None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["required", "split_rows"]

T = TypeVar("T")


def required(value: T | None, name: str) -> T:
    """`value`, an Instances field named `name` that the caller's inputs always have."""
    if value is None:
        raise ValueError(f"Instances field {name} is not set")
    return value


def split_rows(rows: Tensor, counts: Sequence[int | torch.SymInt | Tensor]) -> tuple[Tensor, ...]:
    """`rows.split(counts)` (Tensor.split is untyped in torch): the rows of each image, whose
    counts may be symbolic (torch.export) or traced 0-dim tensors (torch.jit.trace), see
    detector.structures.as_size."""
    return rows.split(counts)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
