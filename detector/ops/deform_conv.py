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

from typing import Protocol

import torch
from torch import Tensor

from detector.ops._library import AutogradContext, register_autograd, register_fake, torch_check
from detector.ops._utils import BroadcastingList2, check_device, check_input, pair, shape_str


def _check_weight_and_mask(op: str, weight: Tensor, mask: Tensor | None) -> None:
    """Checks that `weight` and (when given) `mask` are 4-D tensors."""
    if not isinstance(weight, Tensor):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError(
            f"{op}: `weight` must be 4-D (O, C / groups, kh, kw), got {type(weight).__name__}"
        )
    if weight.dim() != 4:
        raise ValueError(
            f"{op}: `weight` must be 4-D (O, C / groups, kh, kw), got {shape_str(weight)}"
        )
    if mask is None:
        return
    if not isinstance(mask, Tensor):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError(f"{op}: `mask` must be 4-D, got {type(mask).__name__}")
    if mask.dim() != 4:
        raise ValueError(
            f"{op}: `mask` must be 4-D (N, offset_groups * kh * kw, H_out, W_out), got "
            f"{shape_str(mask)}"
        )


def _groups(op: str, input: Tensor, offset: Tensor, weight: Tensor) -> tuple[int, int]:
    """Returns (weight groups, offset groups) inferred from the channel counts, checked."""
    kernel_h, kernel_w = weight.shape[2], weight.shape[3]
    in_channels, weight_channels = input.shape[1], weight.shape[1]
    if weight_channels == 0 or in_channels % weight_channels != 0:
        raise RuntimeError(
            f"{op}: `weight`.shape[1] = {weight_channels} must divide the input channels "
            f"{in_channels} (weight groups = C / weight.shape[1])"
        )
    taps = 2 * kernel_h * kernel_w
    offset_groups = offset.shape[1] // taps
    if offset_groups == 0 or offset.shape[1] != offset_groups * taps:
        raise RuntimeError(
            f"{op}: `offset`.shape[1] = {offset.shape[1]} must be a positive multiple of "
            f"2 * kh * kw = {taps} (2 * offset_groups * kh * kw)"
        )
    return in_channels // weight_channels, offset_groups


@torch.fx.wrap
def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: BroadcastingList2[int] = 1,
    padding: BroadcastingList2[int] = 0,
    dilation: BroadcastingList2[int] = 1,
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
    op = "deform_conv2d"
    check_input(op, input)
    check_input(op, offset, name="offset")
    _check_weight_and_mask(op, weight, mask)
    check_device(op, weight)
    check_device(op, bias)
    check_device(op, mask)
    stride_h, stride_w = pair(op, stride, "stride")
    pad_h, pad_w = pair(op, padding, "padding")
    dil_h, dil_w = pair(op, dilation, "dilation")
    groups, offset_groups = _groups(op, input, offset, weight)
    return torch.ops.detector.deform_conv2d(
        input, offset, weight, mask, bias,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, offset_groups,
    )  # fmt: skip


@register_fake("detector::deform_conv2d")
def _deform_conv2d_fake(
    input: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None, bias: Tensor | None,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dil_h: int, dil_w: int,
    groups: int, offset_groups: int,
) -> Tensor:  # fmt: skip
    torch_check(input.dim() == 4 and weight.dim() == 4 and offset.dim() == 4)
    kernel_h, kernel_w = weight.shape[-2:]
    out_h = (input.shape[2] + 2 * pad_h - (dil_h * (kernel_h - 1) + 1)) // stride_h + 1
    out_w = (input.shape[3] + 2 * pad_w - (dil_w * (kernel_w - 1) + 1)) // stride_w + 1
    return input.new_empty((input.shape[0], weight.shape[0], out_h, out_w))


@register_fake("detector::_deform_conv2d_backward")
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


class _Context(AutogradContext[tuple[Tensor, Tensor, Tensor, Tensor | None]], Protocol):
    """Saved: input, offset, weight and mask (None without a mask)."""

    # stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, offset_groups
    params: list[int]
    has_mask: bool
    has_bias: bool


def _setup_context(
    ctx: _Context,
    inputs: tuple[
        Tensor, Tensor, Tensor, Tensor | None, Tensor | None, int, int, int, int, int, int, int, int
    ],
    output: Tensor,
) -> None:
    input, offset, weight, mask, bias, *params = inputs
    ctx.save_for_backward(input, offset, weight, mask)
    ctx.params = params
    ctx.has_mask = mask is not None
    ctx.has_bias = bias is not None


def _backward(ctx: _Context, grad_output: Tensor) -> tuple[Tensor | None, ...]:
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


register_autograd("detector::deform_conv2d", _backward, setup_context=_setup_context)
