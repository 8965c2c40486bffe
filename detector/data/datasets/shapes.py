"""A synthetic dataset of squares, circles and triangles with instance masks.

Each image is drawn on the fly from (seed, index), so the dataset is deterministic, costs no
disk and can have any number of images. An image is `image_size` x `image_size` with 1 to 4
shapes of side 16 to 48 px in bright random colours on a dark noisy background; shapes overlap
by at most 10% of the smaller one's box, and a shape drawn later occludes an earlier one (the
earlier mask loses those pixels). Boxes are the masks' tight boxes. A small Mask R-CNN learns it
in minutes on a CPU.

With `keypoints=True` every shape also has K = 6 keypoints (SHAPE_KEYPOINTS), at the centres of
the pixels they mark: a square's four corners (top_left, top_right, bottom_right, bottom_left), a
triangle's apex and its two base corners (bottom_left, bottom_right), a circle's centre; the
other keypoints of a shape are unlabeled (v = 0), the labeled ones visible (v = 2). A flip swaps
left and right corners; triangles and circles are symmetric.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from skimage.draw import disk, polygon  # pyright: ignore[reportUnknownVariableType]
from torch import Tensor

from detector.data.datasets.base import BACKGROUND, DetectionDataset, mask_boxes
from detector.data.datasets.keypoints import KeypointMeta
from detector.structures import BitMasks, Boxes, Instances, Keypoints
from detector.utils.arrays import from_numpy

__all__ = [
    "SHAPE_CLASS_NAMES",
    "SHAPE_KEYPOINTS",
    "ShapesDataset",
    "draw_shapes",
    "shape_keypoint_meta",
    "shape_keypoints",
    "shape_layout",
]

SHAPE_CLASS_NAMES: tuple[str, ...] = ("square", "circle", "triangle")
MAX_OVERLAP = 0.1
SHAPE_KEYPOINTS: tuple[str, ...] = (
    "top_left", "top_right", "bottom_right", "bottom_left", "apex", "centre",
)  # fmt: skip
# OKS sigma of every shape keypoint (COCO: 0.025 eyes .. 0.107 hips): a 1 px error on a 24 px
# square scores OKS 0.92, a 2 px one 0.71.
SHAPE_OKS_SIGMA = 0.05


def shape_keypoint_meta() -> KeypointMeta:
    """The shapes' keypoints: flip map, skeleton (the outlines of squares and triangles), OKS
    sigmas."""
    return KeypointMeta(
        names=SHAPE_KEYPOINTS,
        flip_map=(("top_left", "top_right"), ("bottom_left", "bottom_right")),
        skeleton=(
            ("top_left", "top_right"),
            ("top_right", "bottom_right"),
            ("bottom_right", "bottom_left"),
            ("bottom_left", "top_left"),
            ("apex", "bottom_right"),
            ("apex", "bottom_left"),
        ),  # fmt: skip
        oks_sigmas=(SHAPE_OKS_SIGMA,) * len(SHAPE_KEYPOINTS),
        where="shapes keypoints",
    )


def shape_keypoints(layout: list[tuple[int, int, int, int]], boxes: np.ndarray) -> np.ndarray:
    """float32 array[N, 6, 3] (x, y, v) of the shapes of `layout` (see the module doc), kept
    within the centres of the border pixels of the shapes' tight `boxes` array[N, 4] (a thin
    triangle apex, or a corner that a later shape hides, moves onto the visible shape)."""
    keypoints = np.zeros((len(layout), len(SHAPE_KEYPOINTS), 3), dtype=np.float32)
    for i, (kind, x0, y0, side) in enumerate(layout):
        left, top = x0 + 0.5, y0 + 0.5  # centres of the first and last pixels
        right, bottom = x0 + side - 0.5, y0 + side - 0.5
        if kind == 0:
            points = {0: (left, top), 1: (right, top), 2: (right, bottom), 3: (left, bottom)}
        elif kind == 1:
            points = {5: (x0 + side / 2, y0 + side / 2)}
        else:
            points = {4: ((left + right) / 2, top), 2: (right, bottom), 3: (left, bottom)}
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        for k, (x, y) in points.items():
            keypoints[i, k] = (min(max(x, x1 + 0.5), x2 - 0.5), min(max(y, y1 + 0.5), y2 - 0.5), 2)
    return keypoints


def _place(
    rng: np.random.Generator, image_size: int, side: int, placed: list[tuple[int, int, int]]
) -> tuple[int, int] | None:
    """A top-left corner for a side x side shape overlapping every placed one by at most
    MAX_OVERLAP of the smaller box, or None after 50 tries."""
    for _ in range(50):
        x0, y0 = (int(v) for v in rng.integers(0, image_size - side + 1, size=2))
        ok = True
        for px, py, ps in placed:
            iw = min(x0 + side, px + ps) - max(x0, px)
            ih = min(y0 + side, py + ps) - max(y0, py)
            if iw > 0 and ih > 0 and iw * ih > MAX_OVERLAP * min(side, ps) ** 2:
                ok = False
                break
        if ok:
            return x0, y0
    return None


def _shape_pixels(
    kind: int, x0: int, y0: int, side: int, image_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of a square (0), circle (1) or triangle (2) in its box."""
    shape = (image_size, image_size)
    last = side - 1  # the shape covers pixels x0 .. x0 + side - 1
    # skimage.draw is not annotated: polygon's result is unknown to the type checker.
    if kind == 0:
        return polygon([y0, y0, y0 + last, y0 + last], [x0, x0 + last, x0 + last, x0], shape)  # pyright: ignore[reportUnknownVariableType]
    if kind == 1:
        radius = side / 2
        return disk((y0 + radius - 0.5, x0 + radius - 0.5), radius, shape=shape)
    return polygon([y0, y0 + last, y0 + last], [x0 + last / 2, x0 + last, x0], shape)  # pyright: ignore[reportUnknownVariableType]


