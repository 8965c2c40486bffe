"""Deformable convolution: DCN v1 (Dai et al. 2017) and, with a mask, DCN v2 (Zhu et al. 2019).

Shape glossary:
    N images, C input channels, H x W input size, O output channels, kh x kw kernel,
    G offset groups (deformable groups), H_out x W_out output size.

    input  (N, C, H, W)
    offset (N, 2 * G * kh * kw, H_out, W_out): (dy, dx) per offset group and kernel tap
    mask   (N, G * kh * kw, H_out, W_out): modulation scalars (DCN v2), optional
    weight (O, C / groups, kh, kw), bias (O,)

Output (DCN v2, eq. 3): y(p) = sum_k w_k * x(p + p_k + dp_k) * dm_k, where x(.) is bilinearly
interpolated with zeros outside the map, exactly as torchvision.ops.deform_conv2d.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.ops._library import CUDA_VERSION  # noqa: F401  (loads torch.ops.detector)
from detector.ops._utils import check_device, check_input, pair

_OP = "deform_conv2d"


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: Tensor | None = None,
) -> Tensor:
    """Deformable convolution (v1 without `mask`, v2 with it); torchvision.ops.deform_conv2d's API.

    Args:
        input: (N, C, H, W) features.
        offset: (N, 2 * G * kh * kw, H_out, W_out) sampling offsets, (dy, dx) pairs per kernel tap;
            G (offset groups) is inferred from its channel count.
        weight: (O, C / groups, kh, kw) convolution weights; groups = C / weight.shape[1].
        bias: (O,) or None.
        stride, padding, dilation: an int or an (h, w) pair.
        mask: (N, G * kh * kw, H_out, W_out) modulation scalars, or None (DCN v1).

    Returns:
        (N, O, H_out, W_out) output.
    """
    check_input(_OP, input)
    check_input(_OP, offset, name="offset")
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"{_OP}: `weight` must be 4-D (O, C / groups, kh, kw), got {shape}")
    if mask is not None and (not isinstance(mask, Tensor) or mask.dim() != 4):
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(
            f"{_OP}: `mask` must be 4-D (N, offset_groups * kh * kw, H_out, W_out), got {shape}"
        )
    check_device(_OP, weight, bias, mask)
    stride_h, stride_w = pair(_OP, stride, "stride")
    pad_h, pad_w = pair(_OP, padding, "padding")
    dil_h, dil_w = pair(_OP, dilation, "dilation")
    kernel_h, kernel_w = weight.shape[-2:]
    in_channels, weight_channels = input.shape[1], weight.shape[1]
    if weight_channels == 0 or in_channels % weight_channels != 0:
        raise RuntimeError(
            f"{_OP}: `weight`.shape[1] = {weight_channels} must divide the input channels "
            f"{in_channels} (weight groups = C / weight.shape[1])"
        )
    groups = in_channels // weight_channels
    offset_groups = offset.shape[1] // (2 * kernel_h * kernel_w)
    if offset_groups == 0 or offset.shape[1] != 2 * offset_groups * kernel_h * kernel_w:
        raise RuntimeError(
            f"{_OP}: `offset`.shape[1] = {offset.shape[1]} must be a positive multiple of "
            f"2 * kh * kw = {2 * kernel_h * kernel_w} (2 * offset_groups * kh * kw)"
        )
    return torch.ops.detector.deform_conv2d(
        input, offset, weight, mask, bias,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, offset_groups,
    )  # fmt: skip


@torch.library.register_fake("detector::deform_conv2d")
def _deform_conv2d_fake(
    input: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None, bias: Tensor | None,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dil_h: int, dil_w: int,
    groups: int, offset_groups: int,
) -> Tensor:  # fmt: skip
    torch._check(input.dim() == 4 and weight.dim() == 4 and offset.dim() == 4)
    kernel_h, kernel_w = weight.shape[-2:]
    out_h = (input.shape[2] + 2 * pad_h - (dil_h * (kernel_h - 1) + 1)) // stride_h + 1
    out_w = (input.shape[3] + 2 * pad_w - (dil_w * (kernel_w - 1) + 1)) // stride_w + 1
    return input.new_empty((input.shape[0], weight.shape[0], out_h, out_w))


@torch.library.register_fake("detector::_deform_conv2d_backward")
def _deform_conv2d_backward_fake(
    grad_output: Tensor, input: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dil_h: int, dil_w: int,
    groups: int, offset_groups: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    grad_mask = mask.new_empty(mask.shape) if mask is not None else input.new_empty((0,))
    return (
        input.new_empty(input.shape),
        offset.new_empty(offset.shape),
        weight.new_empty(weight.shape),
        grad_mask,
        grad_output.new_empty((weight.shape[0],)),
    )


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    input, offset, weight, mask, bias, *params = inputs
    ctx.save_for_backward(input, offset, weight, mask)
    ctx.params = params
    ctx.has_mask = mask is not None
    ctx.has_bias = bias is not None


def _backward(ctx, grad_output: Tensor) -> tuple:
    input, offset, weight, mask = ctx.saved_tensors
    grad_input, grad_offset, grad_weight, grad_mask, grad_bias = (
        torch.ops.detector._deform_conv2d_backward(
            grad_output, input, offset, weight, mask if ctx.has_mask else None, *ctx.params
        )
    )
    return (
        grad_input,
        grad_offset,
        grad_weight,
        grad_mask if ctx.has_mask else None,
        grad_bias if ctx.has_bias else None,
    ) + (None,) * len(ctx.params)


torch.library.register_autograd("detector::deform_conv2d", _backward, setup_context=_setup_context)
