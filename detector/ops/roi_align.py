"""RoI Align (Mask R-CNN, He et al. 2017, Sec. 3): bilinear pooling of RoIs into fixed-size maps.

Shapes: N images, C channels, (H, W) a feature map, L feature levels, K RoIs,
(ph, pw) = output_size.

`roi_align` matches torchvision.ops.roi_align (mode="avg") and adds mode="max", the maximum over a
bin's bilinear sample points (its gradient goes to the 4 neighbours of the arg-max point).
`multi_scale_roi_align` pools each RoI from its own level of a feature pyramid in one op call.
Both script with TorchScript and are leaves for torch.fx (`torch.fx.wrap`), as torchvision's.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from detector.ops._library import AutogradContext, register_autograd, register_fake, torch_check
from detector.ops._quantized import dequantized_rois, requantize_like
from detector.ops._utils import (
    BroadcastingList2,
    check_device,
    check_input,
    check_rois_dtype,
    check_spatial_scale,
    convert_boxes_to_roi_format,
    pair,
)

__all__ = ["multi_scale_roi_align", "roi_align"]


def _check_mode(op: str, mode: str) -> None:
    if mode != "avg" and mode != "max":
        raise ValueError(f"{op}: `mode` must be 'avg' or 'max', got '{mode}'")


def _is_channels_last(x: Tensor) -> bool:
    """True when `x` is stored NHWC (its gradient is then returned NHWC too)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


@torch.fx.wrap
def roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    mode: str = "avg",
) -> Tensor:
    """Pools every RoI into a (ph, pw) grid of bilinearly sampled values.

    Args:
        input: features (N, C, H, W): float32, float64, or float16/bfloat16 (computed in float32),
            NCHW or channels-last; or quint8 (then `boxes` quantized too, as in torchvision).
        boxes: RoIs Tensor[K, 5] (batch_index, x1, y1, x2, y2) in image coordinates, or a list of
            Tensor[K_i, 4] boxes, one per image.
        output_size: (ph, pw), or an int for a square output.
        spatial_scale: feature map size / image size (1/4 for a stride-4 map).
        sampling_ratio: sample points per bin along each axis; <= 0 takes ceil(roi_size / ph)
            (and / pw) points, adaptively per RoI.
        aligned: shift boxes by -0.5 pixel (ROIAlignV2); else RoIs are at least 1x1 pixel.
        mode: "avg" (the mean of a bin's sample points) or "max" (their maximum). Positional
            after `aligned` (torchvision's six arguments come first) so that TorchScript,
            which has no keyword-only arguments, scripts the function.

    Returns:
        Tensor[K, C, ph, pw], contiguous.
    """
    op = "roi_align"
    if not torch.jit.is_scripting():  # pyright: ignore[reportPrivateImportUsage]
        if isinstance(input, Tensor) and input.is_quantized:  # pyright: ignore[reportUnnecessaryIsInstance]
            rois_float = dequantized_rois(op, boxes)
            output = roi_align(
                input.dequantize(), rois_float, output_size, spatial_scale, sampling_ratio,
                aligned, mode,
            )  # fmt: skip
            return requantize_like(output, input)
    check_input(op, input)
    _check_mode(op, mode)
    pooled_height, pooled_width = pair(op, output_size)
    rois = check_rois_dtype(op, input, convert_boxes_to_roi_format(op, boxes))
    scale = check_spatial_scale(op, spatial_scale)
    output, _ = torch.ops.detector.roi_align(
        input,
        rois,
        scale,
        pooled_height,
        pooled_width,
        int(sampling_ratio),
        bool(aligned),
        mode,
    )
    return output


def _check_levels(op: str, features: list[Tensor], spatial_scales: list[float]) -> list[float]:
    """Checks the pyramid's feature maps and returns their checked spatial scales."""
    if not isinstance(features, (list, tuple)) or len(features) == 0:  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError(f"{op}: `features` must be a non-empty list of (N, C, H, W) tensors")
    for i, feature in enumerate(features):
        check_input(op, feature, name=f"features[{i}]")
    if len(spatial_scales) != len(features):
        raise ValueError(
            f"{op}: `spatial_scales` has {len(spatial_scales)} entries for {len(features)} levels"
        )
    return [
        check_spatial_scale(op, s, f"spatial_scales[{i}]") for i, s in enumerate(spatial_scales)
    ]


