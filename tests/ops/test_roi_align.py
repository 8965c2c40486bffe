"""Tests of detector.ops.roi_align / multi_scale_roi_align and the RoIAlign layer.

Oracles: torchvision.ops.roi_align (mode="avg") and a plain PyTorch reference (both modes).
Shapes: N images, C channels, (H, W) feature map, K RoIs, (ph, pw) output size.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import Tensor

from detector.layers import RoIAlign
from detector.ops.roi_align import multi_scale_roi_align, roi_align
from tests.ops.utils import DEVICES, assert_same_bits, edge_case_rois, random_rois, with_threads

# ---------------------------------------------------------------------------------------------
# Plain PyTorch reference.


def _bilinear(plane: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Samples plane (C, H, W) at points y, x (S,) -> (C, S), RoI Align's clamped convention."""
    height, width = plane.shape[-2:]
    outside = (y < -1) | (y > height) | (x < -1) | (x > width)
    y, x = y.clamp(min=0), x.clamp(min=0)
    y_low, x_low = y.floor().long(), x.floor().long()
    y_last, x_last = y_low >= height - 1, x_low >= width - 1
    y_low, x_low = y_low.clamp(max=height - 1), x_low.clamp(max=width - 1)
    y_high = torch.where(y_last, y_low, y_low + 1)
    x_high = torch.where(x_last, x_low, x_low + 1)
    ly = torch.where(y_last, torch.zeros_like(y), y - y_low.to(y.dtype))
    lx = torch.where(x_last, torch.zeros_like(x), x - x_low.to(x.dtype))
    hy, hx = 1 - ly, 1 - lx
    value = (
        hy * hx * plane[:, y_low, x_low]
        + hy * lx * plane[:, y_low, x_high]
        + ly * hx * plane[:, y_high, x_low]
        + ly * lx * plane[:, y_high, x_high]
    )
    return torch.where(outside, torch.zeros_like(value), value)


def reference_roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    mode: str = "avg",
) -> Tensor:
    """(N, C, H, W), (K, 5) -> (K, C, ph, pw), differentiable by autograd."""
    ph, pw = output_size
    rois = rois.to(input.dtype)
    offset = 0.5 if aligned else 0.0
    outputs = []
    for roi in rois:
        start_w, start_h = roi[1] * spatial_scale - offset, roi[2] * spatial_scale - offset
        roi_w = roi[3] * spatial_scale - offset - start_w
        roi_h = roi[4] * spatial_scale - offset - start_h
        if not aligned:
            roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
        bin_h, bin_w = roi_h / ph, roi_w / pw
        grid_h = sampling_ratio if sampling_ratio > 0 else max(math.ceil(float(roi_h / ph)), 0)
        grid_w = sampling_ratio if sampling_ratio > 0 else max(math.ceil(float(roi_w / pw)), 0)
        channels = input.size(1)
        if grid_h * grid_w == 0:
            outputs.append(input.new_zeros(channels, ph, pw))
            continue
        iy = torch.arange(grid_h, dtype=input.dtype) + 0.5
        ix = torch.arange(grid_w, dtype=input.dtype) + 0.5
        # (ph, gh) and (pw, gw) sample coordinates
        ys = start_h + torch.arange(ph, dtype=input.dtype)[:, None] * bin_h + iy * bin_h / grid_h
        xs = start_w + torch.arange(pw, dtype=input.dtype)[:, None] * bin_w + ix * bin_w / grid_w
        # -> (ph, pw, gh, gw) grids, flattened
        y = ys[:, None, :, None].expand(ph, pw, grid_h, grid_w).reshape(-1)
        x = xs[None, :, None, :].expand(ph, pw, grid_h, grid_w).reshape(-1)
        values = _bilinear(input[int(roi[0])], y, x)
        values = values.reshape(channels, ph, pw, grid_h * grid_w)  # (C, S) -> (C, ph, pw, S)
        if mode == "avg":
            outputs.append(values.sum(-1) / (grid_h * grid_w))
        else:
            outputs.append(values.max(-1).values)
    if not outputs:
        return input.new_zeros(0, input.size(1), ph, pw)
    return torch.stack(outputs)


# ---------------------------------------------------------------------------------------------
# Helpers.


def _layout(x: Tensor, layout: str) -> Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "non_contiguous":
        # (N, C, W, H) storage viewed as (N, C, H, W)
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    return x


