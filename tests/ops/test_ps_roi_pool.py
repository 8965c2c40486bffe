"""Tests of detector.ops.ps_roi_pool against a plain PyTorch reference and torchvision.ops.

Shapes: N images, K RoIs, C_out output channels, (PH, PW) bins, C = C_out * PH * PW.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import Tensor

from detector.layers import PSRoIPool
from detector.ops import ps_roi_pool
from tests.ops.utils import (
    DEVICES,
    all_rois,
    assert_same_bits,
    check_ps_deterministic,
    check_ps_memory_formats,
    check_ps_no_rois,
    check_ps_torch_compile,
    output_and_grad,
    ps_features,
)

SCALES = [1.0, 1 / 4, 1 / 8, 1 / 16, 1 / 32]
# The CPU forward packs each bin's planes when there are at least N * H * W / 32 RoIs and reads
# the input directly otherwise: test both (2 x 13 x 17 maps: 4 + 9 RoIs direct, 160 + 9 packed).
NUM_ROIS = [4, 160]


def _pool(input: Tensor, rois: Tensor, output_size: tuple[int, int] | int, scale: float) -> Tensor:
    return ps_roi_pool(input, rois, output_size, scale)


def _round_half_away(value: float) -> int:
    """std::round: halves round away from zero (torch.round rounds them to even)."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def reference_ps_roi_pool(
    input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float
) -> Tensor:
    """Plain PyTorch oracle, following torchvision's rules (rounded box, bins clipped to H-1, W-1).

    Differentiable in `input`, so its autograd gradient is the exact gradient of this forward.
    """
    pooled_h, pooled_w = output_size
    _, channels, height, width = input.shape
    channels_out = channels // (pooled_h * pooled_w)
    out = input.new_zeros(rois.size(0), channels_out, pooled_h, pooled_w)
    scale = torch.tensor(spatial_scale, dtype=input.dtype)  # arithmetic in the input's dtype
    for k, roi in enumerate(rois.to(input.dtype).cpu()):
        n = int(roi[0])
        x1, y1, x2, y2 = (_round_half_away((v * scale).item()) for v in roi[1:])
        bin_h = torch.tensor(max(y2 - y1, 1), dtype=input.dtype) / pooled_h
        bin_w = torch.tensor(max(x2 - x1, 1), dtype=input.dtype) / pooled_w
        for i in range(pooled_h):
            h0 = min(max(y1 + math.floor((i * bin_h).item()), 0), height - 1)
            h1 = min(max(y1 + math.ceil(((i + 1) * bin_h).item()), 0), height - 1)
            for j in range(pooled_w):
                w0 = min(max(x1 + math.floor((j * bin_w).item()), 0), width - 1)
                w1 = min(max(x1 + math.ceil(((j + 1) * bin_w).item()), 0), width - 1)
                if h1 <= h0 or w1 <= w0:
                    continue
                # channels c * PH * PW + i * PW + j for every output channel c
                chans = torch.arange(channels_out) * pooled_h * pooled_w + i * pooled_w + j
                out[k, :, i, j] = input[n, chans.to(input.device), h0:h1, w0:w1].mean((-2, -1))
    return out


def _touches_last_row_or_column(rois: Tensor, height: int, width: int, scale: float) -> Tensor:
    """RoIs whose rounded box reaches the last row or column (torchvision's backward clips
    there differently from its forward, so its gradient is not the forward's gradient)."""
    r = rois[:, 1:].double() * scale
    return (r[:, 2:].round() >= torch.tensor([width - 1, height - 1])).any(1) | (
        r[:, :2].round() >= torch.tensor([width - 1, height - 1])
    ).any(1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("output_size", [(3, 3), (2, 4)])
@pytest.mark.parametrize("num_rois", NUM_ROIS)
def test_matches_torchvision(
    device: str, scale: float, output_size: tuple[int, int], num_rois: int
) -> None:
    height, width = 13, 17
    x = ps_features(2, 3, output_size, height, width, device=device)
    rois = all_rois(2, height, width, scale, num=num_rois).to(device)
    out, grad = output_and_grad(lambda t: ps_roi_pool(t, rois, output_size, scale), x)
    tv_out, _ = output_and_grad(
        lambda t: torchvision.ops.ps_roi_pool(t, rois, output_size, scale), x
    )
    torch.testing.assert_close(out, tv_out, rtol=0, atol=1e-5)
    # Gradients agree with torchvision wherever its backward is consistent with its forward.
    inner = rois[~_touches_last_row_or_column(rois.cpu(), height, width, scale).to(device)]
    _, grad_inner = output_and_grad(lambda t: ps_roi_pool(t, inner, output_size, scale), x)
    _, tv_grad_inner = output_and_grad(
        lambda t: torchvision.ops.ps_roi_pool(t, inner, output_size, scale), x
    )
    torch.testing.assert_close(grad_inner, tv_grad_inner, rtol=0, atol=1e-5)
    # Everywhere, the gradient is the exact gradient of the forward (the reference's autograd).
    _, ref_grad = output_and_grad(lambda t: reference_ps_roi_pool(t, rois, output_size, scale), x)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 1 / 8, 1 / 32])
