"""Quantized (quint8) roi_align and nms on the CPU, against torchvision's qroi_align and qnms."""

from __future__ import annotations

import pytest
import torch
import torchvision

from detector import ops

pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor.*deprecated:UserWarning")

FEATURE_SCALE, FEATURE_ZERO_POINT = 0.01, 3


def _quantized_inputs(batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """quint8 features (batch, 8, 10, 10) and quint8 RoIs Tensor[5, 5] (image 0 and, if any, 1)."""
    x = torch.rand(batch, 8, 10, 10, generator=torch.Generator().manual_seed(0))
    rois = torch.tensor(
        [[0, 1.0, 1.0, 6.0, 7.0], [0, 0.0, 2.0, 9.0, 9.0], [0, 2.5, 3.0, 8.0, 5.0],
         [batch - 1, 4.0, 0.5, 9.5, 9.0], [0, 3.0, 3.0, 3.0, 3.0]]
    )  # fmt: skip
    qx = torch.quantize_per_tensor(x, FEATURE_SCALE, FEATURE_ZERO_POINT, torch.quint8)
    return qx, torch.quantize_per_tensor(rois, 0.05, 0, torch.quint8)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_roi_align_matches_torchvision(aligned: bool, sampling_ratio: int) -> None:
    qx, qrois = _quantized_inputs()
    ours = ops.roi_align(qx, qrois, 3, 0.5, sampling_ratio, aligned)
    theirs = torchvision.ops.roi_align(qx, qrois, 3, 0.5, sampling_ratio, aligned)
    assert ours.dtype == torch.quint8
    assert (ours.q_scale(), ours.q_zero_point()) == (FEATURE_SCALE, FEATURE_ZERO_POINT)
    # torchvision rounds its float sums in another order: at most one quantization step apart
    difference = (ours.int_repr().int() - theirs.int_repr().int()).abs()
    assert int(difference.max()) <= 1
    expected = ops.roi_align(qx.dequantize(), qrois.dequantize(), 3, 0.5, sampling_ratio, aligned)
    expected_q = torch.quantize_per_tensor(
        expected, FEATURE_SCALE, FEATURE_ZERO_POINT, torch.quint8
    )
    assert torch.equal(ours.int_repr(), expected_q.int_repr())


def test_roi_align_batches_and_lists_and_max_mode() -> None:
    """Beyond torchvision (one image per call there): batches, lists of boxes, mode='max'."""
    qx, qrois = _quantized_inputs(batch=2)
    for mode in ("avg", "max"):
        ours = ops.roi_align(qx, qrois, 2, 0.5, 2, True, mode)
        expected = ops.roi_align(qx.dequantize(), qrois.dequantize(), 2, 0.5, 2, True, mode)
        assert torch.equal(ours.dequantize(), torch.quantize_per_tensor(
            expected, FEATURE_SCALE, FEATURE_ZERO_POINT, torch.quint8).dequantize())  # fmt: skip
    boxes = [qrois[:2, 1:], qrois[2:, 1:]]  # image 0 and image 1 as quantized Tensor[K_i, 4]
    from_list = ops.roi_align(qx, boxes, 2, 0.5, 2, True)
    from_tensor = ops.roi_align(qx, torch.quantize_per_tensor(
        torch.cat([torch.tensor([[0.0]] * 2 + [[1.0]] * 3), qrois.dequantize()[:, 1:]], dim=1),
        0.05, 0, torch.quint8), 2, 0.5, 2, True)  # fmt: skip
    assert torch.equal(from_list.int_repr(), from_tensor.int_repr())
    with pytest.raises(ValueError, match="roi_align: `input` is quantized, so `boxes` must be"):
        ops.roi_align(qx, [b.dequantize() for b in boxes], 2)


def test_nms_matches_torchvision() -> None:
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(200, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + torch.rand(200, 2, generator=g) * 30 + 2], dim=1)
    scores = torch.randperm(200, generator=g).float() / 200  # distinct scores: one order
    qboxes = torch.quantize_per_tensor(boxes, 0.5, 0, torch.quint8)
    qscores = torch.quantize_per_tensor(scores, 1 / 200, 0, torch.quint8)
    for iou in (0.3, 0.5, 0.7):
        assert torch.equal(ops.nms(qboxes, qscores, iou), torchvision.ops.nms(qboxes, qscores, iou))


def test_batched_nms_is_the_float_op_on_dequantized_values() -> None:
    """torchvision's batched_nms fails on quantized boxes; ours suppresses per category on the
    dequantized values, as its nms does."""
    g = torch.Generator().manual_seed(2)
    xy = torch.rand(300, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + torch.rand(300, 2, generator=g) * 30 + 2], dim=1)
    qboxes = torch.quantize_per_tensor(boxes, 0.5, 0, torch.quint8)
    qscores = torch.quantize_per_tensor(torch.rand(300, generator=g), 1 / 250, 0, torch.quint8)
    idxs = torch.randint(0, 4, (300,), generator=g)
    for iou in (0.3, 0.5, 0.7):
        expected = ops.batched_nms(qboxes.dequantize(), qscores.dequantize(), idxs, iou)
        assert expected.numel() > 4 * 4  # several kept per category
        assert torch.equal(ops.batched_nms(qboxes, qscores, idxs, iou), expected)
