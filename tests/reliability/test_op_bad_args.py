"""Ops fed NaN/infinite boxes, batch indices out of range or an absurd spatial_scale raise an
error naming the op and the argument; they never read out of bounds or return silent NaNs.

Shape, dtype and device misuse is covered in tests/ops (test_*_misuse, test_errors_name_*).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from detector import ops
from tests.ops.utils import DEVICES

NAN, INF = float("nan"), float("inf")
FEATURES = torch.rand(2, 8, 6, 7)  # (N, C, H, W); C = 8 = 2 * 2 * 2 for the PS ops


def _roi_ops() -> dict[str, Callable[[Tensor, Tensor, float], Tensor]]:
    """op name -> f(input, rois, spatial_scale) with a (2, 2) output."""
    levels = lambda rois: torch.zeros(rois.size(0), dtype=torch.int64)  # noqa: E731
    return {
        "roi_align": lambda x, r, s: ops.roi_align(x, r, 2, s, 2),
        "roi_align_max": lambda x, r, s: ops.roi_align(x, r, 2, s, 2, mode="max"),
        "roi_pool": lambda x, r, s: ops.roi_pool(x, r, 2, s),
        "ps_roi_align": lambda x, r, s: ops.ps_roi_align(x, r, 2, s, 2),
        "ps_roi_pool": lambda x, r, s: ops.ps_roi_pool(x, r, 2, s),
        "deform_roi_pool": lambda x, r, s: ops.deform_roi_pool(x, r, None, 2, s, 2),
        "deform_ps_roi_pool": lambda x, r, s: ops.deform_ps_roi_pool(x, r, None, 2, s, 2),
        "multi_scale_roi_align": lambda x, r, s: ops.multi_scale_roi_align(
            [x, x[:, :, :3, :3]], r, levels(r), 2, [s, 0.5], 2
        ),
    }


ROI_OPS = _roi_ops()


def _op_name(key: str, device: str = "cpu") -> str:
    """The op named in the error (on CUDA, multi_scale_roi_align runs roi_align per level)."""
    if key == "roi_align_max" or (key == "multi_scale_roi_align" and device == "cuda"):
        return "roi_align"
    return key


@pytest.mark.parametrize("key", list(ROI_OPS))
@pytest.mark.parametrize(
    "bad_roi", [[0, 1, NAN, 3, 4], [0, 1, 2, INF, 4], [0, -INF, 2, 3, 4], [NAN, 1, 2, 3, 4]]
)
@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_rois_name_the_op(key, bad_roi, device):
    rois = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0], bad_roi], device=device)
    name = _op_name(key, device)
    with pytest.raises(RuntimeError, match=rf"{name}: `rois` contains NaN or infinite"):
        ROI_OPS[key](FEATURES.to(device), rois, 1.0)


@pytest.mark.parametrize("key", list(ROI_OPS))
@pytest.mark.parametrize("batch_index", [2, 100, -1])
@pytest.mark.parametrize("device", DEVICES)
def test_batch_index_out_of_range_names_the_op(key, batch_index, device):
    rois = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0], [batch_index, 1.0, 1.0, 3.0, 3.0]], device=device)
    name = _op_name(key, device)
    with pytest.raises(RuntimeError, match=rf"{name}: batch index .* out of range \[0, 2\)"):
        ROI_OPS[key](FEATURES.to(device), rois, 1.0)


@pytest.mark.parametrize("key", list(ROI_OPS))
@pytest.mark.parametrize("scale", [0.0, -0.25, NAN, INF, -INF])
def test_absurd_spatial_scale_names_the_op_and_argument(key, scale):
    rois = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0]])
    argument = "spatial_scales\\[0\\]" if key == "multi_scale_roi_align" else "spatial_scale"
    with pytest.raises(ValueError, match=rf"{_op_name(key)}: `{argument}` must be a finite number"):
        ROI_OPS[key](FEATURES, rois, scale)


@pytest.mark.parametrize("key", list(ROI_OPS))
def test_rois_far_outside_give_finite_output(key):
    """Huge but finite boxes are legal: the kernels clip, reading nothing out of bounds."""
    rois = torch.tensor([[1, -1e30, -1e30, 1e30, 1e30], [0, 1e6, 1e6, 2e6, 2e6]])
    out = ROI_OPS[key](FEATURES, rois, 1.0)
    assert out.shape[0] == 2 and torch.isfinite(out).all()


def test_multi_scale_level_out_of_range_names_the_argument():
    rois = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0]])
    with pytest.raises(ValueError, match=r"multi_scale_roi_align: `levels` must lie in \[0, 2\)"):
        ops.multi_scale_roi_align([FEATURES, FEATURES], rois, torch.tensor([2]), 2, [1.0, 0.5])


BOXES = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
SCORES = torch.tensor([0.9, 0.8, 0.7])


def _nms(name: str, boxes: Tensor, scores: Tensor, iou: float = 0.5) -> Tensor:
    if name == "nms":
        return ops.nms(boxes, scores, iou)
    return ops.batched_nms(boxes, scores, torch.tensor([0, 0, 1]), iou)


@pytest.mark.parametrize("name", ["nms", "batched_nms"])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_nms_non_finite_boxes_name_the_op_and_row(name, bad):
    boxes = BOXES.clone()
    boxes[1, 2] = bad
    with pytest.raises(ValueError, match=rf"{name}: `boxes` contains NaN or infinite .*\[1\]"):
        _nms(name, boxes, SCORES)


@pytest.mark.parametrize("name", ["nms", "batched_nms"])
def test_nms_nan_score_and_threshold_name_the_argument(name):
    with pytest.raises(ValueError, match=rf"{name}: `scores` contains NaN .*\[2\]"):
        _nms(name, BOXES, torch.tensor([0.9, 0.8, NAN]))
    with pytest.raises(ValueError, match=rf"{name}: `iou_threshold` must be a number"):
        _nms(name, BOXES, SCORES, NAN)


@pytest.mark.parametrize("name", ["nms", "batched_nms"])
def test_nms_infinite_scores_are_legal(name):
    """+-inf scores sort normally (a masked-out score is often -inf)."""
    keep = _nms(name, BOXES, torch.tensor([-INF, INF, 0.5]))
    assert keep.tolist() == [1, 2]


def test_nms_checks_stay_out_of_a_fullgraph_compile():
    compiled = torch.compile(ops.nms, fullgraph=True, backend="eager")
    assert compiled(BOXES, SCORES, 0.5).tolist() == [0, 2]


@pytest.mark.parametrize("bad", [NAN, INF, -INF, 1e30])
def test_deform_conv2d_non_finite_offsets_do_not_crash(bad):
    """A NaN offset propagates NaN to the outputs it touches (as in torchvision); an infinite or
    huge offset samples outside the map, which reads as zero. Nothing is read out of bounds."""
    x = torch.rand(1, 2, 5, 5)
    weight = torch.rand(3, 2, 3, 3)
    offset = torch.zeros(1, 18, 5, 5)
    offset[0, :, 2, 2] = bad  # every tap of output pixel (2, 2)
    out = ops.deform_conv2d(x, offset, weight, padding=1)
    assert out.shape == (1, 3, 5, 5)
    reference = torch.nn.functional.conv2d(x, weight, padding=1)
    untouched = torch.ones(5, 5, dtype=torch.bool)
    untouched[2, 2] = False
    torch.testing.assert_close(out[0][:, untouched], reference[0][:, untouched])
    if bad != bad:  # NaN
        assert torch.isnan(out[0, :, 2, 2]).all()
    else:
        assert torch.equal(out[0, :, 2, 2], torch.zeros(3))


@pytest.mark.parametrize("name", ["deform_roi_pool", "deform_ps_roi_pool"])
def test_deform_roi_pool_non_finite_offsets_do_not_crash(name):
    rois = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0], [1, 1.0, 1.0, 5.0, 5.0]])
    offset = torch.zeros(2, 2, 2, 2)
    offset[0] = NAN
    offset[1] = INF
    out = getattr(ops, name)(FEATURES, rois, offset, 2, 1.0, 2)
    assert out.shape[0] == 2
    assert torch.isnan(out[0]).all()  # NaN propagates, visibly
    assert torch.isfinite(out[1]).all()  # inf moves the samples off the map: zeros
