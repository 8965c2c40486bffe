"""Position-sensitive RoI pooling (R-FCN, Dai et al. 2016), as torchvision.ops.ps_roi_pool.

Shapes: N images, K RoIs, C_out output channels, (PH, PW) = output_size, B = PH * PW bins.
The input has C = C_out * B channels; bin (i, j) of output channel c averages input channel
c * B + i * PW + j over the bin's pixels (R-FCN eq. 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.ops._utils import (
    check_input,
    check_rois_dtype,
    check_spatial_scale,
    convert_boxes_to_roi_format,
    pair,
)

_OP = "ps_roi_pool"


def prepare_ps_roi_args(
    op: str,
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int] | list[int],
) -> tuple[Tensor, int, int]:
    """Checks the arguments shared by the position-sensitive ops.

    Returns (rois Tensor[K, 5] in input's dtype, PH, PW). Errors name `op` and the argument.
    """
    check_input(op, input)
    pooled_height, pooled_width = pair(op, output_size)
    if pooled_height <= 0 or pooled_width <= 0:
        raise ValueError(f"{op}: `output_size` must be positive, got {output_size!r}")
    bins = pooled_height * pooled_width
    if input.shape[1] % bins != 0:
        raise ValueError(
            f"{op}: `input` has {input.shape[1]} channels, which is not a multiple of "
            f"output_size[0] * output_size[1] = {bins}; position-sensitive pooling needs "
            "C_out * PH * PW input channels"
        )
    rois = convert_boxes_to_roi_format(op, boxes)
    rois = check_rois_dtype(op, input, rois)
    return rois, pooled_height, pooled_width


def ps_roi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Position-sensitive RoI pooling.

    Args:
        input: Tensor[N, C_out * PH * PW, H, W] (float32 or float64; any memory format).
        boxes: Tensor[K, 5] of (batch_index, x1, y1, x2, y2), or a list of Tensor[K_i, 4].
        output_size: (PH, PW), or an int for both.
        spatial_scale: feature-map pixels per box unit (e.g. 1/16 for a stride-16 map).

    Returns:
        Tensor[K, C_out, PH, PW]. As in torchvision, the box is rounded to whole pixels, bins
        are clipped to [0, H - 1] x [0, W - 1] and an empty bin gives 0.
    """
    rois, pooled_height, pooled_width = prepare_ps_roi_args(_OP, input, boxes, output_size)
    return torch.ops.detector.ps_roi_pool(
        input, rois, check_spatial_scale(_OP, spatial_scale), pooled_height, pooled_width
    )


@torch.library.register_fake("detector::ps_roi_pool")
def _ps_roi_pool_fake(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
) -> Tensor:
    torch._check(rois.dim() == 2 and rois.size(1) == 5, lambda: f"{_OP}: rois must be (K, 5)")
    channels_out = input.size(1) // (pooled_height * pooled_width)
    # (N, C_out * PH * PW, H, W) -> (K, C_out, PH, PW)
    return input.new_empty((rois.size(0), channels_out, pooled_height, pooled_width))


@torch.library.register_fake("detector::_ps_roi_pool_backward")
def _ps_roi_pool_backward_fake(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    return grad.new_empty((batch_size, channels, height, width))


def _setup_context(ctx, inputs, output) -> None:
    input, rois, spatial_scale, pooled_height, pooled_width = inputs
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scale, pooled_height, pooled_width)
    ctx.input_shape = tuple(input.shape)


def _backward(ctx, grad: Tensor):
    (rois,) = ctx.saved_tensors
    grad_input = torch.ops.detector._ps_roi_pool_backward(
        grad.contiguous(), rois, *ctx.args, *ctx.input_shape
    )
    return grad_input, None, None, None, None


torch.library.register_autograd("detector::ps_roi_pool", _backward, setup_context=_setup_context)


# The backward op is linear in `grad` and is the transpose of the forward, so its own gradient
# (for double backward) is the forward applied to the incoming gradient.
def _setup_backward_context(ctx, inputs, output) -> None:
    _, rois, spatial_scale, pooled_height, pooled_width = inputs[:5]
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scale, pooled_height, pooled_width)


def _backward_backward(ctx, grad_grad_input: Tensor):
    (rois,) = ctx.saved_tensors
    grad_grad = torch.ops.detector.ps_roi_pool(grad_grad_input.contiguous(), rois, *ctx.args)
    return (grad_grad,) + (None,) * 8


torch.library.register_autograd(
    "detector::_ps_roi_pool_backward", _backward_backward, setup_context=_setup_backward_context
)
