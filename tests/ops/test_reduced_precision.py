"""float16 and bfloat16 CPU kernels of every op: values and gradients within torchvision's
per-dtype test tolerances of a float64 computation on the same (rounded) inputs, accumulated in
float32, in the input's dtype; the kernels that keep the float32 arithmetic (ps_roi_*,
deform_*roi_pool) give exactly the float32 result rounded once; deform_conv2d is checked in
depth (every gradient, groups, layouts, thread counts)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from detector import ops
from tests.ops.op_cases import OP_CASES
from tests.ops.utils import assert_same_bits, random_rois, with_threads

#: torchvision's test_ops tolerances (rtol = atol) for RoI op values of each dtype.
TOLERANCE = {torch.float16: 4e-3, torch.bfloat16: 5e-3}
REDUCED = list(TOLERANCE)


def _inputs(dtype: torch.dtype, channels_last: bool) -> tuple[Tensor, Tensor]:
    """Features (2, 50, 10, 10) in [0, 1) and 40 RoIs, both in `dtype`."""
    x = torch.rand(2, 50, 10, 10, generator=torch.Generator().manual_seed(0)).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x, random_rois(40, 2, 10, 10, dtype=dtype, seed=1)


def _close(actual: Tensor, expected: Tensor, tol: float) -> None:
    assert actual.dtype != torch.float64
    torch.testing.assert_close(actual.double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_roi_align_values_and_gradients(dtype, mode, aligned, channels_last) -> None:
    x, rois = _inputs(dtype, channels_last)
    x.requires_grad_()
    out = ops.roi_align(x, rois, 5, 1.0, -1, aligned, mode)
    assert out.dtype == dtype
    x64 = x.detach().double().requires_grad_()
    expected = ops.roi_align(x64, rois.double(), 5, 1.0, -1, aligned, mode)
    _close(out, expected, TOLERANCE[dtype])
    grad_out = torch.rand(out.shape, generator=torch.Generator().manual_seed(2))
    out.backward(grad_out.to(dtype))
    expected.backward(grad_out.to(dtype).double())
    assert x.grad is not None and x.grad.dtype == dtype
    # A pixel's gradient sums up to a few dozen bin gradients: the tolerance scales with it.
    _close(x.grad, x64.grad, TOLERANCE[dtype] * float(x64.grad.abs().max().clamp(min=1)))


@pytest.mark.parametrize("dtype", REDUCED)
def test_multi_scale_roi_align_values_and_gradients(dtype) -> None:
    x, rois = _inputs(dtype, False)
    coarse = x[:, :, ::2, ::2].contiguous().requires_grad_()
    x.requires_grad_()
    levels = torch.arange(40) % 2
    out = ops.multi_scale_roi_align([x, coarse], rois, levels, 3, [1.0, 0.5], 2)
    assert out.dtype == dtype
    x64, coarse64 = (t.detach().double().requires_grad_() for t in (x, coarse))
    expected = ops.multi_scale_roi_align([x64, coarse64], rois.double(), levels, 3, [1.0, 0.5], 2)
    _close(out, expected, TOLERANCE[dtype])
    out.sum().backward()
    expected.sum().backward()
    for grad, grad64 in ((x.grad, x64.grad), (coarse.grad, coarse64.grad)):
        _close(grad, grad64, TOLERANCE[dtype] * float(grad64.abs().max().clamp(min=1)))


@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
def test_nms_keeps_what_float32_keeps_on_the_same_values(dtype, iou_threshold) -> None:
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(300, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(300, 2, generator=g) * 40 + 1], dim=1).to(dtype)
    scores = torch.rand(300, generator=g).to(dtype)
    idxs = torch.randint(0, 4, (300,), generator=g)
    expected = ops.nms(boxes.float(), scores.float(), iou_threshold)
    assert torch.equal(ops.nms(boxes, scores, iou_threshold), expected)
    expected_batched = ops.batched_nms(boxes.float(), scores.float(), idxs, iou_threshold)
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, iou_threshold), expected_batched)


def _cast_floating(value: object, dtype: torch.dtype) -> object:
    if isinstance(value, Tensor) and value.is_floating_point():
        return value.detach().to(dtype)
    if isinstance(value, list):
        return [_cast_floating(v, dtype) for v in value]
    return value


# The other ops compute float16/bfloat16 in float32 (each kernel's header says how);
# deform_conv2d is tested in depth below.
OTHER_OPS = [n for n in OP_CASES if not n.startswith(("roi_align", "nms", "batched_nms", "multi"))]


@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("name", OTHER_OPS)
def test_other_ops_values_and_input_gradients(dtype: torch.dtype, name: str) -> None:
    case = OP_CASES[name]
    args = [_cast_floating(a, dtype) for a in case.args()]
    args[0].requires_grad_()
    out = case.fn(*args)
    assert out.dtype == dtype
    args64 = [_cast_floating(a, torch.float64) for a in args]
    args64[0].requires_grad_()
    expected = case.fn(*args64)
    scale = float(expected.detach().abs().max().clamp(min=1))  # deform_conv2d: C * kh * kw terms
    _close(out, expected, TOLERANCE[dtype] * scale)
    out.sum().backward()
    expected.sum().backward()
    assert args[0].grad.dtype == dtype
    _close(
        args[0].grad,
        args64[0].grad,
        TOLERANCE[dtype] * float(args64[0].grad.abs().max().clamp(min=1)),
    )


# Native float16/bfloat16 kernels that keep the float32 kernel's arithmetic (float32 footprints,
# sums and packed planes): their values and gradients are the float32 results of the same
# (rounded) inputs, rounded once to the dtype. fn(input, rois, offset, mask) for 2 x 2 bins.
NATIVE_ROUNDED_ONCE: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]] = {
    "roi_pool": lambda x, r, o, m: ops.roi_pool(x, r, 2, 0.5),
    "ps_roi_pool": lambda x, r, o, m: ops.ps_roi_pool(x, r, 2, 0.5),
    "ps_roi_align": lambda x, r, o, m: ops.ps_roi_align(x, r, 2, 0.5, 2),
    "deform_roi_pool": lambda x, r, o, m: ops.deform_roi_pool(x, r, o, 2, 0.5, 2, 0.1, m),
    "deform_ps_roi_pool": lambda x, r, o, m: ops.deform_ps_roi_pool(x, r, o, 2, 0.5, 2),
}


@pytest.mark.parametrize("rois_dtype", ["features", "float32"])  # float32: the pooler's RoIs
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("num_rois", [4, 400])  # ps ops: direct gather and packed planes
@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("name", list(NATIVE_ROUNDED_ONCE))
def test_native_kernels_round_the_float32_result_once(
    name: str, dtype: torch.dtype, num_rois: int, layout: str, rois_dtype: str
) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8 * 4, 12, 13, generator=g).to(dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x[:, :, :, ::2]
    rois = random_rois(num_rois, 2, 12, 13, dtype=torch.float32, seed=1)
    if rois_dtype == "features":
        rois = rois.to(dtype)
    offset = (torch.randn(num_rois, 2, 2, 2, generator=g) * 0.3).to(dtype)
    mask = torch.rand(num_rois, 1, 2, 2, generator=g).to(dtype)
    results = []
    for compute in (dtype, torch.float32):
        leaves = [t.detach().to(compute).requires_grad_() for t in (x, offset, mask)]
        out = NATIVE_ROUNDED_ONCE[name](
            leaves[0], rois.to(torch.promote_types(rois.dtype, compute)), *leaves[1:]
        )
        grad_out = torch.rand(out.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
        out.backward(grad_out.to(compute))
        grads = [leaf.grad if leaf.grad is not None else torch.zeros(0) for leaf in leaves]
        results.append([out.detach(), *grads])
    assert results[0][0].dtype == results[0][1].dtype == dtype
    for actual, expected in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", REDUCED)
def test_roi_pool_gradient_sums_in_float32(dtype: torch.dtype) -> None:
    """300 RoIs share their max pixel: its gradient is the float32 sum of 300 float16/bfloat16
    gradients, rounded once (summing in the dtype would round 300 times)."""
    x = torch.zeros(1, 16, 12, 12, dtype=dtype)
    x[0, :, 5, 5] = 1.0
    g = torch.Generator().manual_seed(3)
    corners = torch.rand(300, 2, generator=g) * 4  # every box covers pixel (5, 5)
    rois = torch.cat([torch.zeros(300, 1), corners, corners + 7], dim=1).to(dtype)
    leaf = x.clone().requires_grad_()
    out = ops.roi_pool(leaf, rois, 1, 1.0)  # one bin: its max is pixel (5, 5)
    grad_out = (torch.rand(out.shape, generator=g) + 0.5).to(dtype)
    out.backward(grad_out)
    expected = grad_out.float().sum(0)[:, 0, 0].to(dtype)  # (C,)
    torch.testing.assert_close(leaf.grad[0, :, 5, 5], expected, rtol=0, atol=0)
    assert leaf.grad.count_nonzero() == 16


# deform_conv2d: float32 columns, GEMMs and accumulators, each result rounded once to the dtype.
# A case: (N, C, H, W, O, groups, offset_groups, mask, stride, padding, dilation, layout).
DEFORM_CASES = {
    "v2": (2, 6, 7, 9, 4, 1, 1, True, (1, 1), (1, 1), (1, 1), "contiguous"),
    "v1": (2, 6, 7, 9, 4, 1, 1, False, (1, 1), (1, 1), (1, 1), "contiguous"),
    "groups": (3, 8, 9, 7, 6, 2, 4, True, (2, 1), (1, 2), (1, 2), "contiguous"),
    "channels_last": (2, 16, 8, 8, 8, 2, 2, True, (1, 1), (1, 1), (1, 1), "channels_last"),
    "strided": (2, 6, 7, 9, 4, 1, 1, True, (1, 1), (1, 1), (1, 1), "strided"),
    # several chunks of positions and GEMM column blocks per image
    "large": (2, 64, 40, 48, 16, 1, 1, True, (1, 1), (1, 1), (1, 1), "contiguous"),
}


def _deform_args(name: str, dtype: torch.dtype) -> dict[str, object]:
    """deform_conv2d's keyword arguments of a DEFORM_CASES case, tensors in `dtype`; about a
    third of the sampling points fall partly or wholly outside the map."""
    n, c, h, w, o, groups, og, use_mask, stride, padding, dilation, layout = DEFORM_CASES[name]
    g = torch.Generator().manual_seed(0)
    out_h = (h + 2 * padding[0] - dilation[0] * 2 - 1) // stride[0] + 1
    out_w = (w + 2 * padding[1] - dilation[1] * 2 - 1) // stride[1] + 1
    x = torch.randn(n, c, h, w * (2 if layout == "strided" else 1), generator=g)
    offset = torch.randn(n, 2 * og * 9, out_h, out_w, generator=g) * 2
    weight = torch.randn(o, c // groups, 3, 3, generator=g) / (c // groups * 3)
    args: dict[str, object] = {
        "input": x.to(dtype),
        "offset": offset.to(dtype),
        "weight": weight.to(dtype),
        "bias": torch.randn(o, generator=g).to(dtype),
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "mask": torch.rand(n, og * 9, out_h, out_w, generator=g).to(dtype) if use_mask else None,
    }
    if layout == "channels_last":
        args["input"] = args["input"].to(memory_format=torch.channels_last)
    elif layout == "strided":  # every other column; offset and weight transposed in memory
        args["input"] = args["input"][..., ::2]
        args["offset"] = args["offset"].transpose(2, 3).contiguous().transpose(2, 3)
        args["weight"] = args["weight"].transpose(0, 1).contiguous().transpose(0, 1)
    return args


_DEFORM_TENSORS = ["input", "offset", "weight", "bias", "mask"]


def _deform_run(
    args: dict[str, object], grad_dtype: torch.dtype
) -> tuple[Tensor, dict[str, Tensor]]:
    """deform_conv2d's output and the gradients of all its tensors for a random grad_output
    (rounded to `grad_dtype`)."""
    leaves = {
        k: args[k].detach().requires_grad_()  # type: ignore[union-attr]
        for k in _DEFORM_TENSORS
        if args[k] is not None
    }
    out = ops.deform_conv2d(**{**args, **leaves})
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    out.backward(grad_out.to(grad_dtype).to(out.dtype))
    return out.detach(), {k: v.grad for k, v in leaves.items()}  # type: ignore[misc]


@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("name", list(DEFORM_CASES))
def test_deform_conv2d_values_and_all_gradients(dtype: torch.dtype, name: str) -> None:
    args = _deform_args(name, dtype)
    out, grads = _deform_run(args, dtype)
    args64 = {k: v.double() if isinstance(v, Tensor) else v for k, v in args.items()}
    expected, expected_grads = _deform_run(args64, dtype)
    assert out.dtype == dtype
    # Sums of C * kh * kw (output, offset and mask gradients) or N * P (weight and bias
    # gradients) terms: the tolerance scales with the magnitude.
    _close(out, expected, TOLERANCE[dtype] * float(expected.abs().max().clamp(min=1)))
    assert set(grads) == set(expected_grads)
    for key, grad in grads.items():
        assert grad.dtype == dtype, key
        assert grad.shape == args[key].shape, key  # type: ignore[union-attr]
        grad64 = expected_grads[key]
        _close(grad, grad64, TOLERANCE[dtype] * float(grad64.abs().max().clamp(min=1)))


@pytest.mark.parametrize("dtype", REDUCED)
def test_deform_conv2d_empty_batch(dtype: torch.dtype) -> None:
    args = _deform_args("v2", dtype)
    for key in ("input", "offset", "mask"):
        args[key] = args[key][:0]  # type: ignore[index]
    out, grads = _deform_run(args, dtype)
    assert out.shape == (0, 4, 7, 9) and out.dtype == dtype
    for key, grad in grads.items():
        assert grad.dtype == dtype and grad.shape == args[key].shape  # type: ignore[union-attr]
        assert not grad.any(), key


@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("use_mask", [True, False])
def test_deform_conv2d_same_bits_for_any_thread_count(dtype: torch.dtype, use_mask: bool) -> None:
    args = _deform_args("large", dtype)
    if not use_mask:
        args["mask"] = None
    out1, grads1 = with_threads(1, lambda: _deform_run(args, dtype))  # type: ignore[misc]
    out2, grads2 = with_threads(2, lambda: _deform_run(args, dtype))  # type: ignore[misc]
    assert_same_bits(out1, out2)
    for key in grads1:
        assert_same_bits(grads1[key], grads2[key])
