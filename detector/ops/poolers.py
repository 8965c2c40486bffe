"""Pooling from a feature pyramid: FPN level assignment and `MultiScaleRoIAlign`, a drop-in for
torchvision.ops.MultiScaleRoIAlign built on the fused multi-level kernel (`multi_scale_roi_align`).

Shapes: N images, L pooled levels, C channels, K RoIs over the batch (in image order),
(ph, pw) = output_size.

The detector's `Pooler` (detector/modeling/roi_heads/poolers.py) assigns levels with the same
`assign_fpn_levels` and pools RoI Align types through the same `multi_scale_roi_align` op.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from detector.ops._utils import (
    BroadcastingList2,
    convert_boxes_to_roi_format,
    pair,
    reduced_input_keeps_rois,
)
from detector.ops.roi_align import multi_scale_roi_align, roi_align

__all__ = ["MultiScaleRoIAlign", "assign_fpn_levels", "reduced_input_keeps_rois"]


def assign_fpn_levels(
    boxes: Tensor,
    min_level: int,
    max_level: int,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Tensor:
    """The pyramid level of each box, FPN paper eq. 1: k = floor(k0 + log2(sqrt(wh) / 224)).

    Computed as torchvision's LevelMapper (including its eps), so both pick the same level for
    every box.

    Args:
        boxes: ``(K, 4)`` xyxy boxes in image pixels.
        min_level, max_level: the first and last pooled levels (2 and 5 for P2..P5).

    Returns:
        ``(K,)`` int64 indices into the pooled levels, in ``[0, max_level - min_level]``.
    """
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    sizes = torch.sqrt(widths * heights)
    levels = torch.floor(
        canonical_level
        + torch.log2(sizes / canonical_scale)
        + torch.tensor(eps, dtype=sizes.dtype, device=sizes.device)
    )
    levels = torch.clamp(levels, min=min_level, max=max_level)
    return levels.to(torch.int64) - min_level


def _log2(value: float) -> float:
    """log2 for TorchScript, which has no math.log2."""
    return math.log(value) / math.log(2.0)


def infer_scale(feature: Tensor, image_size: tuple[int, int]) -> float:
    """The spatial scale 2^-k of a map (N, C, H, W) for images of `image_size` (height, width):
    H / height rounded to a power of 2, as torchvision (which reads the height only)."""
    approx = float(feature.shape[-2]) / float(image_size[0])
    return 2.0 ** float(round(_log2(approx)))


def _largest_image_size(image_shapes: list[tuple[int, int]]) -> tuple[int, int]:
    """(max height, max width) over the images: the padded batch's size."""
    if len(image_shapes) == 0:
        raise ValueError("MultiScaleRoIAlign: `image_shapes` is empty; pass one (h, w) per image")
    height, width = 0, 0
    for shape in image_shapes:
        height = max(height, shape[0])
        width = max(width, shape[1])
    return height, width


def _filter_input(x: dict[str, Tensor], featmap_names: list[str]) -> list[Tensor]:
    """The maps of `x` named in `featmap_names`, in `x`'s order (torchvision's rule)."""
    features: list[Tensor] = []
    for key, value in x.items():  # TorchScript has no comprehension with `if`
        if key in featmap_names:
            features.append(value)
    return features


@torch.fx.wrap
def _pool_pyramid(
    x: dict[str, Tensor],
    featmap_names: list[str],
    boxes: list[Tensor],
    image_shapes: list[tuple[int, int]],
    output_size: tuple[int, int],
    sampling_ratio: int,
    canonical_scale: int,
    canonical_level: int,
) -> Tensor:
    """Pools each box from its FPN level (one map: from that map), scales inferred from sizes.

    One function, a leaf for torch.fx (as torchvision's): the traced module is one call."""
    features = _filter_input(x, featmap_names)
    if len(features) == 0:
        raise ValueError("MultiScaleRoIAlign: no feature map of `x` is named in `featmap_names`")
    image_size = _largest_image_size(image_shapes)
    scales = [infer_scale(feature, image_size) for feature in features]
    rois = convert_boxes_to_roi_format("MultiScaleRoIAlign", boxes)
    if len(features) == 1:
        return roi_align(features[0], rois, output_size, scales[0], sampling_ratio)
    min_level = int(round(-_log2(scales[0])))
    max_level = int(round(-_log2(scales[-1])))
    levels = assign_fpn_levels(
        rois[:, 1:], min_level, max_level, float(canonical_scale), canonical_level
    )
    return multi_scale_roi_align(features, rois, levels, output_size, scales, sampling_ratio)


class MultiScaleRoIAlign(nn.Module):
    """RoI Align from a feature pyramid, torchvision.ops.MultiScaleRoIAlign's API and results.

    Each box is pooled from the level of FPN eq. 1 (`canonical_level` k0 for a box of
    `canonical_scale` x `canonical_scale` pixels), all levels in one fused op call on the CPU.
    The levels' scales are inferred from the map and image sizes at every call (torchvision
    infers them at the first call and keeps them).

    Args:
        featmap_names: names of the maps of `x` to pool from, finest first.
        output_size: (ph, pw), or an int for a square output.
        sampling_ratio: sample points per bin along each axis; <= 0 for adaptive.
        canonical_scale, canonical_level: 224 and k0 = 4 in FPN eq. 1.

    Forward: x (name -> (N, C, H_l, W_l)), boxes (N Tensor[K_i, 4], image pixels), image_shapes
    (N (height, width) before the backbone) -> Tensor[K, C, ph, pw].
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: BroadcastingList2[int],
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = pair("MultiScaleRoIAlign", output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.canonical_scale = int(canonical_scale)
        self.canonical_level = int(canonical_level)

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        return _pool_pyramid(
            x,
            self.featmap_names,
            boxes,
            image_shapes,
            self.output_size,
            self.sampling_ratio,
            self.canonical_scale,
            self.canonical_level,
        )

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}"
        )