def _rois(height: int, width: int, scale: float, device: str, num: int = 24) -> Tensor:
    rois = torch.cat(
        [random_rois(num, 2, height, width, scale, seed=num), edge_case_rois(height, width, scale)]
    )
    return rois.to(device)


def _forward_backward(fn, x: Tensor, seed: int = 0) -> tuple[Tensor, Tensor]:
    x = x.detach().requires_grad_()
    out = fn(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (grad,) = torch.autograd.grad(out, x, g.to(out.device))
    return out.detach(), grad


# ---------------------------------------------------------------------------------------------
# Equality with torchvision and the reference.


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "non_contiguous"])
def test_matches_torchvision(device: str, aligned: bool, sampling_ratio: int, layout: str) -> None:
    torch.manual_seed(0)
    for scale, (height, width), channels in [
        (1.0, (9, 12), 5),
        (0.25, (11, 13), 20),
        (1 / 32, (6, 7), 16),
    ]:
        x = torch.randn(2, channels, height, width, device=device)
        rois = _rois(height, width, scale, device)
        ours, ours_grad = _forward_backward(
            lambda t, r=rois, s=scale: roi_align(
                _layout(t, layout), r, (3, 4), s, sampling_ratio, aligned
            ),
            x,
        )
        peer, peer_grad = _forward_backward(
            lambda t, r=rois, s=scale: torchvision.ops.roi_align(
                t, r, (3, 4), s, sampling_ratio, aligned
            ),
            x,
        )
        torch.testing.assert_close(ours, peer, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours_grad, peer_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_matches_reference(device: str, mode: str, aligned: bool, sampling_ratio: int) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 18, 10, 14, device=device)
    rois = _rois(10, 14, 0.5, device, num=12)
    ours, ours_grad = _forward_backward(
        lambda t: roi_align(t, rois, 3, 0.5, sampling_ratio, aligned, mode=mode), x
    )
    ref, ref_grad = _forward_backward(
        lambda t: reference_roi_align(
            t.cpu(), rois.cpu(), (3, 3), 0.5, sampling_ratio, aligned, mode
        ),
        x,
    )
    torch.testing.assert_close(ours.cpu(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_grad.cpu(), ref_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_list_of_boxes_and_layouts(device: str) -> None:
    x = torch.randn(2, 7, 8, 9, device=device)
    rois = _rois(8, 9, 1.0, device)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    ordered = torch.cat([rois[rois[:, 0] == i] for i in range(2)])
    torch.testing.assert_close(roi_align(x, boxes, 2, 1.0, 2), roi_align(x, ordered, 2, 1.0, 2))
    for mode in ("avg", "max"):
        out = roi_align(x, rois, 2, 1.0, 2, mode=mode)
        assert out.is_contiguous()
        out_cl = roi_align(_layout(x, "channels_last"), rois, 2, 1.0, 2, mode=mode)
        torch.testing.assert_close(out_cl, out, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_no_rois(device: str, mode: str) -> None:
    x = torch.randn(1, 4, 6, 6, device=device, requires_grad=True)
    out = roi_align(x, torch.zeros(0, 5, device=device), (2, 3), mode=mode)
    assert out.shape == (0, 4, 2, 3)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_memory_format_follows_input(device: str) -> None:
    x = torch.randn(2, 6, 5, 7, device=device).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    rois = _rois(5, 7, 1.0, device, num=4)
    (grad,) = torch.autograd.grad(roi_align(x, rois, 2, 1.0, 2).sum(), x)
    assert grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_many_samples_span_several_chunks(layout: str) -> None:
    """Huge grids: the CPU kernels then pool the RoIs in several sample-table chunks."""
    torch.manual_seed(2)
    x = torch.randn(1, 3, 12, 10, dtype=torch.float64)  # float64: thousands of summands a bin
    rois = random_rois(5, 1, 12, 10, seed=3, dtype=torch.float64)  # 3 chunks of <= 2 RoIs
    for mode in ("avg", "max"):
        ours, ours_grad = _forward_backward(
            lambda t, m=mode: roi_align(_layout(t, layout), rois, 7, 1.0, 64, mode=m), x
        )
        if mode == "avg":
            ref, ref_grad = _forward_backward(
                lambda t: torchvision.ops.roi_align(t, rois, 7, 1.0, 64), x
            )
        else:
            ref, ref_grad = _forward_backward(
                lambda t: reference_roi_align(t, rois, (7, 7), 1.0, 64, False, "max"), x
            )
        torch.testing.assert_close(ours, ref, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(ours_grad, ref_grad, atol=1e-9, rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# gradcheck, opcheck, torch.compile.


def _inside_rois(device: str) -> Tensor:
    """RoIs inside a 6x7 map: no sample point lies outside, so max mode has no ties."""
    return torch.tensor(
        [[0, 0.3, 0.6, 4.7, 5.1], [1, 1.2, 0.4, 5.9, 3.3], [0, 2.1, 1.7, 3.6, 4.4]],
        dtype=torch.float64,
        device=device,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True])
def test_gradcheck(device: str, mode: str, aligned: bool) -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, device=device, requires_grad=True)
    rois = _inside_rois(device) if mode == "max" else _rois(6, 7, 1.0, device, num=4).double()
    assert torch.autograd.gradcheck(
        lambda t: roi_align(t, rois, (2, 3), 1.0, 2, aligned, mode=mode), (x,)
    )
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: roi_align(t, rois, (2, 2), 1.0, -1, aligned, mode=mode), (x_cl,)
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_opcheck(device: str, mode: str) -> None:
    x = torch.randn(2, 5, 6, 7, device=device, requires_grad=True)
    rois = _rois(6, 7, 1.0, device, num=5)
    torch.library.opcheck(torch.ops.detector.roi_align, (x, rois, 1.0, 2, 3, 2, True, mode))
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.detector.roi_align, (x_cl, rois, 0.5, 2, 2, -1, False, mode))
    out, argmax = torch.ops.detector.roi_align(x.detach(), rois, 1.0, 2, 3, 2, True, mode)
    grad = torch.randn_like(out)
    torch.library.opcheck(
        torch.ops.detector._roi_align_backward,
        (grad, rois, argmax, 1.0, 2, 3, 2, 5, 6, 7, 2, True, mode, False),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_torch_compile(device: str, mode: str) -> None:
    torch._dynamo.reset()
    x = torch.randn(2, 5, 8, 9, device=device)
    rois = _rois(8, 9, 0.5, device, num=6)

    def fn(t: Tensor) -> Tensor:
        return roi_align(t, rois, (2, 3), 0.5, 2, True, mode=mode) * 2

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    eager_out, eager_grad = _forward_backward(fn, x)
    compiled_out, compiled_grad = _forward_backward(compiled, x)
    torch.testing.assert_close(compiled_out, eager_out)
    torch.testing.assert_close(compiled_grad, eager_grad)


# ---------------------------------------------------------------------------------------------
# Determinism (CPU) and misuse.


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_deterministic_across_threads(mode: str, layout: str) -> None:
    torch.manual_seed(4)
    x = _layout(torch.randn(2, 40, 16, 18), layout)
    rois = random_rois(64, 2, 16, 18, 0.5, seed=5)

    def run() -> tuple[Tensor, Tensor]:
        # 64 RoIs x 49 bins x 16 points x 3 channel blocks: enough work for both threads
        return _forward_backward(lambda t: roi_align(t, rois, 7, 0.5, 4, True, mode=mode), x)

    out1, grad1 = with_threads(1, run)
    out2, grad2 = with_threads(2, run)
    out3, grad3 = with_threads(2, run)
    assert_same_bits(out1, out2)
    assert_same_bits(grad1, grad2)
    assert_same_bits(grad2, grad3)


def test_misuse_errors() -> None:
    x = torch.randn(1, 3, 5, 5)
    rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]])
    with pytest.raises(ValueError, match="roi_align: `mode`"):
        roi_align(x, rois, 2, mode="sum")
    with pytest.raises(ValueError, match="roi_align: `input` must be 4-D"):
        roi_align(x[0], rois, 2)
    with pytest.raises(ValueError, match="roi_align: `boxes`"):
        roi_align(x, rois[:, 1:], 2)
    with pytest.raises(TypeError, match="roi_align: `input` must be a floating"):
        roi_align(x.long(), rois, 2)
    with pytest.raises(TypeError, match="roi_align: `boxes` must be a floating"):
        roi_align(x, rois.long(), 2)
    with pytest.raises(ValueError, match="roi_align: `output_size`"):
        roi_align(x, rois, (2, 2, 2))
    with pytest.raises(RuntimeError, match="roi_align: batch index"):
        roi_align(x, torch.tensor([[1, 0.0, 0.0, 3.0, 3.0]]), 2)
    with pytest.raises(ValueError, match="RoIAlign: `mode`"):
        RoIAlign(2, 1.0, 2, mode="median")


