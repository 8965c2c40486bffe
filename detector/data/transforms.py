"""Transforms of an (image, target) pair: colour jitter, shortest-edge resize, flips.

Each transform maps `(image Tensor[3, H, W], target Instances) -> (image, target)` and moves the
boxes, masks and keypoints with the image. Images are uint8, except after a resize in the
"torchvision" mode (float32, 0..255). Randomness comes from an explicit `torch.Generator`, so a
sample's augmentation is a pure function of its seed (see detector.data.samplers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from detector.structures import BitMasks, Instances
from detector.utils.arrays import tolist

__all__ = [
    "ColorJitter",
    "Compose",
    "RandomHorizontalFlip",
    "RandomVerticalFlip",
    "ResizeShortestEdge",
    "clip_and_drop_empty",
    "get_output_size",
    "resize_like_torchvision",
]


def get_output_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(new_height, new_width): the shorter side scaled to `min_size`, unless the longer side
    would then exceed `max_size` (> 0), in which case the longer side is scaled to `max_size`.
    Sides are rounded to the nearest pixel, and are at least 1 (a very elongated image keeps a
    one-pixel short side instead of vanishing)."""
    scale = min_size / min(height, width)
    if max_size > 0 and max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_like_torchvision(image: Tensor, min_size: int, max_size: int) -> Tensor:
    """Resizes as torchvision's GeneralizedRCNNTransform does: scale = min(min_size / short side,
    max_size / long side), sides floor(side * scale), plain bilinear (no antialiasing,
    align_corners=False) on float values.

    Args:
        image: Tensor[3, H, W] (uint8 or float, 0..255).
    Returns:
        float32 Tensor[3, floor(H * scale), floor(W * scale)] in 0..255 (the input, as float, when
        the size does not change).
    """
    height, width = image.shape[-2:]
    scale = min(min_size / min(height, width), max_size / max(height, width))
    new_size = (math.floor(height * scale), math.floor(width * scale))
    image = image.float()
    if new_size == (height, width):
        return image
    if min(new_size) < 1:  # a very elongated image: keep a one-pixel short side
        size = [max(1, side) for side in new_size]
        return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    # recompute_scale_factor=True: the sizes above, sampled at in_size / out_size (as torchvision)
    resized = F.interpolate(
        image[None],  # (1, 3, H, W)
        scale_factor=scale,
        mode="bilinear",
        recompute_scale_factor=True,
        align_corners=False,
    )
    return resized[0]


def resize_target(target: Instances, new_size: tuple[int, int]) -> Instances:
    """The target of the image resized from target.image_size to new_size (height, width)."""
    height, width = target.image_size
    if tuple(new_size) == (height, width):
        return target
    scale_y, scale_x = new_size[0] / height, new_size[1] / width
    fields = target.fields()
    if target.gt_boxes is not None:
        fields["gt_boxes"] = target.gt_boxes.scale(scale_x, scale_y)
    if target.gt_masks is not None:
        masks = target.gt_masks
        if isinstance(masks, BitMasks):
            fields["gt_masks"] = masks.resize(*new_size)
        else:
            fields["gt_masks"] = masks.scale(scale_x, scale_y)
    if target.gt_keypoints is not None:
        fields["gt_keypoints"] = target.gt_keypoints.scale(scale_x, scale_y)
    return Instances(new_size, **fields)


def flip_target(target: Instances, vertical: bool = False) -> Instances:
    """The target of the horizontally (or vertically) flipped image; keypoints are mirrored
    and their left/right partners swapped (their flip map)."""
    height, width = target.image_size
    fields = target.fields()
    for name in ("gt_boxes", "gt_masks", "gt_keypoints"):
        value = fields.get(name)
        if value is not None:
            fields[name] = value.flip_vertical(height) if vertical else value.flip(width)
    return Instances(target.image_size, **fields)


def clip_and_drop_empty(target: Instances) -> tuple[Instances, int]:
    """Clips the boxes to the image and removes those left with no area.

    Returns:
        The kept instances and the number removed.
    """
    if target.gt_boxes is None or len(target) == 0:
        return target, 0
    fields = target.fields()
    boxes = target.gt_boxes.clip(target.image_size)
    fields["gt_boxes"] = boxes
    clipped = Instances(target.image_size, **fields)
    keep = boxes.nonempty()
    dropped = int((~keep).sum())
    return (clipped[keep] if dropped else clipped), dropped


