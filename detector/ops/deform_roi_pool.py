"""Deformable RoI pooling (Dai et al. 2017, "Deformable Convolutional Networks", Sec. 2.2) and its
position-sensitive form (deformable PS RoI pooling for R-FCN), optionally modulated (DCN v2).

Shapes: N images, C channels, H x W feature map, K RoIs, ph x pw output bins (P = ph * pw).

Both ops pool RoI Align-style bins with the half-pixel ("aligned") convention, as mmcv's
DeformRoIPool: an RoI (x1, y1, x2, y2) covers x1 * spatial_scale - 0.5 .. x2 * spatial_scale - 0.5
(likewise in y), its extent is not clamped, and each bin averages grid_h x grid_w bilinear samples
(grid = sampling_ratio, or ceil(bin size) when sampling_ratio <= 0). Bin (i, j) of RoI k is moved
by (Eq. 5 of the paper, normalized offsets scaled by gamma and the RoI size):

    dx = gamma * offset[k, 0, i, j] * roi_width,    dy = gamma * offset[k, 1, i, j] * roi_height

Channel 0 of `offset` is x and channel 1 is y, the order of mmcv's DeformRoIPool. The modulated
variant (DCN v2) multiplies bin (i, j) by mask[k, 0, i, j]. With offset = 0 and no mask,
`deform_roi_pool` equals `roi_align(..., aligned=True)` and `deform_ps_roi_pool` equals
torchvision's `ps_roi_align` (which uses the same half-pixel convention), except on bins with no
sample (zero-size or inverted RoIs with adaptive sampling), where torchvision's ps_roi_align
divides 0 by 0 and returns NaN while ours returns 0, as roi_align does.
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
    check_same_device,
    check_spatial_scale,
    convert_boxes_to_roi_format,
    positive_pair,
    shape_str,
    sizes_str,
)

__all__ = ["deform_roi_pool", "deform_ps_roi_pool"]


@torch.fx.wrap
def deform_roi_pool(
    input: Tensor,
    rois: Tensor | list[Tensor],
    offset: Tensor | None,
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    gamma: float = 0.1,
    mask: Tensor | None = None,
) -> Tensor:
    """Deformable RoI pooling (DCN v1), or modulated deformable RoI pooling (DCN v2) with `mask`.

    Args:
        input: Tensor[N, C, H, W] features: float32, float64, or float16/bfloat16 (computed in
            float32).
        rois: Tensor[K, 5] (batch_index, x1, y1, x2, y2) in image coordinates, or a list of
            Tensor[K_i, 4] boxes, one per image.
        offset: Tensor[K, 2, ph, pw] normalized learned offsets, channel 0 = x, 1 = y (mmcv's
            order); bin (i, j) moves by gamma * offset * (RoI width, RoI height). None: no
            deformation (then this is roi_align with aligned=True).
        output_size: (ph, pw) or an int for square output.
        spatial_scale: feature-map size / image size (1/4 for a stride-4 map).
        sampling_ratio: bilinear samples per bin along each axis; <= 0: ceil(RoI size / output
            size), adaptively per RoI.
        gamma: scale of the normalized offsets (0.1 in the paper).
        mask: Tensor[K, 1, ph, pw] modulation multiplying each bin's output (DCN v2), or None.

    Returns:
        Tensor[K, C, ph, pw]. Gradients flow to input, offset and mask.
    """
    return _deform_pool(
        input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma, mask, False
    )


@torch.fx.wrap
def deform_ps_roi_pool(
    input: Tensor,
    rois: Tensor | list[Tensor],
    offset: Tensor | None,
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    gamma: float = 0.1,
    mask: Tensor | None = None,
) -> Tensor:
    """Deformable position-sensitive RoI pooling (R-FCN with deformable PS RoI pooling).

    Bin (i, j) of output channel c pools input channel c * ph * pw + i * pw + j (the layout of
    torchvision's ps_roi_align), after the bin has been moved by its offset as in
    `deform_roi_pool`. The offsets are class-agnostic: one Tensor[K, 2, ph, pw] is shared by all
    output channels.

    Args:
        input: Tensor[N, C_out * ph * pw, H, W] position-sensitive score maps.
        rois: Tensor[K, 5] (batch_index, x1, y1, x2, y2) or a list of Tensor[K_i, 4].
        offset: Tensor[K, 2, ph, pw] normalized offsets (channel 0 = x, 1 = y) shared by all
            output channels, or None for none (then this equals torchvision.ops.ps_roi_align).
        output_size: (ph, pw) or an int.
        spatial_scale: feature-map size / image size.
        sampling_ratio: samples per bin along each axis; <= 0: adaptive.
        gamma: scale of the normalized offsets.
        mask: Tensor[K, 1, ph, pw] modulation of each bin (DCN v2), or None.

    Returns:
        Tensor[K, C_out, ph, pw].
    """
    return _deform_pool(
        input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma, mask, True
    )


def _deform_pool(
    input: Tensor,
    rois: Tensor | list[Tensor],
    offset: Tensor | None,
    output_size: BroadcastingList2[int],
    spatial_scale: float,
    sampling_ratio: int,
    gamma: float,
    mask: Tensor | None,
    position_sensitive: bool,
) -> Tensor:
    """Either form, checked, on the compiled op."""
    op = "deform_ps_roi_pool" if position_sensitive else "deform_roi_pool"
    args = _deform_pool_args(
        op, input, rois, offset, output_size, spatial_scale, mask, position_sensitive
    )
    roi_tensor, offset, mask, scale, pooled_height, pooled_width = args
    if position_sensitive:
        return torch.ops.detector.deform_ps_roi_pool(
            input, roi_tensor, offset, mask, scale, pooled_height, pooled_width,
            int(sampling_ratio), float(gamma),
        )  # fmt: skip
    return torch.ops.detector.deform_roi_pool(
        input, roi_tensor, offset, mask, scale, pooled_height, pooled_width,
        int(sampling_ratio), float(gamma),
    )  # fmt: skip


def _deform_pool_args(
    op: str,
    input: Tensor,
    rois: Tensor | list[Tensor],
    offset: Tensor | None,
    output_size: BroadcastingList2[int],
    spatial_scale: float,
    mask: Tensor | None,
    position_sensitive: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None, float, int, int]:
    """Checks the arguments of either form; returns (rois, offset, mask, scale, ph, pw) with the
    RoIs as Tensor[K, 5] and rois, offset and mask in `input`'s dtype."""
    check_input(op, input)
    pooled_height, pooled_width = positive_pair(op, output_size)
    roi_tensor = check_rois_dtype(op, input, convert_boxes_to_roi_format(op, rois))
    if position_sensitive and input.size(1) % (pooled_height * pooled_width) != 0:
        raise ValueError(
            f"{op}: `input` must have C_out * ph * pw channels; {input.size(1)} channels are not "
            f"divisible by ph * pw = {pooled_height * pooled_width}"
        )
    expected = (roi_tensor.size(0), pooled_height, pooled_width)
    offset = _check_per_bin(op, "offset", offset, input, expected, 2)
    mask = _check_per_bin(op, "mask", mask, input, expected, 1)
    scale = check_spatial_scale(op, spatial_scale)
    return roi_tensor, offset, mask, scale, pooled_height, pooled_width


def _check_per_bin(
    op: str,
    name: str,
    value: Tensor | None,
    input: Tensor,
    expected: tuple[int, int, int],
    channels: int,
) -> Tensor | None:
    """Checks an offset (channels 2) or mask (channels 1) of shape (K, channels, ph, pw)."""
    if value is None:
        return None
    num_rois, pooled_height, pooled_width = expected
    shape = [num_rois, channels, pooled_height, pooled_width]
    if not isinstance(value, Tensor):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"{op}: `{name}` must be a Tensor{shape} or None")
    if list(value.shape) != shape:
        raise ValueError(
            f"{op}: `{name}` must have shape (K, {channels}, ph, pw) = {sizes_str(shape)}, got "
            f"{shape_str(value)}"
        )
    if not value.is_floating_point():
        raise TypeError(f"{op}: `{name}` must be a floating point tensor, got {value.dtype}")
    check_same_device(op, name, value, input, "input")
    check_device(op, value)
    return value.to(input.dtype)


