"""Property-based tests: random shapes, RoI sets (empty, degenerate, outside the map), spatial
scales and sampling ratios for every op, compared in float64 with the pure-PyTorch references
of tests/ops (reused, not duplicated). Bounded: 30 examples per op, no deadline.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from detector import ops
from tests.ops.test_deform_conv2d import reference_deform_conv2d
from tests.ops.test_deform_roi_pool import deform_pool_ref
from tests.ops.test_nms import reference_batched_nms, reference_nms
from tests.ops.test_ps_roi_align import reference_ps_roi_align
from tests.ops.test_ps_roi_pool import reference_ps_roi_pool
from tests.ops.test_roi_align import reference_roi_align
from tests.ops.test_roi_pool import reference_roi_pool
from tests.ops.utils import edge_case_rois, random_rois

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)
TOL = {"rtol": 1e-9, "atol": 1e-9}

scales = st.one_of(st.sampled_from([1.0, 0.5, 0.25, 1 / 16]), st.floats(0.05, 2.0))


@st.composite
def pooling_case(draw: st.DrawFn) -> dict:
    """Features (N, C, H, W) float64 and RoIs Tensor[K, 5]; K may be 0, edge cases optional."""
    batch, height, width = draw(st.integers(1, 2)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    output_size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    scale = draw(scales)
    seed = draw(st.integers(0, 2**16))
    rois = random_rois(draw(st.integers(0, 5)), batch, height, width, scale, torch.float64, seed)
    if draw(st.booleans()):
        edges = edge_case_rois(height, width, scale).to(torch.float64)
        edges[:, 0] = batch - 1
        rois = torch.cat([rois, edges])
    return {
        "batch": batch,
        "size": (height, width),
        "output_size": output_size,
        "scale": scale,
        "seed": seed,
        "rois": rois,
        "sampling_ratio": draw(st.integers(-1, 3)),
        "channels_out": draw(st.integers(1, 3)),
    }


def _features(case: dict, position_sensitive: bool) -> Tensor:
    """(N, C, H, W); C = C_out * ph * pw for the position-sensitive ops."""
    ph, pw = case["output_size"]
    channels = case["channels_out"] * (ph * pw if position_sensitive else 1)
    g = torch.Generator().manual_seed(case["seed"])
    return torch.randn(case["batch"], channels, *case["size"], generator=g, dtype=torch.float64)


def _assert_matches(ours: Tensor, reference_fn, num_rois: int, shape_tail: tuple) -> None:
    assert ours.shape == (num_rois, *shape_tail)
    assert torch.isfinite(ours).all()
    if num_rois:  # the references stack per-RoI outputs
        torch.testing.assert_close(ours, reference_fn(), **TOL)


@SETTINGS
@given(case=pooling_case(), aligned=st.booleans(), mode=st.sampled_from(["avg", "max"]))
def test_roi_align_matches_reference(case, aligned, mode):
    x, rois, size = _features(case, False), case["rois"], case["output_size"]
    args = (size, case["scale"], case["sampling_ratio"], aligned)
    ours = ops.roi_align(x, rois, *args, mode=mode)
    _assert_matches(
        ours, lambda: reference_roi_align(x, rois, *args, mode), len(rois), (x.size(1), *size)
    )


@SETTINGS
@given(case=pooling_case())
def test_roi_pool_matches_reference(case):
    x, rois, size = _features(case, False), case["rois"], case["output_size"]
    ours = ops.roi_pool(x, rois, size, case["scale"])
    _assert_matches(
        ours,
        lambda: reference_roi_pool(x, rois, size, case["scale"]),
        len(rois),
        (x.size(1), *size),
    )


@SETTINGS
@given(case=pooling_case())
def test_ps_roi_pool_matches_reference(case):
    x, rois, size = _features(case, True), case["rois"], case["output_size"]
    ours = ops.ps_roi_pool(x, rois, size, case["scale"])
    tail = (case["channels_out"], *size)
    _assert_matches(
        ours, lambda: reference_ps_roi_pool(x, rois, size, case["scale"]), len(rois), tail
    )


@SETTINGS
@given(case=pooling_case())
def test_ps_roi_align_matches_reference(case):
    x, rois, size = _features(case, True), case["rois"], case["output_size"]
    args = (size, case["scale"], case["sampling_ratio"])
    ours = ops.ps_roi_align(x, rois, *args)
    tail = (case["channels_out"], *size)
    _assert_matches(ours, lambda: reference_ps_roi_align(x, rois, *args), len(rois), tail)


@SETTINGS
@given(
    case=pooling_case(),
    position_sensitive=st.booleans(),
    offset_scale=st.sampled_from([0.0, 0.5, 3.0]),
    modulated=st.booleans(),
    gamma=st.sampled_from([0.1, 1.0]),
)
def test_deform_roi_pool_matches_reference(
    case, position_sensitive, offset_scale, modulated, gamma
):
    x, rois, (ph, pw) = _features(case, position_sensitive), case["rois"], case["output_size"]
    g = torch.Generator().manual_seed(case["seed"] + 1)
    offset = offset_scale * torch.randn(len(rois), 2, ph, pw, generator=g, dtype=torch.float64)
    mask = torch.rand(len(rois), 1, ph, pw, generator=g, dtype=torch.float64) if modulated else None
    op = ops.deform_ps_roi_pool if position_sensitive else ops.deform_roi_pool
    args = ((ph, pw), case["scale"], case["sampling_ratio"], gamma)
    ours = op(x, rois, offset, *args, mask=mask)
    channels = case["channels_out"] if position_sensitive else x.size(1)
    _assert_matches(
        ours,
        lambda: deform_pool_ref(x, rois, offset, *args, mask, position_sensitive),
        len(rois),
        (channels, ph, pw),
    )


@SETTINGS
@given(case=pooling_case(), levels_seed=st.integers(0, 100))
def test_multi_scale_roi_align_equals_roi_align_per_level(case, levels_seed):
    """The fused op is defined as roi_align per level (itself checked against its reference)."""
    x, rois, size = _features(case, False), case["rois"], case["output_size"]
    pyramid = [x, torch.nn.functional.avg_pool2d(x, 2, ceil_mode=True)]
    scales = [case["scale"], case["scale"] / 2]
    g = torch.Generator().manual_seed(levels_seed)
    levels = torch.randint(0, 2, (len(rois),), generator=g)
    args = (size, scales, case["sampling_ratio"], True)
    ours = ops.multi_scale_roi_align(pyramid, rois, levels, *args)
    expected = torch.zeros_like(ours)
    for level in range(2):
        index = levels == level
        expected[index] = ops.roi_align(
            pyramid[level], rois[index], size, scales[level], case["sampling_ratio"], True
        )
    assert ours.shape == (len(rois), x.size(1), *size)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


@SETTINGS
@given(
    batch=st.integers(0, 2),
    channels=st.integers(1, 4),
    height=st.integers(1, 7),
    width=st.integers(1, 7),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    offset_scale=st.sampled_from([0.0, 0.7, 5.0]),
    modulated=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_deform_conv2d_matches_reference(
    batch, channels, height, width, kernel, stride, padding, dilation, offset_scale, modulated, seed
):
    kh, kw = kernel
    out_h = (height + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if out_h <= 0 or out_w <= 0:
        return  # no output pixel: a shape error, covered in tests/ops
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64)
    weight = torch.randn(3, channels, kh, kw, generator=g, dtype=torch.float64)
    bias = torch.randn(3, generator=g, dtype=torch.float64)
    offset = offset_scale * torch.randn(
        batch, 2 * kh * kw, out_h, out_w, generator=g, dtype=torch.float64
    )
    mask = (
        torch.rand(batch, kh * kw, out_h, out_w, generator=g, dtype=torch.float64)
        if modulated
        else None
    )
    args = (bias, stride, padding, dilation)
    ours = ops.deform_conv2d(x, offset, weight, *args, mask=mask)
    assert ours.shape == (batch, 3, out_h, out_w)
    if batch:
        expected = reference_deform_conv2d(x, offset, weight, *args, mask)
        torch.testing.assert_close(ours, expected, **TOL)


@st.composite
def nms_case(draw: st.DrawFn) -> tuple[Tensor, Tensor, Tensor]:
    """Boxes (K, 4) with degenerate ones (zero-area, inverted, duplicates), distinct scores."""
    num = draw(st.integers(0, 40))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    xy = torch.rand(num, 2, generator=g, dtype=torch.float64) * 50
    wh = torch.rand(num, 2, generator=g, dtype=torch.float64) * 20
    if draw(st.booleans()):  # some zero-size and inverted boxes
        wh[: num // 3] *= -torch.randint(0, 2, (num // 3, 1), generator=g).double()
    if draw(st.booleans()) and num > 1:  # exact duplicates
        xy[1::2], wh[1::2] = xy[: num // 2], wh[: num // 2]
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.randperm(num, generator=g).double() / max(num, 1)
    idxs = torch.randint(0, draw(st.integers(1, 4)), (num,), generator=g)
    return boxes, scores, idxs


@SETTINGS
@given(case=nms_case(), iou=st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]))
def test_nms_and_batched_nms_match_reference(case, iou):
    boxes, scores, idxs = case
    assert torch.equal(ops.nms(boxes, scores, iou), reference_nms(boxes, scores, iou))
    assert torch.equal(
        ops.batched_nms(boxes, scores, idxs, iou), reference_batched_nms(boxes, scores, idxs, iou)
    )
