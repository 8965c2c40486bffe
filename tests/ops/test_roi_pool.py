"""Tests of detector.ops.roi_pool against torchvision.ops.roi_pool and a plain PyTorch oracle."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import Tensor

from detector.layers import RoIPool
from detector.ops import roi_pool
from tests.ops.utils import DEVICES, assert_same_bits, edge_case_rois, random_rois, with_threads


def reference_roi_pool(
    input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float
) -> Tensor:
    """Oracle: narrow the map to each RoI's rounded window, then adaptive max pool its bins.

    adaptive_max_pool2d splits a window of size L into bins
    [floor(i * L / P), ceil((i + 1) * L / P)), which are torchvision's roi_pool bins before
    clipping; the window is padded with -inf instead of clipped. Empty bins give 0.
    """
    pooled_h, pooled_w = output_size
    _, channels, height, width = input.shape
    out = input.new_zeros((rois.size(0), channels, pooled_h, pooled_w))
    scale = torch.tensor(spatial_scale, dtype=rois.dtype)
    for k, roi in enumerate(rois):
        batch = int(roi[0])
        # std::round (half away from zero) of the corner scaled in the RoI dtype
        x1, y1, x2, y2 = (int(torch.sign(v) * torch.floor(v.abs() + 0.5)) for v in roi[1:] * scale)
        roi_w, roi_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        # Pad the map so the whole unclipped window exists; padding is -inf so it never wins.
        pad = max(0, -x1, -y1, x1 + roi_w - width, y1 + roi_h - height)
        padded = torch.nn.functional.pad(input[batch], (pad, pad, pad, pad), value=-math.inf)
        window = padded.narrow(1, y1 + pad, roi_h).narrow(2, x1 + pad, roi_w)
        pooled = torch.nn.functional.adaptive_max_pool2d(window, (pooled_h, pooled_w))
        # A bin wholly in the padding is empty (0); torchvision then returns 0 as well.
        out[k] = torch.where(torch.isinf(pooled), torch.zeros_like(pooled), pooled)
    return out


def _features(shape: tuple[int, ...], dtype=torch.float32, device="cpu", seed=0) -> Tensor:
    """Tie-free features: a random permutation of distinct values."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    return (torch.randperm(n, generator=g).to(dtype) / n - 0.5).reshape(shape).to(device)


def _rois_all(height: int, width: int, scale: float, num: int = 24, batch: int = 2) -> Tensor:
    edge = edge_case_rois(height, width, scale)
    return torch.cat([random_rois(num, batch, height, width, scale, seed=3), edge])


def _tv_forward_backward(x: Tensor, rois: Tensor, size, scale: float, grad: Tensor):
    x = x.detach().requires_grad_()
    out = torchvision.ops.roi_pool(x, rois, size, scale)
    out.backward(grad)
    return out.detach(), x.grad


def _our_forward_backward(x: Tensor, rois, size, scale: float, grad: Tensor):
    x = x.detach().requires_grad_()
    out = roi_pool(x, rois, size, scale)
    out.backward(grad)
    return out.detach(), x.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [1.0, 1 / 4, 1 / 8, 1 / 16, 1 / 32])
