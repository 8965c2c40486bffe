"""Tests of `nms` and `batched_nms` against a plain PyTorch reference and torchvision.ops."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import Tensor

from detector.ops import batched_nms, nms
from tests.ops.utils import DEVICES, with_threads

THRESHOLDS = [0.0, 0.3, 0.5, 0.7, 1.0]
SIZES = [0, 1, 2, 7, 64, 65, 300, 1500]


# --------------------------------------------------------------------------- reference (oracle)
def reference_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS in plain PyTorch, torchvision's definition.

    Boxes are visited in stable decreasing score order; each kept box suppresses the boxes whose
    IoU with it, inter / (area_kept + area - inter) rounded in the boxes' dtype, is greater than
    `iou_threshold` compared in float64. Returns the kept indices (int64) in visiting order.
    """
    boxes, scores = boxes.cpu(), scores.cpu()
    order = torch.sort(scores, descending=True, stable=True).indices
    x1, y1, x2, y2 = boxes.unbind(1)  # (N,) each
    area = (x2 - x1) * (y2 - y1)
    suppressed = torch.zeros(boxes.size(0), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = w * h
        iou = inter / (area[i] + area - inter)
        suppressed |= iou.double() > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def reference_batched_nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float
) -> Tensor:
    """Per-category `reference_nms`; kept indices in stable decreasing score order."""
    boxes, scores, idxs = boxes.cpu(), scores.cpu(), idxs.cpu()
    kept = [torch.empty(0, dtype=torch.int64)]
    for category in torch.unique(idxs).tolist():
        members = torch.nonzero(idxs == category).flatten()
        kept.append(members[reference_nms(boxes[members], scores[members], iou_threshold)])
    keep = torch.cat(kept).sort().values
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


# --------------------------------------------------------------------------- inputs
def random_boxes(
    num: int, seed: int = 0, dtype: torch.dtype = torch.float32, grid: float | None = None
) -> tuple[Tensor, Tensor]:
    """Boxes in a 200 x 300 image with many overlaps (a third jittered copies), distinct scores.

    With `grid`, coordinates are multiples of 1 / grid (so coordinate offsets are exact).
    """
    g = torch.Generator().manual_seed(seed)
    center = torch.rand(num, 2, generator=g, dtype=torch.float64) * torch.tensor([300.0, 200.0])
    size = 4 + torch.rand(num, 2, generator=g, dtype=torch.float64) * 60
    copies = torch.rand(num, generator=g) < 0.33
    source = torch.randint(0, max(num, 1), (num,), generator=g)
    jitter = torch.randn(num, 2, generator=g, dtype=torch.float64) * 2
    center = torch.where(copies[:, None], center[source] + jitter, center)
    size = torch.where(copies[:, None], size[source] + jitter, size)
    boxes = torch.cat([center - size / 2, center + size / 2], dim=1)  # (num, 4) xyxy
    if grid is not None:
        boxes = torch.round(boxes * grid) / grid
    scores = torch.randperm(num, generator=g).to(torch.float64) / max(num, 1)
    return boxes.to(dtype), scores.to(dtype)


def degenerate_boxes() -> tuple[Tensor, Tensor]:
    """Zero-area, inverted, identical and touching boxes with distinct scores."""
    boxes = torch.tensor(
        [
            [10.0, 10.0, 20.0, 20.0],
            [10.0, 10.0, 20.0, 20.0],  # identical to the first
            [10.0, 10.0, 20.0, 20.0],  # and again
            [5.0, 5.0, 5.0, 5.0],  # a point
            [5.0, 5.0, 5.0, 5.0],  # the same point (IoU 0 / 0 = NaN: never suppressed)
            [0.0, 0.0, 0.0, 30.0],  # zero width
            [20.0, 10.0, 30.0, 20.0],  # touches the first (IoU 0)
            [12.0, 12.0, 2.0, 2.0],  # inverted
            [11.0, 11.0, 21.0, 21.0],
            [10.0, 10.0, 19.9, 20.0],
        ]
    )
    scores = torch.linspace(1.0, 0.1, boxes.size(0))[torch.tensor([3, 0, 9, 1, 8, 2, 7, 4, 6, 5])]
    return boxes, scores


def assert_equal_indices(actual: Tensor, expected: Tensor) -> None:
    assert actual.dtype == torch.int64
    assert torch.equal(actual.cpu(), expected.cpu()), (actual[:20], expected[:20])


