"""Calls of every public op on small inputs, shared by the tests of graph capture and autocast.

OP_CASES: name -> OpCase(fn, args) where `args()` builds fresh positional arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from detector import ops


def features(channels: int = 8, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, channels, 10, 11, generator=g)


def rois() -> Tensor:
    """Tensor[4, 5] RoIs on both images, one partly outside the map."""
    return torch.tensor(
        [[0, 1.0, 2.0, 9.0, 8.0], [1, 0.5, 0.5, 6.0, 9.5], [1, -2.0, 3.0, 5.0, 12.0],
         [0, 3.0, 3.0, 4.5, 4.0]]
    )  # fmt: skip


def per_bin(channels: int, seed: int) -> Tensor:
    """Tensor[4, channels, 2, 2]: an offset (2 channels) or mask (1 channel) per RoI bin."""
    return torch.rand(4, channels, 2, 2, generator=torch.Generator().manual_seed(seed)) * 0.5


def nms_inputs() -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(40, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + torch.rand(40, 2, generator=g) * 20 + 1], dim=1)
    return boxes, torch.rand(40, generator=g), torch.randint(0, 3, (40,), generator=g)


def deform_conv_inputs() -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 7, 8, generator=g)
    offset = torch.randn(2, 2 * 9, 7, 8, generator=g)
    weight = torch.randn(6, 4, 3, 3, generator=g)
    mask = torch.rand(2, 9, 7, 8, generator=g)
    return x, offset, weight, torch.randn(6, generator=g), mask


@dataclass(frozen=True)
class OpCase:
    """An op function and a call of it; `args()` builds fresh positional arguments."""

    fn: Callable[..., Tensor]
    args: Callable[[], tuple]


def levels() -> Tensor:
    return torch.tensor([0, 1, 1, 0])


OP_CASES = {
    "roi_align": OpCase(ops.roi_align, lambda: (features(), rois(), (3, 2), 0.5, 2, True)),
    "roi_align_max": OpCase(ops.roi_align, lambda: (features(), rois(), 3, 0.5, -1, False, "max")),
    "roi_align_list": OpCase(
        ops.roi_align, lambda: (features(), [rois()[:2, 1:], rois()[2:, 1:]], 2, 0.5, 2)
    ),
    "roi_pool": OpCase(ops.roi_pool, lambda: (features(), rois(), [2, 3], 0.5)),
    "ps_roi_align": OpCase(ops.ps_roi_align, lambda: (features(), rois(), 2, 0.5, 2)),
    "ps_roi_pool": OpCase(ops.ps_roi_pool, lambda: (features(), rois(), 2, 0.5)),
    "deform_roi_pool": OpCase(
        ops.deform_roi_pool,
        lambda: (features(), rois(), per_bin(2, 1), 2, 0.5, 2, 0.1, per_bin(1, 2)),
    ),
    "deform_ps_roi_pool": OpCase(
        ops.deform_ps_roi_pool, lambda: (features(), rois(), per_bin(2, 1), 2, 0.5, 2)
    ),
    "deform_conv2d": OpCase(
        ops.deform_conv2d,
        lambda: (*deform_conv_inputs()[:4], 1, 1, 1, deform_conv_inputs()[4]),
    ),
    "nms": OpCase(ops.nms, lambda: (*nms_inputs()[:2], 0.5)),
    "batched_nms": OpCase(ops.batched_nms, lambda: (*nms_inputs(), 0.5)),
    "multi_scale_roi_align": OpCase(
        ops.multi_scale_roi_align,
        lambda: (
            [features(), features(seed=1)[:, :, :5, :6]],
            rois(),
            levels(),
            2,
            [0.5, 0.25],
        ),
    ),
}
