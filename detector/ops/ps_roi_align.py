"""Position-sensitive RoI Align, as torchvision.ops.ps_roi_align.

Shapes: N images, K RoIs, C_out output channels, (PH, PW) = output_size, B = PH * PW bins.
The input has C = C_out * B channels; bin (i, j) of output channel c averages bilinear samples
of input channel c * B + i * PW + j (R-FCN's position-sensitive pooling with RoI Align sampling).
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.ops._utils import check_spatial_scale
from detector.ops.ps_roi_pool import prepare_ps_roi_args

_OP = "ps_roi_align"


def ps_roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> Tensor:
    """Position-sensitive RoI Align.

    Args:
        input: Tensor[N, C_out * PH * PW, H, W] (float32 or float64; any memory format).
        boxes: Tensor[K, 5] of (batch_index, x1, y1, x2, y2), or a list of Tensor[K_i, 4].
        output_size: (PH, PW), or an int for both.
        spatial_scale: feature-map pixels per box unit (e.g. 1/16 for a stride-16 map).
        sampling_ratio: sample points per bin side; <= 0 uses ceil(bin size) points.

    Returns:
        Tensor[K, C_out, PH, PW]. Boxes are shifted by -0.5 pixel as in torchvision (pixel
        centres at integer coordinates). A zero-height or zero-width box with adaptive sampling
        gives 0 (torchvision gives NaN there).
    """
    rois, pooled_height, pooled_width = prepare_ps_roi_args(_OP, input, boxes, output_size)
    if not isinstance(sampling_ratio, int):
        raise TypeError(f"{_OP}: `sampling_ratio` must be an int, got {sampling_ratio!r}")
    scale = check_spatial_scale(_OP, spatial_scale)
    return torch.ops.detector.ps_roi_align(
        input, rois, scale, pooled_height, pooled_width, sampling_ratio
    )


@torch.library.register_fake("detector::ps_roi_align")
def _ps_roi_align_fake(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
) -> Tensor:
    torch._check(rois.dim() == 2 and rois.size(1) == 5, lambda: f"{_OP}: rois must be (K, 5)")
    channels_out = input.size(1) // (pooled_height * pooled_width)
    # (N, C_out * PH * PW, H, W) -> (K, C_out, PH, PW)
    return input.new_empty((rois.size(0), channels_out, pooled_height, pooled_width))


@torch.library.register_fake("detector::_ps_roi_align_backward")
def _ps_roi_align_backward_fake(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    return grad.new_empty((batch_size, channels, height, width))


def _setup_context(ctx, inputs, output) -> None:
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio = inputs
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scale, pooled_height, pooled_width, sampling_ratio)
    ctx.input_shape = tuple(input.shape)


def _backward(ctx, grad: Tensor):
    (rois,) = ctx.saved_tensors
    grad_input = torch.ops.detector._ps_roi_align_backward(
        grad.contiguous(), rois, *ctx.args, *ctx.input_shape
    )
    return grad_input, None, None, None, None, None


torch.library.register_autograd("detector::ps_roi_align", _backward, setup_context=_setup_context)


# The backward op is linear in `grad` and is the transpose of the forward, so its own gradient
# (for double backward) is the forward applied to the incoming gradient.
def _setup_backward_context(ctx, inputs, output) -> None:
    _, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio = inputs[:6]
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scale, pooled_height, pooled_width, sampling_ratio)


def _backward_backward(ctx, grad_grad_input: Tensor):
    (rois,) = ctx.saved_tensors
    grad_grad = torch.ops.detector.ps_roi_align(grad_grad_input.contiguous(), rois, *ctx.args)
    return (grad_grad,) + (None,) * 9


torch.library.register_autograd(
    "detector::_ps_roi_align_backward", _backward_backward, setup_context=_setup_backward_context
)