# --------------------------------------------------------------------------- nms
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num", SIZES)
@pytest.mark.parametrize("iou_threshold", THRESHOLDS)
def test_nms_matches_reference_and_torchvision(device: str, num: int, iou_threshold: float):
    boxes, scores = random_boxes(num, seed=num)
    expected = reference_nms(boxes, scores, iou_threshold)
    assert_equal_indices(torchvision.ops.nms(boxes, scores, iou_threshold), expected)
    assert_equal_indices(nms(boxes.to(device), scores.to(device), iou_threshold), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("iou_threshold", [-0.5, *THRESHOLDS, 1.5])
def test_nms_degenerate_boxes(device: str, iou_threshold: float):
    boxes, scores = degenerate_boxes()
    expected = torchvision.ops.nms(boxes, scores, iou_threshold)
    assert_equal_indices(reference_nms(boxes, scores, iou_threshold), expected)
    assert_equal_indices(nms(boxes.to(device), scores.to(device), iou_threshold), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_nms_equal_scores_keep_index_order(device: str):
    # torchvision sorts the scores with a stable sort: ties are visited in index order.
    boxes, _ = random_boxes(2000, seed=3)
    scores = torch.randint(0, 5, (2000,), generator=torch.Generator().manual_seed(3)).float()
    for iou_threshold in (0.3, 0.7):
        expected = torchvision.ops.nms(boxes, scores, iou_threshold)
        assert_equal_indices(reference_nms(boxes, scores, iou_threshold), expected)
        assert_equal_indices(nms(boxes.to(device), scores.to(device), iou_threshold), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("iou_threshold", [0.5, 0.7])
def test_nms_float64(device: str, iou_threshold: float):
    boxes, scores = random_boxes(1000, seed=7, dtype=torch.float64)
    expected = torchvision.ops.nms(boxes, scores, iou_threshold)
    assert_equal_indices(reference_nms(boxes, scores, iou_threshold), expected)
    assert_equal_indices(nms(boxes.to(device), scores.to(device), iou_threshold), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_nms_non_contiguous(device: str):
    boxes, scores = random_boxes(700, seed=11)
    wide = torch.zeros(700, 8, device=device)
    wide[:, ::2] = boxes.to(device)
    strided_boxes = wide[:, ::2]  # (700, 4), stride 2
    strided_scores = torch.stack([scores, scores], dim=1).to(device)[:, 1]  # (700,), stride 2
    assert not strided_boxes.is_contiguous() and not strided_scores.is_contiguous()
    expected = torchvision.ops.nms(boxes, scores, 0.5)
    assert_equal_indices(nms(strided_boxes, strided_scores, 0.5), expected)


def test_nms_rpn_like_large():
    # Proposals of an 800 x 1088 image: many kept boxes, several sweep blocks and parallel steps.
    g = torch.Generator().manual_seed(5)
    center = torch.rand(6000, 2, generator=g) * torch.tensor([1088.0, 800.0])
    size = 16 + torch.rand(6000, 2, generator=g) * 384
    boxes = torch.cat([center - size / 2, center + size / 2], dim=1)
    scores = torch.rand(6000, generator=g)
    expected = torchvision.ops.nms(boxes, scores, 0.7)
    assert_equal_indices(nms(boxes, scores, 0.7), expected)


def test_nms_same_result_for_any_thread_count():
    boxes, scores = random_boxes(3000, seed=13)
    one = with_threads(1, lambda: nms(boxes, scores, 0.5))
    two = with_threads(2, lambda: nms(boxes, scores, 0.5))
    assert torch.equal(one, two)


# --------------------------------------------------------------------------- batched_nms
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num", [0, 1, 5, 300, 1500])  # torchvision: offset trick <= 1000 < loop
@pytest.mark.parametrize("iou_threshold", THRESHOLDS)
def test_batched_nms_matches_reference_and_torchvision(device: str, num: int, iou_threshold: float):
    # Coordinates on a 1/16 px grid keep torchvision's coordinate offsets exact (see boxes.py).
    boxes, scores = random_boxes(num, seed=num + 1, grid=16.0)
    idxs = torch.randint(0, 4, (num,), generator=torch.Generator().manual_seed(num))
    expected = reference_batched_nms(boxes, scores, idxs, iou_threshold)
    assert_equal_indices(torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold), expected)
    actual = batched_nms(boxes.to(device), scores.to(device), idxs.to(device), iou_threshold)
    assert_equal_indices(actual, expected)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8])
def test_batched_nms_idxs_dtypes_and_large_categories(dtype: torch.dtype):
    boxes, scores = random_boxes(400, seed=17)
    idxs = torch.randint(0, 3, (400,), generator=torch.Generator().manual_seed(17))
    expected = reference_batched_nms(boxes, scores, idxs, 0.5)
    assert_equal_indices(batched_nms(boxes, scores, idxs.to(dtype), 0.5), expected)
    if dtype == torch.int64:  # far-apart category ids: no offsets, no precision loss
        assert_equal_indices(batched_nms(boxes, scores, idxs * 10**12 - 7, 0.5), expected)


def test_batched_nms_single_category_is_nms():
    boxes, scores = random_boxes(800, seed=19)
    idxs = torch.full((800,), 3)
    assert_equal_indices(batched_nms(boxes, scores, idxs, 0.5), nms(boxes, scores, 0.5))


# --------------------------------------------------------------------------- operator checks
def test_opcheck():
    boxes, scores = random_boxes(50, seed=23)
    idxs = torch.randint(0, 3, (50,), generator=torch.Generator().manual_seed(23))
    torch.library.opcheck(torch.ops.detector.nms.default, (boxes, scores, 0.5))
    torch.library.opcheck(torch.ops.detector.batched_nms.default, (boxes, scores, idxs, 0.5))


def test_torch_compile_fullgraph():
    def keep_boxes(boxes: Tensor, scores: Tensor, idxs: Tensor) -> tuple[Tensor, Tensor]:
        keep = nms(boxes, scores, 0.5)
        per_class = batched_nms(boxes, scores, idxs, 0.5)
        return boxes[keep], scores[per_class]

    boxes, scores = random_boxes(300, seed=29)
    idxs = torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(29))
    compiled = torch.compile(keep_boxes, fullgraph=True, backend="aot_eager")
    actual_pair, expected_pair = compiled(boxes, scores, idxs), keep_boxes(boxes, scores, idxs)
    for actual, expected in zip(actual_pair, expected_pair, strict=True):
        assert torch.equal(actual, expected)


