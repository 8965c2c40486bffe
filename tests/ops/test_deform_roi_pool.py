"""Tests of deform_roi_pool / deform_ps_roi_pool and their layers.

Oracle: a plain PyTorch implementation (explicit bilinear gathers, autograd for the gradients).
With zero offsets the ops must equal torchvision's roi_align(aligned=True) and ps_roi_align.
Shapes: N images, C channels, K RoIs, ph x pw bins.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import Tensor

from detector.layers import DeformPSRoIPool, DeformRoIPool
from detector.ops import deform_ps_roi_pool, deform_roi_pool
from tests.ops.utils import DEVICES, assert_same_bits, edge_case_rois, random_rois, with_threads

OPS = {"plain": deform_roi_pool, "ps": deform_ps_roi_pool}


# ------------------------------------------------------------------------------------------------
# Reference implementation


def _bilinear_ref(plane: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """RoI Align bilinear sampling of plane (C, H, W) at points y, x of shape S -> (C, *S)."""
    height, width = plane.shape[-2:]
    valid = (y >= -1) & (y <= height) & (x >= -1) & (x <= width)
    y = y.clamp(min=0)
    x = x.clamp(min=0)
    y_low = y.detach().floor().long()
    x_low = x.detach().floor().long()
    y_edge = y_low >= height - 1
    x_edge = x_low >= width - 1
    y_low = torch.where(y_edge, height - 1, y_low)
    x_low = torch.where(x_edge, width - 1, x_low)
    y_high = torch.where(y_edge, height - 1, y_low + 1)
    x_high = torch.where(x_edge, width - 1, x_low + 1)
    ly = torch.where(y_edge, torch.zeros_like(y), y - y_low)
    lx = torch.where(x_edge, torch.zeros_like(x), x - x_low)
    hy, hx = 1 - ly, 1 - lx
    value = (
        hy * hx * plane[:, y_low, x_low]
        + hy * lx * plane[:, y_low, x_high]
        + ly * hx * plane[:, y_high, x_low]
        + ly * lx * plane[:, y_high, x_high]
    )
    return torch.where(valid, value, torch.zeros_like(value))


def deform_pool_ref(
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    gamma: float,
    mask: Tensor | None,
    position_sensitive: bool,
) -> Tensor:
    """Deformable (PS) RoI pooling with the aligned convention, RoI by RoI, in input's dtype."""
    ph, pw = output_size
    channels = input.size(1) // (ph * pw) if position_sensitive else input.size(1)
    outputs = []
    for k in range(rois.size(0)):
        n = int(rois[k, 0])
        x1, y1, x2, y2 = (rois[k, 1:] * spatial_scale - 0.5).unbind()
        roi_w, roi_h = x2 - x1, y2 - y1
        grid_h = sampling_ratio if sampling_ratio > 0 else max(math.ceil(roi_h / ph), 0)
        grid_w = sampling_ratio if sampling_ratio > 0 else max(math.ceil(roi_w / pw), 0)
        count = max(grid_h * grid_w, 1)
        bin_h, bin_w = roi_h / ph, roi_w / pw
        i = torch.arange(ph, dtype=input.dtype, device=input.device)[:, None]
        j = torch.arange(pw, dtype=input.dtype, device=input.device)[None, :]
        origin_y = y1 + i * bin_h  # (ph, 1)
        origin_x = x1 + j * bin_w  # (1, pw)
        if offset is not None:
            origin_y = origin_y + gamma * roi_h * offset[k, 1]  # (ph, pw)
            origin_x = origin_x + gamma * roi_w * offset[k, 0]
        origin_y, origin_x = torch.broadcast_tensors(origin_y, origin_x)
        iy = torch.arange(grid_h, dtype=input.dtype, device=input.device)
        ix = torch.arange(grid_w, dtype=input.dtype, device=input.device)
        # (ph, pw, grid_h, grid_w) sample coordinates
        ys = origin_y[..., None, None] + ((iy + 0.5) * bin_h / max(grid_h, 1))[:, None]
        xs = origin_x[..., None, None] + ((ix + 0.5) * bin_w / max(grid_w, 1))[None, :]
        ys, xs = torch.broadcast_tensors(ys, xs)
        pooled = _bilinear_ref(input[n], ys, xs).sum((-2, -1)) / count  # (C, ph, pw)
        if position_sensitive:
            # (C_out * ph * pw, ph, pw) -> (C_out, ph * pw, ph * pw): keep bin b of channel c*P + b
            pooled = pooled.reshape(channels, ph * pw, ph * pw).diagonal(dim1=1, dim2=2)
            pooled = pooled.reshape(channels, ph, pw)
        if mask is not None:
            pooled = pooled * mask[k, 0]
        outputs.append(pooled)
    if not outputs:
        return input.new_zeros((0, channels, ph, pw))
    return torch.stack(outputs)


