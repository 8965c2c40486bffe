"""Parts shared by the position-sensitive RoI ops (ps_roi_pool, ps_roi_align).

Both ops have the schema `detector::<op>(input, rois, spatial_scale, pooled_height,
pooled_width, *extra)` and a backward op `detector::_<op>_backward(grad, rois, spatial_scale,
pooled_height, pooled_width, *extra, batch_size, channels, height, width)`, where `extra` holds
the op's own parameters (ps_roi_align: sampling_ratio; ps_roi_pool: none).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from detector.ops._library import AutogradContext, register_autograd, register_fake, torch_check
from detector.ops._utils import (
    BroadcastingList2,
    check_input,
    check_rois_dtype,
    convert_boxes_to_roi_format,
    positive_pair,
)


def prepare_ps_roi_args(
    op: str,
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: BroadcastingList2[int],
) -> tuple[Tensor, int, int]:
    """Checks the arguments shared by the position-sensitive ops.

    Returns (rois Tensor[K, 5] in input's dtype, PH, PW). Errors name `op` and the argument.
    """
    check_input(op, input)
    pooled_height, pooled_width = positive_pair(op, output_size)
    bins = pooled_height * pooled_width
    if input.shape[1] % bins != 0:
        raise ValueError(
            f"{op}: `input` has {input.shape[1]} channels, which is not a multiple of "
            f"output_size[0] * output_size[1] = {bins}; position-sensitive pooling needs "
            "C_out * PH * PW input channels"
        )
    rois = check_rois_dtype(op, input, convert_boxes_to_roi_format(op, boxes))
    return rois, pooled_height, pooled_width


# The op's inputs (input, rois, spatial_scale, PH, PW, *extra) and its backward op's inputs
# (grad, rois, spatial_scale, PH, PW, *extra, N, C, H, W); `extra` is ps_roi_align's
# sampling_ratio, none for ps_roi_pool.
_Inputs = tuple[Tensor, Tensor, float, int, int] | tuple[Tensor, Tensor, float, int, int, int]
_BackwardInputs = (
    tuple[Tensor, Tensor, float, int, int, int, int, int, int]
    | tuple[Tensor, Tensor, float, int, int, int, int, int, int, int]
)


class _BackwardContext(AutogradContext[tuple[Tensor]], Protocol):
    """Saved: the RoIs. The context of the backward op's autograd."""

    args: tuple[float, ...]  # (spatial_scale, PH, PW, *extra)


class _Context(_BackwardContext, Protocol):
    """The context of the op's autograd."""

    input_shape: tuple[int, ...]  # (N, C, H, W)


def register_ps_roi_op(op: str) -> None:
    """Registers the fake (meta) kernels of `detector::<op>` and its backward op, and their
    autograd formulas: the backward op is linear in `grad` and the transpose of the forward, so
    its own gradient (for double backward) is the forward applied to the incoming gradient."""
    backward_op = f"_{op}_backward"

    def forward_fake(
        input: Tensor,
        rois: Tensor,
        spatial_scale: float,
        pooled_height: int,
        pooled_width: int,
        *extra: int,
    ) -> Tensor:
        torch_check(rois.dim() == 2 and rois.size(1) == 5, lambda: f"{op}: rois must be (K, 5)")
        channels_out = input.size(1) // (pooled_height * pooled_width)
        # (N, C_out * PH * PW, H, W) -> (K, C_out, PH, PW)
        return input.new_empty((rois.size(0), channels_out, pooled_height, pooled_width))

    def backward_fake(
        grad: Tensor,
        rois: Tensor,
        spatial_scale: float,
        pooled_height: int,
        pooled_width: int,
        *extra_and_shape: int,
    ) -> Tensor:
        batch_size, channels, height, width = extra_and_shape[-4:]
        return grad.new_empty((batch_size, channels, height, width))

    register_fake(f"detector::{op}")(forward_fake)
    register_fake(f"detector::{backward_op}")(backward_fake)

    def setup_context(ctx: _Context, inputs: _Inputs, output: Tensor) -> None:
        input, rois, *args = inputs
        ctx.save_for_backward(rois)
        ctx.args = tuple(args)  # (spatial_scale, PH, PW, *extra)
        ctx.input_shape = tuple(input.shape)

    def backward(ctx: _Context, grad: Tensor) -> tuple[Tensor | None, ...]:
        (rois,) = ctx.saved_tensors
        grad_input: Tensor = getattr(torch.ops.detector, backward_op)(
            grad.contiguous(), rois, *ctx.args, *ctx.input_shape
        )
        return (grad_input,) + (None,) * (1 + len(ctx.args))

    def setup_backward_context(
        ctx: _BackwardContext, inputs: _BackwardInputs, output: Tensor
    ) -> None:
        _, rois, *args = inputs[:-4]
        ctx.save_for_backward(rois)
        ctx.args = tuple(args)  # (spatial_scale, PH, PW, *extra)

    def backward_backward(
        ctx: _BackwardContext, grad_grad_input: Tensor
    ) -> tuple[Tensor | None, ...]:
        (rois,) = ctx.saved_tensors
        grad_grad: Tensor = getattr(torch.ops.detector, op)(
            grad_grad_input.contiguous(), rois, *ctx.args
        )
        return (grad_grad,) + (None,) * (1 + len(ctx.args) + 4)

    register_autograd(f"detector::{op}", backward, setup_context=setup_context)
    register_autograd(
        f"detector::{backward_op}", backward_backward, setup_context=setup_backward_context
    )