def test_torch_export():
    class Suppress(torch.nn.Module):
        def forward(self, boxes: Tensor, scores: Tensor) -> Tensor:
            return nms(boxes, scores, 0.7)

    boxes, scores = random_boxes(100, seed=31)
    exported = torch.export.export(Suppress(), (boxes, scores))
    assert torch.equal(exported.module()(boxes, scores), nms(boxes, scores, 0.7))


# --------------------------------------------------------------------------- misuse
@pytest.mark.parametrize(
    "boxes, scores, match",
    [
        (torch.zeros(5, 5), torch.zeros(5), r"nms: `boxes` must be a Tensor\[N, 4\]"),
        (torch.zeros(4), torch.zeros(1), r"nms: `boxes` must be a Tensor\[N, 4\]"),
        (torch.zeros(5, 4), torch.zeros(5, 1), r"nms: `scores` must be a Tensor\[N\]"),
        (torch.zeros(5, 4), torch.zeros(6), r"nms: `boxes` has 5 boxes but `scores` has 6"),
        (torch.zeros(5, 4, dtype=torch.int64), torch.zeros(5), r"nms: `boxes` must be a floating"),
        (torch.zeros(5, 4), torch.zeros(5, dtype=torch.float64), r"nms: `scores` \(torch.float64"),
    ],
)
def test_nms_misuse(boxes: Tensor, scores: Tensor, match: str):
    with pytest.raises((ValueError, TypeError), match=match):
        nms(boxes, scores, 0.5)


def test_compiled_op_misuse_names_op_and_argument():
    with pytest.raises(RuntimeError, match=r"detector::nms: expected `boxes` of shape \(N, 4\)"):
        torch.ops.detector.nms(torch.zeros(5, 3), torch.zeros(5), 0.5)
    with pytest.raises(RuntimeError, match=r"detector::nms: `boxes` has 5 boxes but `scores`"):
        torch.ops.detector.nms(torch.zeros(5, 4), torch.zeros(4), 0.5)
    with pytest.raises(RuntimeError, match=r"detector::batched_nms: `idxs` must be an int64"):
        torch.ops.detector.batched_nms(torch.zeros(5, 4), torch.zeros(5), torch.zeros(5), 0.5)


@pytest.mark.parametrize(
    "idxs, match",
    [
        (torch.zeros(5), r"batched_nms: `idxs` must be an integer tensor"),
        (torch.zeros(5, dtype=torch.bool), r"batched_nms: `idxs` must be an integer tensor"),
        (torch.zeros(4, dtype=torch.int64), r"`idxs` must be a Tensor\[N\] with N = 5"),
        (torch.zeros(5, 1, dtype=torch.int64), r"batched_nms: `idxs` must be a Tensor\[N\]"),
        ([0, 0, 0, 0, 0], r"batched_nms: `idxs` must be a Tensor\[N\] of integers"),
    ],
)
def test_batched_nms_misuse(idxs: Tensor, match: str):
    with pytest.raises((ValueError, TypeError), match=match):
        batched_nms(torch.zeros(5, 4), torch.zeros(5), idxs, 0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs_give_empty_results_as_torchvision(device: str) -> None:
    boxes, scores = torch.empty(0, 4, device=device), torch.empty(0, device=device)
    idxs = torch.empty(0, dtype=torch.int64, device=device)
    for kept in (
        nms(boxes, scores, 0.5),
        batched_nms(boxes, scores, idxs, 0.5),
        batched_nms(boxes, None, None, 0.5),  # torchvision looks at nothing but `boxes` then
        batched_nms(torch.empty(0, 5, device=device), scores[:0], None, 0.5),
    ):
        assert kept.dtype == torch.int64 and kept.shape == (0,) and kept.device == boxes.device
    expected = torchvision.ops.batched_nms(boxes.cpu(), None, None, 0.5)
    assert torch.equal(batched_nms(boxes, None, None, 0.5).cpu(), expected)
    with pytest.raises(TypeError, match="nms: `scores` must be a Tensor"):
        nms(boxes, None, 0.5)  # torchvision fails here too (a RuntimeError from its kernel)
