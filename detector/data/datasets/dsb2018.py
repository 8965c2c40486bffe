"""Kaggle Data Science Bowl 2018 nuclei (BBBC038): one folder per image,
`<root>/stage1_train/<id>/images/<id>.png` and one binary PNG per instance in
`<root>/stage1_train/<id>/masks/`. One class ("nucleus"); boxes are the masks' tight boxes.

There is no official split: the sorted image ids are split 80/20 into "train" and "val" ("all"
keeps every image). The PNGs are RGBA (or grayscale) and are decoded as RGB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from detector.data.datasets.base import BACKGROUND, DetectionDataset, mask_boxes
from detector.data.errors import DatasetError
from detector.data.image_io import read_image, read_image_size
from detector.structures import BitMasks, Boxes, Instances
from detector.utils.arrays import from_numpy

__all__ = ["DSB2018Dataset"]

SPLITS = ("train", "val", "all")
TRAIN_FRACTION = 0.8


class DSB2018Dataset(DetectionDataset):
    """Args:
    root: the folder holding stage1_train/.
    split: "train" (first 80% of the sorted ids), "val" (the rest) or "all".
    """

    def __init__(
        self, root: str | Path, split: str = "train", max_pixels: int | None = None
    ) -> None:
        self.root = Path(root)
        if split not in SPLITS:
            raise DatasetError(f"DSB2018 split must be one of {SPLITS}, got '{split}'")
        image_root = self.root / "stage1_train"
        if not image_root.is_dir():
            raise DatasetError(
                f"DSB2018 folder not found: {image_root} (expected "
                "<root>/stage1_train/<id>/images/<id>.png)"
            )
        ids = sorted(p.name for p in image_root.iterdir() if p.is_dir())
        cut = int(round(TRAIN_FRACTION * len(ids)))
        self.image_ids = {"train": ids[:cut], "val": ids[cut:], "all": ids}[split]
        self.split = split
        self.max_pixels = max_pixels
        self.class_names = [BACKGROUND, "nucleus"]
        self.has_masks = True
        self._mask_files = [
            sorted((image_root / i / "masks").glob("*.png")) for i in self.image_ids
        ]
        self._sizes = [read_image_size(self._image_file(i)) for i in range(len(self))]

    def __len__(self) -> int:
        return len(self.image_ids)

    def _image_file(self, index: int) -> Path:
        image_id = self.image_ids[index]
        return self.root / "stage1_train" / image_id / "images" / f"{image_id}.png"

    def get_image_size(self, index: int) -> tuple[int, int]:
        return self._sizes[index]

    def load_image(self, index: int) -> Tensor:
        return read_image(self._image_file(index), self.max_pixels)

    def num_instances(self, index: int, include_difficult: bool = True) -> int:
        return len(self._mask_files[index])

    def load_target(self, index: int) -> Instances:
        height, width = self._sizes[index]
        bitmaps = np.zeros((len(self._mask_files[index]), height, width), dtype=bool)
        for k, mask_file in enumerate(self._mask_files[index]):
            with Image.open(mask_file) as mask:
                array = np.asarray(mask.convert("L"))
            if array.shape != (height, width):
                raise DatasetError(
                    f"{mask_file}: mask is {array.shape[1]}x{array.shape[0]} but the image "
                    f"{self.image_ids[index]} is {width}x{height}"
                )
            bitmaps[k] = array > 127
        num = len(bitmaps)
        return Instances(
            (height, width),
            gt_boxes=Boxes(from_numpy(mask_boxes(bitmaps))),
            gt_classes=torch.ones(num, dtype=torch.int64),
            gt_masks=BitMasks(from_numpy(bitmaps)),
            difficult=torch.zeros(num, dtype=torch.bool),
        )

    def get_meta(self, index: int) -> dict[str, Any]:
        height, width = self._sizes[index]
        return {
            "image_id": self.image_ids[index],
            "file_name": str(self._image_file(index)),
            "height": height,
            "width": width,
        }