# ------------------------------------------------------------------------------------------------
# Inputs


def _make(
    form: str,
    device: str,
    dtype: torch.dtype = torch.float64,
    output_size: tuple[int, int] = (3, 4),
    channels_out: int = 3,
    spatial_scale: float = 0.5,
    num_rois: int = 6,
    offset_scale: float = 1.0,
    seed: int = 0,
    edge: bool = False,
    size: tuple[int, int, int] = (2, 9, 11),
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns input, rois, offset, mask for `form` ('plain' or 'ps'); size is (N, H, W)."""
    g = torch.Generator().manual_seed(seed)
    ph, pw = output_size
    channels = channels_out * ph * pw if form == "ps" else channels_out
    batch, height, width = size
    input = torch.randn(batch, channels, height, width, generator=g, dtype=dtype)
    rois = random_rois(num_rois, batch, height, width, spatial_scale, dtype=dtype, seed=seed)
    if edge:
        rois = torch.cat([rois, edge_case_rois(height, width, spatial_scale).to(dtype)])
    num_rois = rois.size(0)
    offset = offset_scale * torch.randn(num_rois, 2, ph, pw, generator=g, dtype=dtype)
    mask = torch.rand(num_rois, 1, ph, pw, generator=g, dtype=dtype)
    return input.to(device), rois.to(device), offset.to(device), mask.to(device)


# ------------------------------------------------------------------------------------------------
# Agreement with the reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", ["plain", "ps"])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.25, 1 / 32])
@pytest.mark.parametrize("modulated", [False, True])
def test_forward_backward_match_reference(device, form, sampling_ratio, spatial_scale, modulated):
    input, rois, offset, mask = _make(form, device, spatial_scale=spatial_scale, edge=True)
    mask = mask if modulated else None
    args = ((3, 4), spatial_scale, sampling_ratio, 0.1)
    leaves = [t.requires_grad_() for t in (input, offset) + ((mask,) if modulated else ())]
    out = OPS[form](input, rois, offset, *args, mask=mask)
    ref = deform_pool_ref(input, rois, offset, *args, mask, form == "ps")
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, grad)
    ref_grads = torch.autograd.grad(ref, leaves, grad)
    names = ["input", "offset", "mask"][: len(leaves)]
    for name, got, want in zip(names, grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=f"grad of {name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", ["plain", "ps"])
def test_float32_matches_reference(device, form):
    input, rois, offset, mask = _make(form, device, dtype=torch.float32, edge=True)
    out = OPS[form](input, rois, offset, (3, 4), 0.5, 2, 0.1, mask)
    ref = deform_pool_ref(
        input.double(),
        rois.double(),
        offset.double(),
        (3, 4),
        0.5,
        2,
        0.1,
        mask.double(),
        form == "ps",
    )
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", ["plain", "ps"])
def test_offsets_pushing_bins_outside(device, form):
    """Large offsets move bins (partly) off the map: those samples contribute 0, like RoI Align."""
    input, rois, offset, mask = _make(form, device, offset_scale=25.0, seed=3)
    input.requires_grad_()
    offset.requires_grad_()
    out = OPS[form](input, rois, offset, (3, 4), 0.5, 2, 0.1, mask)
    ref = deform_pool_ref(input, rois, offset, (3, 4), 0.5, 2, 0.1, mask, form == "ps")
    assert (out == 0).any()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(out)
    for got, want in zip(
        torch.autograd.grad(out, [input, offset], grad),
        torch.autograd.grad(ref, [input, offset], grad),
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# Zero offsets: equal to torchvision's non-deformable ops


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2])
@pytest.mark.parametrize("spatial_scale", [0.25, 0.125, 1 / 32])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "non_contiguous"])
@pytest.mark.parametrize("zero", ["none", "zeros"])
def test_zero_offset_equals_roi_align(device, sampling_ratio, spatial_scale, layout, zero):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(2, 6, 13, 17, generator=g)
    if layout == "channels_last":
        base = base.contiguous(memory_format=torch.channels_last)
    elif layout == "non_contiguous":
        base = torch.randn(2, 12, 13, 17, generator=g)[:, ::2]
    rois = torch.cat(
        [random_rois(20, 2, 13, 17, spatial_scale, seed=2), edge_case_rois(13, 17, spatial_scale)]
    )
    input, rois = base.to(device), rois.to(device)
    offset = torch.zeros(rois.size(0), 2, 7, 7, device=device) if zero == "zeros" else None
    x_ours = input.detach().clone().requires_grad_()
    x_tv = input.detach().clone().requires_grad_()
    ours = deform_roi_pool(x_ours, rois, offset, 7, spatial_scale, sampling_ratio)
    peer = torchvision.ops.roi_align(x_tv, rois, 7, spatial_scale, sampling_ratio, aligned=True)
    torch.testing.assert_close(ours, peer, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(peer)
    ours.backward(grad)
    peer.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_tv.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_zero_offset_equals_ps_roi_align(device, sampling_ratio, layout):
    """Same convention as torchvision.ops.ps_roi_align (half-pixel shift, bin c*P + b).

    torchvision divides by a zero sample count on empty bins (zero-size or inverted RoIs with
    adaptive sampling) and returns NaN there; ours returns 0. Elsewhere they are equal.
    """
    g = torch.Generator().manual_seed(4)
    input = torch.randn(2, 5 * 9, 13, 17, generator=g)
    if layout == "channels_last":
        input = input.contiguous(memory_format=torch.channels_last)
    rois = torch.cat([random_rois(20, 2, 13, 17, 0.25, seed=5), edge_case_rois(13, 17, 0.25)])
    input, rois = input.to(device), rois.to(device)
    x_ours = input.detach().clone().requires_grad_()
    x_tv = input.detach().clone().requires_grad_()
    ours = deform_ps_roi_pool(x_ours, rois, None, 3, 0.25, sampling_ratio)
    peer = torchvision.ops.ps_roi_align(x_tv, rois, 3, 0.25, sampling_ratio)
    finite = peer.isfinite()
    torch.testing.assert_close(ours[finite], peer[finite], rtol=1e-5, atol=1e-5)
    assert (ours[~finite] == 0).all()
    # gradients: compare on the RoIs whose outputs torchvision computes finitely
    keep = finite.flatten(1).all(1)
    grad = torch.randn_like(peer) * keep[:, None, None, None]
    ours.backward(grad)
    peer.masked_fill(~finite, 0).backward(grad)
    torch.testing.assert_close(x_ours.grad, x_tv.grad, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Edge cases


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", ["plain", "ps"])
def test_no_rois(device, form):
    input, _, _, _ = _make(form, device, dtype=torch.float32)
    input.requires_grad_()
    rois = torch.zeros(0, 5, device=device)
    offset = torch.zeros(0, 2, 3, 4, device=device, requires_grad=True)
    mask = torch.zeros(0, 1, 3, 4, device=device, requires_grad=True)
    out = OPS[form](input, rois, offset, (3, 4), 0.5, mask=mask)
    assert out.shape == (0, 3, 3, 4)
    out.sum().backward()
    assert (input.grad == 0).all()
    assert offset.grad.shape == offset.shape and mask.grad.shape == mask.shape


@pytest.mark.parametrize("device", DEVICES)
def test_list_of_boxes_and_none_offset(device):
    input, rois, _, _ = _make("plain", device, dtype=torch.float32)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    as_tensor = torch.cat([rois[rois[:, 0] == i] for i in range(2)])
    zero = torch.zeros(as_tensor.size(0), 2, 3, 4, device=device)
    torch.testing.assert_close(
        deform_roi_pool(input, boxes, None, (3, 4), 0.5),
        deform_roi_pool(input, as_tensor, zero, (3, 4), 0.5),
    )


# ------------------------------------------------------------------------------------------------
# gradcheck, opcheck, torch.compile


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", ["plain", "ps"])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_gradcheck(device, form, sampling_ratio):
    input, rois, offset, mask = _make(
        form,
        device,
        output_size=(2, 2),
        channels_out=2,
        num_rois=3,
        offset_scale=0.5,
        size=(1, 6, 7),
    )
    input.requires_grad_()
    offset.requires_grad_()
    mask.requires_grad_()

    def fn(x, o, m):
        return OPS[form](x, rois, o, (2, 2), 0.5, sampling_ratio, 0.1, m)

    assert torch.autograd.gradcheck(fn, (input, offset, mask), fast_mode=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", ["plain", "ps"])
def test_gradcheck_full(device, form):
    """Every Jacobian entry (slow mode) on a tiny input."""
    input, rois, offset, mask = _make(
        form,
        device,
        output_size=(2, 2),
        channels_out=1,
        num_rois=2,
        offset_scale=0.5,
        size=(1, 4, 5),
        seed=2,
    )
    leaves = [t.requires_grad_() for t in (input, offset, mask)]

    def fn(x, o, m):
        return OPS[form](x, rois, o, (2, 2), 0.5, -1, 0.1, m)

    assert torch.autograd.gradcheck(fn, leaves)


def _op_args(form: str, device: str) -> list[tuple]:
    input, rois, offset, mask = _make(
        form,
        device,
        dtype=torch.float32,
        output_size=(2, 3),
        channels_out=2,
        num_rois=3,
        size=(1, 6, 7),
    )
    input.requires_grad_()
    offset.requires_grad_()
    mask.requires_grad_()
    return [
        (input, rois, offset, mask, 0.5, 2, 3, 2, 0.1),
        (input, rois, None, None, 0.25, 2, 3, -1, 0.2),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", ["plain", "ps"])
def test_opcheck(device, form):
    name = "deform_roi_pool" if form == "plain" else "deform_ps_roi_pool"
    forward = getattr(torch.ops.detector, name)
    backward = getattr(torch.ops.detector, f"_{name}_backward")
    for args in _op_args(form, device):
        torch.library.opcheck(forward, args)
        out = forward(*args)
        plain = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
        torch.library.opcheck(backward, (torch.randn_like(out).detach(),) + plain + (True, True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", ["plain", "ps"])
def test_torch_compile(device, form):
    input, rois, offset, mask = _make(form, device, dtype=torch.float32)

    def fn(x, r, o, m):
        return OPS[form](x, r, o, (3, 4), 0.5, 2, 0.1, m)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    leaves_c = [t.clone().requires_grad_() for t in (input, offset, mask)]
    leaves_e = [t.clone().requires_grad_() for t in (input, offset, mask)]
    out_c = compiled(leaves_c[0], rois, leaves_c[1], leaves_c[2])
    out_e = fn(leaves_e[0], rois, leaves_e[1], leaves_e[2])
    torch.testing.assert_close(out_c, out_e)
    out_c.sum().backward()
    out_e.sum().backward()
    for a, b in zip(leaves_c, leaves_e, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


# ------------------------------------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize("form", ["plain", "ps"])
def test_backward_deterministic_across_threads(form):
    g = torch.Generator().manual_seed(7)
    channels = 5 * 49 if form == "ps" else 40
    input = torch.randn(2, channels, 24, 30, generator=g)
    rois = random_rois(64, 2, 24, 30, 0.25, seed=8)
    offset = 0.3 * torch.randn(64, 2, 7, 7, generator=g)
    mask = torch.rand(64, 1, 7, 7, generator=g)
    grad = torch.randn(64, channels // 49 if form == "ps" else channels, 7, 7, generator=g)

    def run():
        leaves = [t.clone().requires_grad_() for t in (input, offset, mask)]
        out = OPS[form](leaves[0], rois, leaves[1], 7, 0.25, 2, 0.1, leaves[2])
        out.backward(grad)
        return [out.detach()] + [t.grad for t in leaves]

    first = with_threads(1, run)
    for other in (with_threads(2, run), with_threads(2, run)):
        for a, b in zip(first, other, strict=True):
            assert_same_bits(a, b)


# ------------------------------------------------------------------------------------------------
# Misuse


@pytest.mark.parametrize("form", ["plain", "ps"])
def test_errors_name_op_and_argument(form):
    op = OPS[form]
    name = "deform_roi_pool" if form == "plain" else "deform_ps_roi_pool"
    input, rois, offset, mask = _make(form, "cpu", dtype=torch.float32, num_rois=4)
    with pytest.raises(ValueError, match=rf"{name}: `offset` must have shape \(K, 2, ph, pw\)"):
        op(input, rois, offset[:, :1], (3, 4), 0.5)
    with pytest.raises(ValueError, match=rf"{name}: `offset` must have shape"):
        op(input, rois, offset[:3], (3, 4), 0.5)
    with pytest.raises(ValueError, match=rf"{name}: `offset` must have shape"):
        op(input, rois, offset, (4, 3), 0.5)
    with pytest.raises(ValueError, match=rf"{name}: `mask` must have shape \(K, 1, ph, pw\)"):
        op(input, rois, offset, (3, 4), 0.5, mask=mask.expand(4, 2, 3, 4))
    with pytest.raises(ValueError, match=rf"{name}: `input` must be 4-D"):
        op(input[0], rois, offset, (3, 4), 0.5)
    with pytest.raises(ValueError, match=rf"{name}: `boxes` must be a Tensor\[K, 5\]"):
        op(input, rois[:, :4], offset, (3, 4), 0.5)
    with pytest.raises(TypeError, match=rf"{name}: `offset` must be a floating point"):
        op(input, rois, offset.long(), (3, 4), 0.5)
    with pytest.raises(RuntimeError, match=rf"{name}: batch index in `rois"):
        op(input, rois + torch.tensor([5.0, 0, 0, 0, 0]), offset, (3, 4), 0.5)


def test_ps_channels_not_divisible():
    input = torch.randn(1, 13, 8, 8)
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 6.0]])
    with pytest.raises(ValueError, match=r"deform_ps_roi_pool: `input` must have C_out"):
        deform_ps_roi_pool(input, rois, None, 2)
    with pytest.raises(RuntimeError, match=r"deform_ps_roi_pool: `input` channels \(13\)"):
        torch.ops.detector.deform_ps_roi_pool(input, rois, None, None, 1.0, 2, 2, -1, 0.1)


def test_kernel_errors_name_op_and_argument():
    input = torch.randn(1, 4, 8, 8)
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 6.0]])
    with pytest.raises(RuntimeError, match=r"deform_roi_pool: expected `offset` of shape"):
        torch.ops.detector.deform_roi_pool(
            input, rois, torch.zeros(1, 2, 3, 3), None, 1.0, 2, 2, -1, 0.1
        )
    with pytest.raises(RuntimeError, match=r"deform_roi_pool: expected `mask` of shape"):
        torch.ops.detector.deform_roi_pool(
            input, rois, None, torch.zeros(1, 2, 2, 2), 1.0, 2, 2, -1, 0.1
        )


# ------------------------------------------------------------------------------------------------
# Layers


@pytest.mark.parametrize("device", DEVICES)
def test_layers(device):
    input, rois, offset, mask = _make("plain", device, dtype=torch.float32)
    layer = DeformRoIPool((3, 4), spatial_scale=0.5, sampling_ratio=2)
    assert repr(layer) == (
        "DeformRoIPool(output_size=(3, 4), spatial_scale=0.5, sampling_ratio=2, gamma=0.1)"
    )
    torch.testing.assert_close(
        layer(input, rois, offset, mask),
        deform_roi_pool(input, rois, offset, (3, 4), 0.5, 2, 0.1, mask),
    )
    ps_input, rois, offset, _ = _make("ps", device, dtype=torch.float32)
    ps_layer = DeformPSRoIPool((3, 4), 0.5, gamma=0.2)
    assert "DeformPSRoIPool(output_size=(3, 4)" in repr(ps_layer)
    torch.testing.assert_close(
        ps_layer(ps_input, rois, offset),
        deform_ps_roi_pool(ps_input, rois, offset, (3, 4), 0.5, gamma=0.2),
    )
