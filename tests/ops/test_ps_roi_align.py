"""Tests of detector.ops.ps_roi_align against a plain PyTorch reference and torchvision.ops.

Shapes: N images, K RoIs, C_out output channels, (PH, PW) bins, C = C_out * PH * PW, S samples.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import Tensor

from detector.layers import PSRoIAlign
from detector.ops import ps_roi_align
from tests.ops.test_ps_roi_pool import NUM_ROIS, SCALES
from tests.ops.utils import (
    DEVICES,
    PSPool,
    all_rois,
    assert_same_bits,
    check_ps_deterministic,
    check_ps_memory_formats,
    check_ps_no_rois,
    check_ps_torch_compile,
    output_and_grad,
    ps_features,
)

SAMPLING_RATIOS = [-1, 0, 1, 2]


def _align(sampling_ratio: int) -> PSPool:
    """ps_roi_align with a fixed sampling ratio, called as the shared ps checks call an op."""

    def pool(input: Tensor, rois: Tensor, output_size, scale: float) -> Tensor:
        return ps_roi_align(input, rois, output_size, scale, sampling_ratio)

    return pool


def _bilinear(planes: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """RoI Align bilinear sampling of planes (C, H, W) at points y, x (S,) -> (C, S)."""
    height, width = planes.shape[-2:]
    inside = (y >= -1) & (y <= height) & (x >= -1) & (x <= width)
    y, x = y.clamp(min=0), x.clamp(min=0)
    y_low, x_low = y.floor().long(), x.floor().long()
    y_edge, x_edge = y_low >= height - 1, x_low >= width - 1
    y_low, x_low = y_low.clamp(max=height - 1), x_low.clamp(max=width - 1)
    y = torch.where(y_edge, y_low.to(y.dtype), y)
    x = torch.where(x_edge, x_low.to(x.dtype), x)
    y_high, x_high = (y_low + 1).clamp(max=height - 1), (x_low + 1).clamp(max=width - 1)
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    value = (
        hy * hx * planes[:, y_low, x_low]
        + hy * lx * planes[:, y_low, x_high]
        + ly * hx * planes[:, y_high, x_low]
        + ly * lx * planes[:, y_high, x_high]
    )
    return value * inside


def reference_ps_roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
) -> Tensor:
    """Plain PyTorch oracle following torchvision's rules (-0.5 shift, adaptive grid = ceil).

    A bin without sample points (zero-size RoI, adaptive grid) gives 0. Differentiable in `input`.
    """
    pooled_h, pooled_w = output_size
    channels = input.size(1)
    channels_out = channels // (pooled_h * pooled_w)
    out = input.new_zeros(rois.size(0), channels_out, pooled_h, pooled_w)
    dtype = input.dtype
    for k, roi in enumerate(rois.to(dtype).cpu()):
        n = int(roi[0])
        x1, y1, x2, y2 = (roi[1:] * torch.tensor(spatial_scale, dtype=dtype) - 0.5).unbind()
        bin_h, bin_w = (y2 - y1) / pooled_h, (x2 - x1) / pooled_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(bin_h.item())
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(bin_w.item())
        if grid_h <= 0 or grid_w <= 0:
            continue
        for i in range(pooled_h):
            ys = y1 + i * bin_h + (torch.arange(grid_h, dtype=dtype) + 0.5) * bin_h / grid_h
            for j in range(pooled_w):
                xs = x1 + j * bin_w + (torch.arange(grid_w, dtype=dtype) + 0.5) * bin_w / grid_w
                # (grid_h, grid_w) sample grid -> (S,) points
                grid = torch.meshgrid(ys, xs, indexing="ij")
                y, x = (t.reshape(-1).to(input.device) for t in grid)
                chans = torch.arange(channels_out) * pooled_h * pooled_w + i * pooled_w + j
                samples = _bilinear(input[n, chans.to(input.device)], y, x)  # (C_out, S)
                out[k, :, i, j] = samples.sum(1) / (grid_h * grid_w)
    return out


def _torchvision_grads(x: Tensor, rois: Tensor, output_size, scale: float, ratio: int):
    return output_and_grad(
        lambda t: torchvision.ops.ps_roi_align(t, rois, output_size, scale, ratio), x
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ratio", SAMPLING_RATIOS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("num_rois", NUM_ROIS)
def test_matches_torchvision(device: str, ratio: int, scale: float, num_rois: int) -> None:
    output_size = (3, 3)
    x = ps_features(2, 3, output_size, 13, 17, device=device)
    rois = all_rois(2, 13, 17, scale, num=num_rois).to(device)
    out, grad = output_and_grad(lambda t: ps_roi_align(t, rois, output_size, scale, ratio), x)
    tv_out, tv_grad = _torchvision_grads(x, rois, output_size, scale, ratio)
    # torchvision divides 0 by 0 (NaN) for zero-size RoIs with adaptive sampling; we give 0.
    nan = tv_out.isnan()
    assert ratio <= 0 or not nan.any()
    assert out[nan].eq(0).all()
    torch.testing.assert_close(out, tv_out.nan_to_num(0.0), rtol=0, atol=1e-5)
    torch.testing.assert_close(grad, tv_grad, rtol=0, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("output_size", [(2, 4), (1, 1)])
def test_matches_torchvision_output_sizes(device: str, output_size: tuple[int, int]) -> None:
    x = ps_features(2, 4, output_size, 9, 11, device=device, seed=2)
    rois = all_rois(2, 9, 11, 0.5).to(device)
    out, grad = output_and_grad(lambda t: ps_roi_align(t, rois, output_size, 0.5, 2), x)
    tv_out, tv_grad = _torchvision_grads(x, rois, output_size, 0.5, 2)
    torch.testing.assert_close(out, tv_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad, tv_grad, rtol=0, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ratio", SAMPLING_RATIOS)
def test_matches_reference(device: str, dtype: torch.dtype, ratio: int) -> None:
    output_size = (3, 2)
    x = ps_features(2, 2, output_size, 11, 9, dtype=dtype, device=device, seed=3)
    rois = all_rois(2, 11, 9, 1 / 4, num=12).to(device)
    out, grad = output_and_grad(lambda t: ps_roi_align(t, rois, output_size, 1 / 4, ratio), x)
    ref_out, ref_grad = output_and_grad(
        lambda t: reference_ps_roi_align(t, rois, output_size, 1 / 4, ratio), x
    )
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_no_rois(device: str) -> None:
    check_ps_no_rois(_align(2), device)


@pytest.mark.parametrize("device", DEVICES)
def test_list_of_boxes_and_layer(device: str) -> None:
    x = ps_features(2, 2, (2, 2), 8, 8, device=device)
    boxes = [
        torch.tensor([[0.0, 0.0, 5.0, 6.0]], device=device),
        torch.tensor([[1.0, 2.0, 7.0, 7.0], [2.0, 2.0, 4.0, 4.0]], device=device),
    ]
    rois = torch.tensor(
        [[0, 0.0, 0.0, 5.0, 6.0], [1, 1.0, 2.0, 7.0, 7.0], [1, 2.0, 2.0, 4.0, 4.0]], device=device
    )
    layer = PSRoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2)
    assert repr(layer) == "PSRoIAlign(output_size=(2, 2), spatial_scale=1.0, sampling_ratio=2)"
    assert_same_bits(layer(x, boxes), ps_roi_align(x, rois, 2, 1.0, 2))


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_and_non_contiguous(device: str) -> None:
    check_ps_memory_formats(_align(-1), device)


@pytest.mark.parametrize("ratio", [-1, 2])
def test_gradcheck(ratio: int) -> None:
    output_size = (2, 2)
    x = ps_features(2, 2, output_size, 6, 7, dtype=torch.float64, seed=5).requires_grad_()
    rois = torch.tensor(
        [[0, 0.3, 0.2, 5.1, 4.4], [1, -2.0, 1.0, 9.0, 8.0], [1, 2.0, 2.0, 2.0, 2.0]],
        dtype=torch.float64,
    )

    def fn(t: Tensor) -> Tensor:
        return ps_roi_align(t, rois, output_size, 1.0, ratio)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device: str) -> None:
    x = ps_features(2, 2, (2, 2), 7, 6, device=device).requires_grad_()
    rois = all_rois(2, 7, 6, 1.0, num=5).to(device)
    torch.library.opcheck(torch.ops.detector.ps_roi_align.default, (x, rois, 1.0, 2, 2, 2))
    grad = torch.randn(rois.size(0), 2, 2, 2, device=device)
    torch.library.opcheck(
        torch.ops.detector._ps_roi_align_backward.default, (grad, rois, 1.0, 2, 2, -1, 2, 8, 7, 6)
    )


def test_torch_compile() -> None:
    check_ps_torch_compile(_align(2))


@pytest.mark.parametrize("num_rois", [16, 400])
def test_deterministic_for_any_thread_count(num_rois: int) -> None:
    check_ps_deterministic(_align(-1), num_rois)


def test_misuse_errors() -> None:
    x = ps_features(1, 2, (2, 2), 5, 5)
    rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]])
    with pytest.raises(ValueError, match=r"ps_roi_align: `input` has 8 channels.*multiple of"):
        ps_roi_align(x, rois, (3, 2))
    with pytest.raises(ValueError, match=r"ps_roi_align: `input` must be 4-D"):
        ps_roi_align(x[None], rois, 2)
    with pytest.raises(ValueError, match=r"ps_roi_align: `boxes\[0\]` must be a Tensor\[K, 4\]"):
        ps_roi_align(x, [rois], 2)
    with pytest.raises(TypeError, match=r"ps_roi_align: `sampling_ratio` must be an int"):
        ps_roi_align(x, rois, 2, 1.0, 1.5)
    with pytest.raises(ValueError, match=r"ps_roi_align: `output_size` must be positive"):
        ps_roi_align(x, rois, (2, -1))
    with pytest.raises(RuntimeError, match=r"ps_roi_align: batch index in `rois\[:, 0\]`"):
        ps_roi_align(x, torch.tensor([[-1, 0.0, 0.0, 3.0, 3.0]]), 2)