# ---------------------------------------------------------------------------------------------
# Layer.


def test_layer_matches_op_and_repr() -> None:
    x = torch.randn(2, 4, 8, 8)
    rois = _rois(8, 8, 0.5, "cpu", num=5)
    layer = RoIAlign((2, 3), 0.5, 2, aligned=True, mode="max")
    torch.testing.assert_close(layer(x, rois), roi_align(x, rois, (2, 3), 0.5, 2, True, mode="max"))
    assert repr(layer) == (
        "RoIAlign(output_size=(2, 3), spatial_scale=0.5, sampling_ratio=2, aligned=True, "
        "mode='max')"
    )


# ---------------------------------------------------------------------------------------------
# Multi-level op.


def _pyramid(device: str, layout: str = "contiguous") -> tuple[list[Tensor], list[float]]:
    torch.manual_seed(6)
    sizes = [(16, 20), (8, 10), (4, 5)]
    features = [_layout(torch.randn(2, 6, h, w, device=device), layout) for h, w in sizes]
    return features, [1 / 4, 1 / 8, 1 / 16]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_multi_scale_matches_per_level(device: str, mode: str, layout: str) -> None:
    features, scales = _pyramid(device, layout)
    rois = _rois(64, 80, 1.0, device, num=20)
    levels = torch.randint(0, 3, (rois.size(0),), generator=torch.Generator().manual_seed(7))
    levels = levels.to(device)
    leaves = [f.detach().requires_grad_() for f in features]
    out = multi_scale_roi_align(leaves, rois, levels, (3, 2), scales, 2, True, mode=mode)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, g)
    expected = torch.zeros_like(out)
    expected_leaves = [f.detach().requires_grad_() for f in features]
    for level, scale in enumerate(scales):
        index = torch.nonzero(levels == level).squeeze(1)
        pooled = roi_align(expected_leaves[level], rois[index], (3, 2), scale, 2, True, mode=mode)
        expected = expected.index_copy(0, index, pooled)
    expected_grads = torch.autograd.grad(expected, expected_leaves, g)
    torch.testing.assert_close(out, expected.detach(), atol=1e-6, rtol=1e-6)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=1e-6)
        assert grad.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