def test_matches_reference(device: str, dtype: torch.dtype, scale: float) -> None:
    output_size = (3, 2)
    x = ps_features(2, 2, output_size, 11, 9, dtype=dtype, device=device, seed=3)
    rois = all_rois(2, 11, 9, scale).to(device)
    out, grad = output_and_grad(lambda t: ps_roi_pool(t, rois, output_size, scale), x)
    ref_out, ref_grad = output_and_grad(
        lambda t: reference_ps_roi_pool(t, rois, output_size, scale), x
    )
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-5)


def test_torchvision_backward_disagrees_with_its_forward_at_the_border() -> None:
    """Documents why gradients near the last row/column are compared with the reference only."""
    x = torch.arange(16.0, dtype=torch.float64).view(1, 1, 4, 4)
    rois = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0]], dtype=torch.float64)
    # Forward pools rows/columns 0..2 only (clipped to H - 1 = 3), as torchvision does.
    assert ps_roi_pool(x, rois, 1).item() == torchvision.ops.ps_roi_pool(x, rois, 1).item() == 5.0
    _, grad = output_and_grad(lambda t: ps_roi_pool(t, rois, 1), x)
    _, tv_grad = output_and_grad(lambda t: torchvision.ops.ps_roi_pool(t, rois, 1), x)
    assert grad[0, 0, 3].abs().sum() == 0 and grad[0, 0, :3, :3].ne(0).all()
    assert tv_grad[0, 0, 3].ne(0).all()  # torchvision spreads it over all 16 pixels


@pytest.mark.parametrize("device", DEVICES)
def test_no_rois(device: str) -> None:
    check_ps_no_rois(_pool, device)


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
    layer = PSRoIPool((2, 2), spatial_scale=1.0)
    assert repr(layer) == "PSRoIPool(output_size=(2, 2), spatial_scale=1.0)"
    assert_same_bits(layer(x, boxes), ps_roi_pool(x, rois, 2))


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_and_non_contiguous(device: str) -> None:
    check_ps_memory_formats(_pool, device)


def test_gradcheck() -> None:
    output_size = (2, 2)
    x = ps_features(2, 2, output_size, 6, 7, dtype=torch.float64, seed=5).requires_grad_()
    rois = torch.tensor(
        [[0, 0.3, 0.2, 5.1, 4.4], [1, -2.0, 1.0, 9.0, 8.0], [1, 2.0, 2.0, 2.0, 2.0]],
        dtype=torch.float64,
    )
    assert torch.autograd.gradcheck(lambda t: ps_roi_pool(t, rois, output_size, 1.0), (x,))
    assert torch.autograd.gradgradcheck(lambda t: ps_roi_pool(t, rois, output_size, 1.0), (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device: str) -> None:
    x = ps_features(2, 2, (2, 2), 7, 6, device=device).requires_grad_()
    rois = all_rois(2, 7, 6, 1.0, num=5).to(device)
    torch.library.opcheck(torch.ops.detector.ps_roi_pool.default, (x, rois, 1.0, 2, 2))
    grad = torch.randn(rois.size(0), 2, 2, 2, device=device)
    torch.library.opcheck(
        torch.ops.detector._ps_roi_pool_backward.default, (grad, rois, 1.0, 2, 2, 2, 8, 7, 6)
    )


def test_torch_compile() -> None:
    check_ps_torch_compile(_pool)


@pytest.mark.parametrize("num_rois", [16, 400])
def test_deterministic_for_any_thread_count(num_rois: int) -> None:
    check_ps_deterministic(_pool, num_rois)


def test_misuse_errors() -> None:
    x = ps_features(1, 2, (2, 2), 5, 5)
    rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]])
    with pytest.raises(ValueError, match=r"ps_roi_pool: `input` has 8 channels.*multiple of"):
        ps_roi_pool(x, rois, 3)
    with pytest.raises(ValueError, match=r"ps_roi_pool: `input` must be 4-D"):
        ps_roi_pool(x[0], rois, 2)
    with pytest.raises(TypeError, match=r"ps_roi_pool: `input` must be a floating point"):
        ps_roi_pool(x.long(), rois, 2)
    with pytest.raises(ValueError, match=r"ps_roi_pool: `boxes` must be a Tensor\[K, 5\]"):
        ps_roi_pool(x, rois[:, 1:], 2)
    with pytest.raises(TypeError, match=r"ps_roi_pool: `boxes` must be a floating point"):
        ps_roi_pool(x, rois.long(), 2)
    with pytest.raises(ValueError, match=r"ps_roi_pool: `output_size`"):
        ps_roi_pool(x, rois, (2, 2, 2))
    with pytest.raises(ValueError, match=r"ps_roi_pool: `output_size` must be positive"):
        ps_roi_pool(x, rois, 0)
    with pytest.raises(RuntimeError, match=r"ps_roi_pool: batch index in `rois\[:, 0\]`"):
        ps_roi_pool(x, torch.tensor([[1, 0.0, 0.0, 3.0, 3.0]]), 2)
    with pytest.raises(RuntimeError, match=r"ps_roi_pool: `rois` contains NaN"):
        ps_roi_pool(x, torch.tensor([[0, 0.0, float("nan"), 3.0, 3.0]]), 2)