def shape_layout(
    seed: int,
    index: int,
    image_size: int = 128,
    max_shapes: int = 4,
    min_side: int = 16,
    max_side: int = 48,
) -> list[tuple[int, int, int, int]]:
    """The shapes of image `index` of the dataset with `seed`, in drawing order, without drawing
    them: [(kind, x0, y0, side), ...], kind 0 square, 1 circle, 2 triangle."""
    rng = np.random.default_rng([seed, index, 0])
    num_shapes = int(rng.integers(1, max_shapes + 1))
    placed: list[tuple[int, int, int]] = []
    layout: list[tuple[int, int, int, int]] = []
    for _ in range(num_shapes):
        side = int(rng.integers(min_side, max_side + 1))
        corner = _place(rng, image_size, side, placed)
        kind = int(rng.integers(0, 3))
        if corner is not None:
            placed.append((corner[0], corner[1], side))
            layout.append((kind, corner[0], corner[1], side))
    return layout


def draw_shapes(
    seed: int, index: int, image_size: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draws image `index` of the dataset with `seed` (its `shape_layout`).

    Returns:
        image: uint8 array[H, W, 3].
        masks: bool array[N, H, W], one per shape, occlusion removed.
        kinds: int64 array[N]: 0 square, 1 circle, 2 triangle.
    """
    layout = shape_layout(seed, index, image_size)
    rng = np.random.default_rng([seed, index, 1])  # colours and noise
    background = rng.uniform(0, 90, size=3)
    image = np.broadcast_to(background, (image_size, image_size, 3)).copy()
    masks = np.zeros((len(layout), image_size, image_size), dtype=bool)
    for i, (kind, x0, y0, side) in enumerate(layout):
        rows, cols = _shape_pixels(kind, x0, y0, side, image_size)
        masks[i, rows, cols] = True
        masks[:i] &= ~masks[i]  # the new shape occludes the earlier ones
        image[masks[i]] = rng.uniform(130, 255, size=3)
    image += rng.normal(0, 12, size=image.shape)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    kinds = np.asarray([kind for kind, *_ in layout], dtype=np.int64)
    return image, masks, kinds


class ShapesDataset(DetectionDataset):
    """`num_images` synthetic images; classes square (1), circle (2), triangle (3).

    Args:
        num_images: the dataset's length.
        seed: different seeds give different images (use one seed per split).
        image_size: the side of the square images.
        keypoints: give the targets gt_keypoints (see the module doc).
    """

    def __init__(
        self, num_images: int, seed: int, image_size: int = 128, keypoints: bool = False
    ) -> None:
        if num_images < 0 or image_size < 64:
            raise ValueError(
                f"ShapesDataset: num_images must be >= 0 and image_size >= 64, got {num_images} "
                f"and {image_size}"
            )
        self.num_images = num_images
        self.seed = seed
        self.image_size = image_size
        self.class_names = [BACKGROUND, *SHAPE_CLASS_NAMES]
        self.has_masks = True
        self.keypoint_meta = shape_keypoint_meta() if keypoints else None

    def __len__(self) -> int:
        return self.num_images

    def get_image_size(self, index: int) -> tuple[int, int]:
        return self.image_size, self.image_size

    def _draw(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return draw_shapes(self.seed, index, self.image_size)

    def load_image(self, index: int) -> Tensor:
        image, _, _ = self._draw(index)
        return from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (H, W, 3) -> (3, H, W)

    def load_target(self, index: int) -> Instances:
        _, masks, kinds = self._draw(index)
        return self._target(index, masks, kinds)

    def num_instances(self, index: int, include_difficult: bool = True) -> int:
        return len(shape_layout(self.seed, index, self.image_size))

    def get_meta(self, index: int) -> dict[str, Any]:
        size = self.image_size
        return {
            "image_id": index,
            "file_name": f"shapes:{self.seed}:{index}",
            "height": size,
            "width": size,
        }

    def __getitem__(self, index: int) -> tuple[Tensor, Instances, dict[str, Any]]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        index = index % len(self)
        image, masks, kinds = self._draw(index)  # draw once for the image and the target
        image_tensor = from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (3, H, W)
        return image_tensor, self._target(index, masks, kinds), self.get_meta(index)

    def _target(self, index: int, masks: np.ndarray, kinds: np.ndarray) -> Instances:
        boxes = mask_boxes(masks)
        target = Instances(
            (self.image_size, self.image_size),
            gt_boxes=Boxes(from_numpy(boxes)),
            gt_classes=from_numpy(kinds.astype(np.int64)) + 1,
            gt_masks=BitMasks(from_numpy(masks)),
            difficult=torch.zeros(len(kinds), dtype=torch.bool),
        )
        if self.keypoint_meta is not None:
            layout = shape_layout(self.seed, index, self.image_size)
            target.gt_keypoints = Keypoints(
                from_numpy(shape_keypoints(layout, boxes)), self.keypoint_meta.flip_indices
            )
        return target