@torch.fx.wrap
def multi_scale_roi_align(
    features: list[Tensor],
    rois: Tensor,
    levels: Tensor,
    output_size: BroadcastingList2[int],
    spatial_scales: list[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
    mode: str = "avg",
) -> Tensor:
    """RoI Align over a feature pyramid: RoI k is pooled from level `levels[k]`, in one op call.

    Equal to `roi_align(features[l], rois[levels == l], ..., spatial_scales[l], ...)` for every
    level l, scattered back into RoI order. Choosing the levels (e.g. FPN Eq. 1) is the caller's.

    Args:
        features: L tensors (N, C, H_l, W_l) with the same N, C and dtype.
        rois: Tensor[K, 5] (batch_index, x1, y1, x2, y2) in image coordinates.
        levels: Tensor[K] int64, each RoI's level in [0, L).
        output_size: (ph, pw), or an int.
        spatial_scales: L floats, feature size / image size of each level.
        sampling_ratio, aligned, mode: as in `roi_align`.

    Returns:
        Tensor[K, C, ph, pw], contiguous.
    """
    op = "multi_scale_roi_align"
    scales = _check_levels(op, features, spatial_scales)
    _check_mode(op, mode)
    pooled_height, pooled_width = pair(op, output_size)
    rois = check_rois_dtype(op, features[0], convert_boxes_to_roi_format(op, rois))
    if not isinstance(levels, Tensor) or levels.dim() != 1 or levels.dtype != torch.int64:  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError(f"{op}: `levels` must be a Tensor[K] of int64 level indices")
    check_device(op, levels)
    if features[0].is_cuda:
        return _multi_scale_by_level(
            list(features),
            rois,
            levels,
            (pooled_height, pooled_width),
            scales,
            int(sampling_ratio),
            bool(aligned),
            mode,
        )
    output, _ = torch.ops.detector.multi_scale_roi_align(
        list(features),
        rois,
        levels,
        scales,
        pooled_height,
        pooled_width,
        int(sampling_ratio),
        bool(aligned),
        mode,
    )
    return output


def _multi_scale_by_level(
    features: list[Tensor],
    rois: Tensor,
    levels: Tensor,
    output_size: tuple[int, int],
    scales: list[float],
    sampling_ratio: int,
    aligned: bool,
    mode: str,
) -> Tensor:
    """CUDA path: one `roi_align` call per level (the fused op has CPU kernels only)."""
    num_rois, channels = rois.size(0), features[0].size(1)
    output = features[0].new_zeros((num_rois, channels, output_size[0], output_size[1]))
    for level in range(len(features)):
        index = torch.nonzero(levels == level).squeeze(1)
        pooled = roi_align(
            features[level],
            rois[index],
            output_size,
            scales[level],
            sampling_ratio,
            aligned,
            mode,
        )
        output = output.index_copy(0, index, pooled)
    return output


# ---------------------------------------------------------------------------------------------
# Fake (meta) kernels and autograd.


@register_fake("detector::roi_align")
def _roi_align_fake(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    mode: str,
) -> tuple[Tensor, Tensor]:
    torch_check(rois.dim() == 2 and rois.size(1) == 5, lambda: "roi_align: rois must be (K, 5)")
    shape = (rois.size(0), input.size(1), pooled_height, pooled_width)
    output = input.new_empty(shape)
    argmax = input.new_empty(shape if mode == "max" else (0,), dtype=torch.int32)
    return output, argmax


@register_fake("detector::_roi_align_backward")
def _roi_align_backward_fake(
    grad: Tensor,
    rois: Tensor,
    argmax: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
    sampling_ratio: int,
    aligned: bool,
    mode: str,
    channels_last: bool,
) -> Tensor:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(
        (batch_size, channels, height, width),
        dtype=grad.dtype,
        device=grad.device,
        memory_format=memory_format,
    )


class _RoIAlignContext(AutogradContext[tuple[Tensor, Tensor]], Protocol):
    """Saved: the RoIs and the arg-max indices."""

    input_shape: torch.Size
    channels_last: bool
    # (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, mode)
    params: tuple[float, int, int, int, bool, str]


def _roi_align_setup_context(
    ctx: _RoIAlignContext,
    inputs: tuple[Tensor, Tensor, float, int, int, int, bool, str],
    output: tuple[Tensor, Tensor],
) -> None:
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, mode = inputs
    ctx.save_for_backward(rois, output[1])
    ctx.input_shape = input.shape
    ctx.channels_last = _is_channels_last(input)
    ctx.params = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, mode)