# ------------------------------------------------------------------------------------------------
# Fake kernels and autograd of the four operators.


def _fake_forward(
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    mask: Tensor | None,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    gamma: float,
    position_sensitive: bool,
) -> Tensor:
    channels = input.size(1)
    if position_sensitive:
        torch_check(channels % (pooled_height * pooled_width) == 0)
        channels = channels // (pooled_height * pooled_width)
    return input.new_empty((rois.size(0), channels, pooled_height, pooled_width))


def _fake_backward(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    mask: Tensor | None,
    pooled_height: int,
    pooled_width: int,
    offset_grad: bool,
    mask_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    num_rois = rois.size(0)
    grad_offset = (
        input.new_empty((num_rois, 2, pooled_height, pooled_width))
        if offset_grad and offset is not None
        else input.new_empty((0,))
    )
    grad_mask = (
        input.new_empty((num_rois, 1, pooled_height, pooled_width))
        if mask_grad and mask is not None
        else input.new_empty((0,))
    )
    return torch.empty_like(input), grad_offset, grad_mask


class _Context(AutogradContext[tuple[Tensor, Tensor, Tensor | None, Tensor | None]], Protocol):
    """Saved: input, RoIs, offset and mask (None where the op got None)."""

    params: list[float]  # spatial_scale, pooled_height, pooled_width, sampling_ratio, gamma


def _register(name: str, position_sensitive: bool) -> None:
    """Registers the fake kernels of `name` and its backward op, and the autograd of `name`."""
    backward_op = getattr(torch.ops.detector, f"_{name}_backward")

    @register_fake(f"detector::{name}")
    def _(
        input: Tensor,
        rois: Tensor,
        offset: Tensor | None,
        mask: Tensor | None,
        spatial_scale: float,
        pooled_height: int,
        pooled_width: int,
        sampling_ratio: int,
        gamma: float,
    ) -> Tensor:
        return _fake_forward(
            input,
            rois,
            offset,
            mask,
            spatial_scale,
            pooled_height,
            pooled_width,
            sampling_ratio,
            gamma,
            position_sensitive,
        )

    @register_fake(f"detector::_{name}_backward")
    def _(
        grad: Tensor,
        input: Tensor,
        rois: Tensor,
        offset: Tensor | None,
        mask: Tensor | None,
        spatial_scale: float,
        pooled_height: int,
        pooled_width: int,
        sampling_ratio: int,
        gamma: float,
        offset_grad: bool,
        mask_grad: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        return _fake_backward(
            grad, input, rois, offset, mask, pooled_height, pooled_width, offset_grad, mask_grad
        )

    def setup_context(
        ctx: _Context,
        inputs: tuple[Tensor, Tensor, Tensor | None, Tensor | None, float, int, int, int, float],
        output: Tensor,
    ) -> None:
        input, rois, offset, mask, *params = inputs
        ctx.save_for_backward(input, rois, offset, mask)
        ctx.params = params  # spatial_scale, pooled_height, pooled_width, sampling_ratio, gamma

    def backward(
        ctx: _Context, grad: Tensor
    ) -> tuple[Tensor, None, Tensor | None, Tensor | None, None, None, None, None, None]:
        input, rois, offset, mask = ctx.saved_tensors
        offset_grad = offset is not None and ctx.needs_input_grad[2]
        mask_grad = mask is not None and ctx.needs_input_grad[3]
        grad_input, grad_offset, grad_mask = backward_op(
            grad, input, rois, offset, mask, *ctx.params, offset_grad, mask_grad
        )
        return (
            grad_input,
            None,
            grad_offset if offset_grad else None,
            grad_mask if mask_grad else None,
            None,
            None,
            None,
            None,
            None,
        )

    register_autograd(f"detector::{name}", backward, setup_context=setup_context)


_register("deform_roi_pool", position_sensitive=False)
_register("deform_ps_roi_pool", position_sensitive=True)