class ResizeShortestEdge:
    """Resizes the shorter image side to a size drawn from `min_sizes`, keeping the longer side
    within `max_size`.

    mode "antialias": uint8 stays uint8, sides rounded to the nearest pixel, antialiased bilinear.
    mode "torchvision": `resize_like_torchvision` (float 0..255 out, floored sides, plain bilinear),
    so that torchvision's detection weights see exactly the pixels torchvision gives them.
    """

    MODES = ("antialias", "torchvision")

    def __init__(self, min_sizes: Sequence[int], max_size: int, mode: str = "antialias") -> None:
        if not min_sizes:
            raise ValueError("ResizeShortestEdge needs at least one size")
        if mode not in self.MODES:
            raise ValueError(f"ResizeShortestEdge: mode must be one of {self.MODES}, got {mode!r}")
        self.min_sizes = [int(s) for s in min_sizes]
        self.max_size = int(max_size)
        self.mode = str(mode)

    def __call__(
        self, image: Tensor, target: Instances, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Instances]:
        choice = 0
        if len(self.min_sizes) > 1:
            choice = int(torch.randint(len(self.min_sizes), (1,), generator=generator))
        height, width = image.shape[-2:]
        if self.mode == "torchvision":
            image = resize_like_torchvision(image, self.min_sizes[choice], self.max_size)
            return image, resize_target(target, (image.shape[-2], image.shape[-1]))
        new_size = get_output_size(height, width, self.min_sizes[choice], self.max_size)
        if new_size != (height, width):
            image = TF.resize(image, list(new_size), antialias=True)
        return image, resize_target(target, new_size)

    def __repr__(self) -> str:
        return (
            f"ResizeShortestEdge(min_sizes={self.min_sizes}, max_size={self.max_size}, "
            f"mode={self.mode!r})"
        )


class RandomHorizontalFlip:
    """Flips the image, boxes, masks and keypoints (flip map) left-right with probability `prob`."""

    vertical = False

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = prob

    def __call__(
        self, image: Tensor, target: Instances, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Instances]:
        if self.prob <= 0 or float(torch.rand((), generator=generator)) >= self.prob:
            return image, target
        return image.flip(-2 if self.vertical else -1), flip_target(target, self.vertical)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prob={self.prob})"


class RandomVerticalFlip(RandomHorizontalFlip):
    """Flips the image, boxes and masks upside down with probability `prob`."""

    vertical = True


class ColorJitter:
    """torchvision's ColorJitter with our generator: brightness, contrast and saturation factors
    drawn from [max(0, 1 - v), 1 + v], a hue shift from [-hue, hue], applied in a random order
    (maskrcnn_benchmark's INPUT.BRIGHTNESS / CONTRAST / SATURATION / HUE). Targets are unchanged.
    uint8 images stay uint8; float images are taken as 0..255."""

    def __init__(
        self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
        hue: float = 0.0,
    ) -> None:  # fmt: skip
        for name, value in (("brightness", brightness), ("contrast", contrast),
                            ("saturation", saturation)):  # fmt: skip
            if value < 0:
                raise ValueError(f"ColorJitter: {name} must be >= 0, got {value}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"ColorJitter: hue must lie in [0, 0.5], got {hue}")
        self.amounts = {"brightness": brightness, "contrast": contrast, "saturation": saturation}
        self.hue = hue

    def __call__(
        self, image: Tensor, target: Instances, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Instances]:
        steps = [name for name, v in self.amounts.items() if v > 0] + (["hue"] if self.hue else [])
        if not steps:
            return image, target
        is_float = image.is_floating_point()
        out = image / 255.0 if is_float else image
        order: list[int] = tolist(torch.randperm(len(steps), generator=generator))
        for k in order:
            out = self._apply(steps[k], out, generator)
        return (out * 255.0 if is_float else out), target

    def _apply(self, step: str, image: Tensor, generator: torch.Generator | None) -> Tensor:
        u = float(torch.rand((), generator=generator))
        if step == "hue":
            return TF.adjust_hue(image, (2 * u - 1) * self.hue)
        amount = self.amounts[step]
        factor = max(0.0, 1 - amount) + u * (1 + amount - max(0.0, 1 - amount))
        adjust = {
            "brightness": TF.adjust_brightness,
            "contrast": TF.adjust_contrast,
            "saturation": TF.adjust_saturation,
        }[step]
        return adjust(image, factor)

    def __repr__(self) -> str:
        return f"ColorJitter({self.amounts}, hue={self.hue})"


class Compose:
    """Applies transforms in order, sharing one generator."""

    def __init__(
        self, transforms: Sequence[ColorJitter | ResizeShortestEdge | RandomHorizontalFlip]
    ) -> None:
        self.transforms = list(transforms)

    def __call__(
        self, image: Tensor, target: Instances, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Instances]:
        for transform in self.transforms:
            image, target = transform(image, target, generator)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"