def _roi_align_backward(
    ctx: _RoIAlignContext, grad_output: Tensor, _grad_argmax: Tensor | None
) -> tuple[Tensor, None, None, None, None, None, None, None]:
    rois, argmax = ctx.saved_tensors
    spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, mode = ctx.params
    batch_size, channels, height, width = ctx.input_shape
    grad_input: Tensor = torch.ops.detector._roi_align_backward(
        grad_output,
        rois,
        argmax,
        spatial_scale,
        pooled_height,
        pooled_width,
        batch_size,
        channels,
        height,
        width,
        sampling_ratio,
        aligned,
        mode,
        ctx.channels_last,
    )
    return grad_input, None, None, None, None, None, None, None


register_autograd(
    "detector::roi_align", _roi_align_backward, setup_context=_roi_align_setup_context
)


@register_fake("detector::multi_scale_roi_align")
def _multi_scale_fake(
    features: list[Tensor],
    rois: Tensor,
    levels: Tensor,
    spatial_scales: list[float],
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    mode: str,
) -> tuple[Tensor, Tensor]:
    torch_check(
        rois.dim() == 2 and rois.size(1) == 5, lambda: "multi_scale_roi_align: rois must be (K, 5)"
    )
    shape = (rois.size(0), features[0].size(1), pooled_height, pooled_width)
    output = features[0].new_empty(shape)
    argmax = features[0].new_empty(shape if mode == "max" else (0,), dtype=torch.int32)
    return output, argmax


@register_fake("detector::_multi_scale_roi_align_backward")
def _multi_scale_backward_fake(
    grad: Tensor,
    rois: Tensor,
    levels: Tensor,
    argmax: Tensor,
    spatial_scales: list[float],
    pooled_height: int,
    pooled_width: int,
    level_shapes: list[int],
    channels_last: list[bool],
    sampling_ratio: int,
    aligned: bool,
    mode: str,
) -> list[Tensor]:
    grads: list[Tensor] = []
    for level, is_channels_last in enumerate(channels_last):
        memory_format = torch.channels_last if is_channels_last else torch.contiguous_format
        shape = level_shapes[4 * level : 4 * level + 4]
        grads.append(
            torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=memory_format)
        )
    return grads


class _MultiScaleContext(AutogradContext[tuple[Tensor, Tensor, Tensor]], Protocol):
    """Saved: the RoIs, their levels and the arg-max indices."""

    level_shapes: list[int]
    channels_last: list[bool]
    params: tuple[list[float], int, int]  # (spatial_scales, pooled_height, pooled_width)
    sampling: tuple[int, bool, str]  # (sampling_ratio, aligned, mode)


def _multi_scale_setup_context(
    ctx: _MultiScaleContext,
    inputs: tuple[list[Tensor], Tensor, Tensor, list[float], int, int, int, bool, str],
    output: tuple[Tensor, Tensor],
) -> None:
    features, rois, levels, spatial_scales, pooled_height, pooled_width = inputs[:6]
    sampling_ratio, aligned, mode = inputs[6:]
    ctx.save_for_backward(rois, levels, output[1])
    # L x (N, C, H_l, W_l) -> flat [N, C, H_0, W_0, N, C, H_1, W_1, ...]
    ctx.level_shapes = [size for feature in features for size in feature.shape]
    ctx.channels_last = [_is_channels_last(feature) for feature in features]
    ctx.params = (spatial_scales, pooled_height, pooled_width)
    ctx.sampling = (sampling_ratio, aligned, mode)


def _multi_scale_backward(
    ctx: _MultiScaleContext, grad_output: Tensor, _grad_argmax: Tensor | None
) -> tuple[list[Tensor], None, None, None, None, None, None, None, None]:
    rois, levels, argmax = ctx.saved_tensors
    spatial_scales, pooled_height, pooled_width = ctx.params
    sampling_ratio, aligned, mode = ctx.sampling
    grads: list[Tensor] = torch.ops.detector._multi_scale_roi_align_backward(
        grad_output,
        rois,
        levels,
        argmax,
        spatial_scales,
        pooled_height,
        pooled_width,
        ctx.level_shapes,
        ctx.channels_last,
        sampling_ratio,
        aligned,
        mode,
    )
    return list(grads), None, None, None, None, None, None, None, None


register_autograd(
    "detector::multi_scale_roi_align",
    _multi_scale_backward,
    setup_context=_multi_scale_setup_context,
)
