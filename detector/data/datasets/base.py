"""The dataset interface shared by every dataset, and a dataset over parsed annotation records.

`dataset[i]` returns `(image, target, meta)`:
    image: uint8 Tensor[3, H, W], RGB.
    target: Instances(image_size=(H, W)) with gt_boxes (Boxes, xyxy float32), gt_classes
        (int64, contiguous 1..K; 0 is the background), difficult (bool) and gt_masks
        (PolygonMasks or BitMasks) when the dataset has masks.
    meta: {"image_id", "file_name", "height", "width"}: the image's original size.

Every dataset has `class_names` (index 0 is "__background__") and answers `get_image_size(i)`
and `get_aspect_ratio(i)` without decoding the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from detector.data.datasets.keypoints import KeypointMeta
from detector.data.image_io import check_decoded_size, read_image
from detector.structures import BitMasks, Boxes, Instances, Keypoints, PolygonMasks
from detector.utils.arrays import from_numpy
from detector.utils.guards import is_list

__all__ = [
    "BACKGROUND",
    "DetectionDataset",
    "ImageRecord",
    "RecordDataset",
    "mask_boxes",
]

BACKGROUND = "__background__"


class DetectionDataset(Dataset[tuple[Tensor, Instances, dict[str, Any]]]):
    """Base class: subclasses implement `__len__`, `get_image_size`, `load_image`,
    `load_target` and `get_meta`; `__getitem__` combines them."""

    class_names: list[str]
    # Whether the targets carry gt_masks.
    has_masks: bool = False
    # The keypoints of the targets' gt_keypoints; None: no keypoints.
    keypoint_meta: KeypointMeta | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """K + 1: the classes including the background."""
        return len(self.class_names)

    def get_image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of image `index`, from the annotations or the file header."""
        raise NotImplementedError

    def get_aspect_ratio(self, index: int) -> float:
        """width / height of image `index`."""
        height, width = self.get_image_size(index)
        return width / height

    def load_image(self, index: int) -> Tensor:
        """uint8 Tensor[3, H, W], RGB."""
        raise NotImplementedError

    def load_target(self, index: int) -> Instances:
        raise NotImplementedError

    def get_meta(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def num_instances(self, index: int, include_difficult: bool = True) -> int:
        """Instances in image `index` (without loading the image)."""
        return len(self.load_target(index))

    def __getitem__(self, index: int) -> tuple[Tensor, Instances, dict[str, Any]]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        index = index % len(self)
        return self.load_image(index), self.load_target(index), self.get_meta(index)


@dataclass
class ImageRecord:
    """One image's parsed annotations. Shapes: N instances."""

    image_id: int | str
    file_name: str
    height: int
    width: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # (N, 4)
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,) 1..K
    difficult: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (N,)
    # Per instance: a list of polygons (flat x, y lists) or a COCO RLE dict; None: no masks.
    segmentations: list[Any] | None = None
    # Per instance: its value in an instance-id PNG (VOC SegmentationObject); None: no PNG.
    instance_ids: np.ndarray | None = None
    # (N, K, 3) float32 keypoints (x, y, v); None: the dataset has no keypoints.
    keypoints: np.ndarray | None = None


class RecordDataset(DetectionDataset):
    """A dataset over a list of `ImageRecord`s (COCO, Pascal VOC)."""

    def __init__(
        self,
        records: list[ImageRecord],
        class_names: list[str],
        max_pixels: int | None = None,
        keypoint_meta: KeypointMeta | None = None,
    ) -> None:
        self.records = records
        self.keypoint_meta = keypoint_meta
        self.class_names = list(class_names)
        self.max_pixels = max_pixels
        self.has_masks = any(r.segmentations is not None for r in records)

    def __len__(self) -> int:
        return len(self.records)

    def get_image_size(self, index: int) -> tuple[int, int]:
        record = self.records[index]
        return record.height, record.width

    def load_image(self, index: int) -> Tensor:
        record = self.records[index]
        image = read_image(record.file_name, self.max_pixels)
        check_decoded_size(image, (record.height, record.width), record.file_name)
        return image

    def num_instances(self, index: int, include_difficult: bool = True) -> int:
        record = self.records[index]
        if include_difficult:
            return len(record.classes)
        return int((~record.difficult).sum())

    def get_meta(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        return {
            "image_id": record.image_id,
            "file_name": record.file_name,
            "height": record.height,
            "width": record.width,
        }

    def load_target(self, index: int) -> Instances:
        record = self.records[index]
        size = (record.height, record.width)
        target = Instances(
            size,
            gt_boxes=Boxes(from_numpy(record.boxes.astype(np.float32).reshape(-1, 4))),
            gt_classes=from_numpy(record.classes.astype(np.int64)),
            difficult=from_numpy(record.difficult.astype(bool)),
        )
        if self.has_masks:
            target.gt_masks = self.load_masks(index)
        if self.keypoint_meta is not None:
            keypoints = record.keypoints
            if keypoints is None:
                keypoints = np.zeros((len(record.classes), self.keypoint_meta.num_keypoints, 3))
            target.gt_keypoints = Keypoints(
                from_numpy(keypoints.astype(np.float32)), self.keypoint_meta.flip_indices
            )
        return target

    def load_masks(self, index: int) -> PolygonMasks | BitMasks:
        """The instance masks of image `index` (datasets with masks only)."""
        record = self.records[index]
        return segmentations_to_masks(record.segmentations or [], (record.height, record.width))


def segmentations_to_masks(
    segmentations: list[Any], image_size: tuple[int, int]
) -> PolygonMasks | BitMasks:
    """PolygonMasks when every instance is polygons, else BitMasks (polygons rasterized)."""
    height, width = image_size
    if all(isinstance(s, list) for s in segmentations):
        return PolygonMasks(segmentations)
    bitmaps: list[Tensor] = []
    for s in segmentations:
        if is_list(s):
            bitmaps.append(PolygonMasks([s]).to_bitmasks(height, width).tensor)
        else:
            bitmaps.append(BitMasks.from_rle([s]).tensor)
    return BitMasks(torch.cat(bitmaps, dim=0))


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of bool masks[N, H, W] as float32 array[N, 4] xyxy (a pixel (i, j) spans
    [j, j + 1) x [i, i + 1)); zeros for an empty mask."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    rows, cols = np.any(masks, axis=2), np.any(masks, axis=1)  # (N, H), (N, W)
    for i in range(len(masks)):
        ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        if len(xs):
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes
