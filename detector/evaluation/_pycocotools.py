"""Typed wrappers of the pycocotools calls the evaluators make (the stubs pyright bundles for
pycocotools type `mask.encode` of a stack of masks as one RLE, and `COCO.loadRes` as taking a
file name only)."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, TypedDict, cast

import numpy as np
import numpy.typing as npt
import pycocotools.mask as mask_util
from pycocotools.coco import COCO

__all__ = ["RLE", "encode_rles", "load_results", "rle_area"]


class RLE(TypedDict):
    """A compressed run-length encoding as COCO's JSON files hold it."""

    size: list[int]  # [H, W]
    counts: str


def encode_rles(masks: npt.NDArray[np.uint8]) -> list[RLE]:
    """The RLE of each mask of masks (N, H, W) uint8, counts as ASCII text."""
    # (N, H, W) -> (H, W, N) in Fortran order, as pycocotools.mask.encode needs.
    encoded = cast(
        "list[dict[str, Any]]", mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    )
    return [{"size": rle["size"], "counts": rle["counts"].decode("ascii")} for rle in encoded]


def rle_area(rle: RLE) -> float:
    """The number of pixels of the mask `rle`."""
    return float(mask_util.area({"size": rle["size"], "counts": rle["counts"]}))


def load_results(coco_gt: COCO, results: list[dict[str, Any]]) -> COCO:
    """COCO.loadRes on a copy of `results` (it edits them; its progress output is silenced)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes(copy.deepcopy(results))  # pyright: ignore[reportArgumentType]
