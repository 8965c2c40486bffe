"""RoI Pool (Fast R-CNN max pooling, Girshick 2015) over `torch.ops.detector.roi_pool`.

Shapes: N images, C channels, H x W feature map, K RoIs, PH x PW output bins.

Each RoI's corners are scaled by `spatial_scale` and rounded; the window (at least 1x1) is split
into PH x PW bins with floor/ceil edges, clipped to the map, and each bin takes the max of its
elements (0 for an empty bin), exactly as torchvision.ops.roi_pool. The gradient of a bin flows
to its arg-max element (the first max in row-major order) and sums where RoIs overlap.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from detector.ops._library import AutogradContext, register_autograd, register_fake, torch_check
from detector.ops._utils import (
    BroadcastingList2,
    check_device,
    check_input,
    check_rois_dtype,
    check_spatial_scale,
    convert_boxes_to_roi_format,
    positive_pair,
)

_OP = "roi_pool"


@torch.fx.wrap
def roi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Max-pools each RoI of `input` into an `output_size` grid (torchvision.ops.roi_pool).

    Args:
        input: (N, C, H, W) features; NCHW or channels-last.
        boxes: Tensor[K, 5] of (batch_index, x1, y1, x2, y2) in image coordinates, or a list of
            N Tensor[K_i, 4] (x1, y1, x2, y2), one per image.
        output_size: (PH, PW) or an int for a square grid.
        spatial_scale: factor from image to feature coordinates (1/stride, e.g. 1/16).

    Returns:
        (K, C, PH, PW) pooled features.
    """
    op = "roi_pool"
    check_input(op, input)
    rois = convert_boxes_to_roi_format(op, boxes)
    check_device(op, rois)
    rois = check_rois_dtype(op, input, rois)
    pooled_height, pooled_width = positive_pair(op, output_size)
    output, _ = torch.ops.detector.roi_pool(
        input, rois, check_spatial_scale(op, spatial_scale), pooled_height, pooled_width
    )
    return output


@register_fake("detector::roi_pool")
def _roi_pool_fake(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
) -> tuple[Tensor, Tensor]:
    torch_check(input.dim() == 4, lambda: f"{_OP}: expected a 4-D `input`")
    torch_check(rois.dim() == 2 and rois.size(1) == 5, lambda: f"{_OP}: expected rois (K, 5)")
    shape = (rois.size(0), input.size(1), pooled_height, pooled_width)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


@register_fake("detector::_roi_pool_backward")
def _roi_pool_backward_fake(
    grad: Tensor,
    rois: Tensor,
    argmax: Tensor,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    return grad.new_empty((batch_size, channels, height, width))


class _Context(AutogradContext[tuple[Tensor, Tensor]], Protocol):
    """Saved: the RoIs and the arg-max indices."""

    input_shape: tuple[int, ...]  # (N, C, H, W)


def _setup_context(
    ctx: _Context,
    inputs: tuple[Tensor, Tensor, float, int, int],
    output: tuple[Tensor, Tensor],
) -> None:
    input, rois, _, _, _ = inputs
    _, argmax = output
    ctx.save_for_backward(rois, argmax)
    ctx.input_shape = tuple(input.shape)


def _backward(
    ctx: _Context, grad_output: Tensor, _grad_argmax: Tensor | None
) -> tuple[Tensor, None, None, None, None]:
    rois, argmax = ctx.saved_tensors
    batch_size, channels, height, width = ctx.input_shape
    grad_input: Tensor = torch.ops.detector._roi_pool_backward(
        grad_output, rois, argmax, batch_size, channels, height, width
    )
    return grad_input, None, None, None, None


register_autograd("detector::roi_pool", _backward, setup_context=_setup_context)