def test_multi_scale_gradcheck_opcheck_compile() -> None:
    torch.manual_seed(8)
    sizes = [(6, 7), (3, 4), (2, 2)]  # a small pyramid keeps gradcheck fast
    features = [torch.randn(2, 2, h, w, dtype=torch.float64, requires_grad=True) for h, w in sizes]
    scales = [1 / 4, 1 / 8, 1 / 16]
    rois = _rois(24, 28, 1.0, "cpu", num=4).double()
    levels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    assert torch.autograd.gradcheck(
        lambda *fs: multi_scale_roi_align(list(fs), rois, levels, 2, scales, 2, True),
        tuple(features),
    )
    torch.library.opcheck(
        torch.ops.detector.multi_scale_roi_align,
        (features, rois, levels, scales, 2, 2, 2, True, "max"),
    )

    def fn(fs: list[Tensor]) -> Tensor:
        return multi_scale_roi_align(fs, rois, levels, 2, scales, -1, False)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(features), fn(features))


def test_multi_scale_misuse() -> None:
    features, scales = _pyramid("cpu")
    rois = _rois(64, 80, 1.0, "cpu", num=3)
    levels = torch.zeros(rois.size(0), dtype=torch.int64)
    with pytest.raises(ValueError, match="multi_scale_roi_align: `spatial_scales`"):
        multi_scale_roi_align(features, rois, levels, 2, scales[:2])
    with pytest.raises(ValueError, match="multi_scale_roi_align: `levels`"):
        multi_scale_roi_align(features, rois, levels.int(), 2, scales)
    with pytest.raises(ValueError, match="multi_scale_roi_align: `levels` must lie"):
        multi_scale_roi_align(features, rois, levels + 3, 2, scales)
    with pytest.raises(ValueError, match="multi_scale_roi_align: `mode`"):
        multi_scale_roi_align(features, rois, levels, 2, scales, mode="min")