@pytest.mark.parametrize("size", [(7, 7), (3, 5)])
def test_matches_torchvision_and_reference(device: str, scale: float, size) -> None:
    x = _features((2, 5, 13, 17), device=device)
    rois = _rois_all(13, 17, scale).to(device)
    grad = torch.randn(rois.size(0), 5, *size, device=device)
    ours, ours_grad = _our_forward_backward(x, rois, size, scale, grad)
    tv, tv_grad = _tv_forward_backward(x, rois, size, scale, grad)
    torch.testing.assert_close(ours, tv, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_grad, tv_grad, atol=1e-5, rtol=0)
    ref = reference_roi_pool(x.cpu(), rois.cpu(), size, scale)
    torch.testing.assert_close(ours.cpu(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_random_data_with_gaps(device: str) -> None:
    # Random normal features (ties improbable), larger map, many overlapping RoIs.
    torch.manual_seed(1)
    x = torch.randn(2, 16, 40, 57, device=device)
    rois = random_rois(64, 2, 40, 57, 1 / 8, seed=5).to(device)
    grad = torch.randn(64, 16, 7, 7, device=device)
    ours, ours_grad = _our_forward_backward(x, rois, 7, 1 / 8, grad)
    tv, tv_grad = _tv_forward_backward(x, rois, 7, 1 / 8, grad)
    torch.testing.assert_close(ours, tv, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_grad, tv_grad, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_ties_pick_first_max_in_row_major_order(device: str) -> None:
    # Constant and two-valued inputs: every bin has ties; the gradient shows which one was chosen.
    x = torch.ones(1, 3, 12, 21, device=device)
    x[:, :, ::2, 1::3] = 2.0  # ties between rows and columns inside each bin
    rois = torch.cat([random_rois(20, 1, 12, 21, 0.5, seed=7), edge_case_rois(12, 21, 0.5)])
    rois = rois.to(device)
    grad = torch.randn(rois.size(0), 3, 4, 3, device=device)
    for features in (x, torch.full_like(x, 0.25)):
        ours, ours_grad = _our_forward_backward(features, rois, (4, 3), 0.5, grad)
        tv, tv_grad = _tv_forward_backward(features, rois, (4, 3), 0.5, grad)
        torch.testing.assert_close(ours, tv, atol=0, rtol=0)
        torch.testing.assert_close(ours_grad, tv_grad, atol=1e-6, rtol=0)
        ref = reference_roi_pool(features.cpu(), rois.cpu(), (4, 3), 0.5)
        torch.testing.assert_close(ours.cpu(), ref, atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_no_rois_and_list_of_boxes(device: str) -> None:
    x = _features((2, 3, 9, 11), device=device)
    empty = torch.zeros(0, 5, device=device)
    out = roi_pool(x, empty, 2)
    assert out.shape == (0, 3, 2, 2)
    boxes = [torch.tensor([[1.0, 1.0, 6.0, 7.0]], device=device), torch.zeros(0, 4, device=device)]
    out = roi_pool(x, boxes, (2, 3), 1.0)
    tv = torchvision.ops.roi_pool(x, boxes, (2, 3), 1.0)
    torch.testing.assert_close(out, tv, atol=0, rtol=0)
    x_grad = x.detach().requires_grad_()
    roi_pool(x_grad, empty, 2).sum().backward()
    assert torch.equal(x_grad.grad, torch.zeros_like(x))


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_and_non_contiguous(device: str) -> None:
    base = _features((2, 6, 14, 18), device=device)
    rois = _rois_all(14, 18, 0.5).to(device)
    expected = torchvision.ops.roi_pool(base, rois, 3, 0.5)
    channels_last = base.contiguous(memory_format=torch.channels_last)
    sliced = _features((2, 12, 14, 36), device=device)[:, ::2, :, ::2]
    sliced_tv = torchvision.ops.roi_pool(sliced.contiguous(), rois, 3, 0.5)
    torch.testing.assert_close(roi_pool(channels_last, rois, 3, 0.5), expected, atol=0, rtol=0)
    torch.testing.assert_close(roi_pool(sliced, rois, 3, 0.5), sliced_tv, atol=0, rtol=0)
    # Non-contiguous gradients (an expanded one) and rois.
    x = channels_last.detach().requires_grad_()
    roi_pool(x, rois.t().contiguous().t(), 3, 0.5).sum().backward()
    x_tv = base.detach().requires_grad_()
    torchvision.ops.roi_pool(x_tv, rois, 3, 0.5).sum().backward()
    torch.testing.assert_close(x.grad, x_tv.grad, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_dtypes(device: str) -> None:
    x = _features((1, 4, 10, 12), dtype=torch.float64, device=device)
    rois = _rois_all(10, 12, 1.0, batch=1).to(device)
    out = roi_pool(x, rois.float(), 4)  # rois are cast to input's dtype
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torchvision.ops.roi_pool(x, rois.double(), 4), atol=0, rtol=0)
    half = roi_pool(x.half(), rois.half(), 4)
    assert half.dtype == torch.float16
    # Bin edges are computed in the RoIs' dtype: float16 RoIs give torchvision's float16 bins,
    tv_half = torchvision.ops.roi_pool(x.half(), rois.half(), 4)
    torch.testing.assert_close(half, tv_half, atol=0, rtol=0)
    # float32 RoIs (kept as they are with float16 maps on the CPU) the float32 computation's.
    if device == "cpu":
        from_float32_rois = roi_pool(x.half(), rois, 4)
        expected = roi_pool(x.half().float(), rois, 4).half()
        torch.testing.assert_close(from_float32_rois, expected, atol=0, rtol=0)
        assert not torch.equal(from_float32_rois, half)  # these RoIs have bins that differ


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device: str) -> None:
    x = _features((2, 2, 6, 7), dtype=torch.float64, device=device).requires_grad_()
    rois = torch.tensor(
        [
            [0, 0.0, 0.0, 5.0, 4.0],
            [1, 1.0, 2.0, 6.0, 5.0],
            [0, -3.0, 1.0, 2.0, 9.0],
            [1, 2.0, 2.0, 2.0, 2.0],
            [0, 0.0, 0.0, 6.0, 5.0],
        ],
        dtype=torch.float64,
        device=device,
    )
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, (2, 3), 1.0), (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device: str) -> None:
    x = _features((2, 3, 8, 9), device=device).requires_grad_()
    rois = _rois_all(8, 9, 0.5, num=6).to(device)
    torch.library.opcheck(torch.ops.detector.roi_pool, (x, rois, 0.5, 3, 2))
    out, argmax = torch.ops.detector.roi_pool(x.detach(), rois, 0.5, 3, 2)
    grad = torch.randn_like(out)
    torch.library.opcheck(torch.ops.detector._roi_pool_backward, (grad, rois, argmax, 2, 3, 8, 9))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile(device: str) -> None:
    x = _features((2, 3, 10, 11), device=device)
    rois = _rois_all(10, 11, 0.5, num=8).to(device)
    compiled = torch.compile(
        lambda t, r: roi_pool(t, r, 3, 0.5), fullgraph=True, backend="aot_eager"
    )
    torch.testing.assert_close(compiled(x, rois), roi_pool(x, rois, 3, 0.5), atol=0, rtol=0)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_channel_blocks_match_torchvision_bits(memory_format: torch.memory_format) -> None:
    """The CPU float forward pools blocks of 16 channels: 37 channels = 2 full blocks + 5."""
    torch.manual_seed(4)
    x = torch.randn(2, 37, 31, 45).round(decimals=1)  # rounded: many ties
    rois = random_rois(50, 2, 31, 45, 1 / 4, seed=6)
    ours, ours_arg = torch.ops.detector.roi_pool(
        x.contiguous(memory_format=memory_format), rois, 1 / 4, 7, 6
    )
    tv, tv_arg = torch.ops.torchvision.roi_pool(x, rois, 1 / 4, 7, 6)
    assert_same_bits(ours, tv)
    assert torch.equal(ours_arg, tv_arg.to(ours_arg.dtype))


def test_backward_recycled_memory_is_fully_rewritten() -> None:
    """A gradient of >= 8 MB reuses a freed gradient's memory: none of its old values remain."""
    torch.manual_seed(5)
    x = torch.randn(1, 48, 210, 210)  # an 8.5 MB gradient
    rois = random_rois(30, 1, 210, 210, 1 / 2, seed=7)
    _, argmax = torch.ops.detector.roi_pool(x, rois, 1 / 2, 5, 5)
    grad = torch.randn(30, 48, 5, 5)

    def backward(g: Tensor) -> Tensor:
        return torch.ops.detector._roi_pool_backward(g, rois, argmax, 1, 48, 210, 210)

    expected = backward(grad).clone()
    stale = backward(torch.full_like(grad, 7.0))  # leaves its values in the freed memory
    del stale
    assert_same_bits(backward(grad), expected)


def test_backward_deterministic_across_threads() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 9, 30, 33)
    rois = random_rois(80, 2, 30, 33, 1 / 4, seed=9)
    grad = torch.randn(80, 9, 5, 5)

    def run() -> tuple[Tensor, Tensor]:
        return _our_forward_backward(x, rois, 5, 1 / 4, grad)

    out1, grad1 = with_threads(1, run)
    out2, grad2 = with_threads(2, run)
    out3, grad3 = with_threads(2, run)
    assert_same_bits(out1, out2)
    assert_same_bits(grad1, grad2)
    assert_same_bits(grad2, grad3)


def test_backward_strided_grad_matches_contiguous() -> None:
    """A non-contiguous or expanded `grad` (read in place) gives the bits of its contiguous copy."""
    torch.manual_seed(3)
    x = torch.randn(2, 6, 20, 23)
    rois = random_rois(40, 2, 20, 23, 1 / 2, seed=4)
    _, argmax = torch.ops.detector.roi_pool(x, rois, 1 / 2, 3, 4)
    sliced = torch.randn(40, 6, 3, 8)[..., ::2]  # (K, C, 3, 4) with a last-dim stride of 2
    expanded = torch.randn(1, 6, 1, 1).expand(40, 6, 3, 4)
    for grad in (sliced, expanded):
        ours = torch.ops.detector._roi_pool_backward(grad, rois, argmax, 2, 6, 20, 23)
        dense = torch.ops.detector._roi_pool_backward(grad.contiguous(), rois, argmax, 2, 6, 20, 23)
        assert_same_bits(ours, dense)


def test_layer() -> None:
    layer = RoIPool((7, 5), 1 / 16)
    assert repr(layer) == "RoIPool(output_size=(7, 5), spatial_scale=0.0625)"
    x = _features((1, 2, 20, 20))
    rois = torch.tensor([[0, 10.0, 20.0, 200.0, 150.0]])
    tv = torchvision.ops.RoIPool((7, 5), 1 / 16)(x, rois)
    torch.testing.assert_close(layer(x, rois), tv, atol=0, rtol=0)


def test_misuse_errors() -> None:
    x = torch.randn(1, 2, 5, 5)
    rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]])
    with pytest.raises(ValueError, match="roi_pool: `input` must be 4-D"):
        roi_pool(x[0], rois, 2)
    with pytest.raises(TypeError, match="roi_pool: `input` must be a floating point"):
        roi_pool(x.long(), rois, 2)
    with pytest.raises(ValueError, match="roi_pool: `boxes` must be a Tensor\\[K, 5\\]"):
        roi_pool(x, rois[:, 1:], 2)
    with pytest.raises(ValueError, match="roi_pool: `boxes\\[0\\]` must be a Tensor\\[K, 4\\]"):
        roi_pool(x, [rois], 2)
    with pytest.raises(TypeError, match="roi_pool: `boxes` must be a floating point"):
        roi_pool(x, rois.long(), 2)
    with pytest.raises(ValueError, match="roi_pool: `output_size` must be positive"):
        roi_pool(x, rois, (0, 2))
    with pytest.raises(ValueError, match="roi_pool: `output_size` must be an int or a pair"):
        roi_pool(x, rois, (1, 2, 3))
    with pytest.raises(RuntimeError, match="roi_pool: batch index in `rois"):
        roi_pool(x, torch.tensor([[1, 0.0, 0.0, 3.0, 3.0]]), 2)
    with pytest.raises(RuntimeError, match="roi_pool: `rois` contains NaN"):
        roi_pool(x, torch.tensor([[0, float("nan"), 0.0, 3.0, 3.0]]), 2)
