"""Non-maximum suppression: `nms` and `batched_nms`, with torchvision.ops' signatures and results.

Both are compiled operators (`torch.ops.detector.nms`, `torch.ops.detector.batched_nms`; schemas
in ops/nms.cpp). Semantics, exactly those of torchvision.ops:

- the IoU of two xyxy boxes has no "+1": inter / (area_a + area_b - inter), area = (x2-x1)*(y2-y1);
- boxes are visited in decreasing score order (a stable sort: equal scores keep index order), and
  a box is suppressed when its IoU with an already kept box is greater than `iou_threshold`;
- the result holds the kept indices (int64) in that order.

`batched_nms` is a native per-category NMS (one sweep per category inside the kernel), not the
coordinate-offset trick. The offset trick adds `idx * (max_coordinate + 1)` to the boxes, which
rounds float32 coordinates once the offsets grow (errors up to 1.2e-4 px at offsets near 2000,
0.03 px near 1e6), so its IoUs, and in borderline cases its result, differ from a per-category
NMS; the native op computes every IoU from the original coordinates, needs no `torch.unique`
loop, and is one operator for torch.compile and export. torchvision itself uses the offset trick
for small inputs (N <= 1000 on the CPU) and a per-category loop above; both agree with this op
whenever the offsets do not change an IoU's comparison with the threshold (for instance for
coordinates on a 1/16 px grid). One difference in order: for equal scores in different
categories torchvision's per-category path re-sorts the kept boxes with an unstable sort, while
this op keeps index order.

Both outputs have a data-dependent length: the fake kernels give them an unbacked size
(`ctx.new_dynamic_size()`), so torch.compile(fullgraph=True) and torch.export trace them.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor

from detector.ops._library import register_fake, torch_check
from detector.ops._utils import check_device, check_same_device, shape_str

__all__ = ["batched_nms", "nms"]


def _check_boxes_and_scores(op: str, boxes: Tensor, scores: Tensor) -> None:
    """Checks `boxes` (N, 4) floating point and `scores` (N,) of the same dtype and device."""
    if not isinstance(boxes, Tensor):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"{op}: `boxes` must be a Tensor[N, 4], got {type(boxes).__name__}")
    if not isinstance(scores, Tensor):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"{op}: `scores` must be a Tensor[N], got {type(scores).__name__}")
    if boxes.dim() != 2 or boxes.size(1) != 4:
        raise ValueError(
            f"{op}: `boxes` must be a Tensor[N, 4] (x1, y1, x2, y2), got shape {shape_str(boxes)}"
        )
    if scores.dim() != 1:
        raise ValueError(f"{op}: `scores` must be a Tensor[N], got shape {shape_str(scores)}")
    if boxes.size(0) != scores.size(0):
        raise ValueError(
            f"{op}: `boxes` has {boxes.size(0)} boxes but `scores` has {scores.size(0)} elements; "
            "pass one score per box"
        )
    if not boxes.is_floating_point():
        raise TypeError(f"{op}: `boxes` must be a floating point tensor, got {boxes.dtype}")
    if scores.dtype != boxes.dtype:
        raise TypeError(
            f"{op}: `scores` ({scores.dtype}) must have the dtype of `boxes` ({boxes.dtype})"
        )
    check_same_device(op, "scores", scores, boxes, "boxes")
    check_device(op, boxes)


def _check_values(op: str, boxes: Tensor, scores: Tensor, iou_threshold: float) -> float:
    """Rejects NaN/inf boxes, NaN scores and a NaN threshold (the IoU tests would silently fail).

    Skipped while torch.compile traces (a data-dependent branch would break the graph).
    """
    threshold = float(iou_threshold)
    if math.isnan(threshold):
        raise ValueError(f"{op}: `iou_threshold` must be a number in [0, 1], got {iou_threshold}")
    if torch.compiler.is_compiling() or boxes.numel() == 0:
        return threshold
    if not bool(torch.isfinite(boxes).all()):
        bad = _first_true((~torch.isfinite(boxes)).any(dim=1))
        raise ValueError(f"{op}: `boxes` contains NaN or infinite values (first bad rows: {bad})")
    if bool(torch.isnan(scores).any()):
        bad_scores = _first_true(torch.isnan(scores))
        raise ValueError(f"{op}: `scores` contains NaN values (first bad indices: {bad_scores})")
    return threshold


def _first_true(mask: Tensor) -> list[int]:
    """The indices of the first 5 True elements of a (N,) bool mask, for error messages."""
    # TorchScript types `tolist()` from the annotation.
    indices: list[int] = mask.nonzero().flatten()[:5].tolist()  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    return indices


def _check_idxs(op: str, boxes: Tensor, idxs: Tensor) -> None:
    """Checks the category indices `idxs` (N,) of an integer dtype on the device of `boxes`."""
    if not isinstance(idxs, Tensor):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"{op}: `idxs` must be a Tensor[N] of integers, got {type(idxs).__name__}")
    if idxs.dim() != 1 or idxs.size(0) != boxes.size(0):
        raise ValueError(
            f"{op}: `idxs` must be a Tensor[N] with N = {boxes.size(0)} (one category per box), "
            f"got shape {shape_str(idxs)}"
        )
    if idxs.is_floating_point() or idxs.is_complex() or idxs.dtype == torch.bool:
        raise TypeError(f"{op}: `idxs` must be an integer tensor, got {idxs.dtype}")
    check_same_device(op, "idxs", idxs, boxes, "boxes")


@torch.fx.wrap
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression (torchvision.ops.nms).

    Args:
        boxes: Tensor[N, 4] boxes (x1, y1, x2, y2), float32 or float64, or float16/bfloat16 (IoUs
            computed in float32 from their values).
        scores: Tensor[N] scores, same dtype and device as `boxes`.
        iou_threshold: boxes with IoU > iou_threshold with a kept box of higher score are dropped.

    Returns:
        Tensor[K] int64 indices of the kept boxes, in decreasing score order.
    """
    if not torch.jit.is_scripting():  # pyright: ignore[reportPrivateImportUsage]
        # quint8, as torchvision's qnms
        if isinstance(boxes, Tensor) and boxes.is_quantized:  # pyright: ignore[reportUnnecessaryIsInstance]
            return nms(boxes.dequantize(), scores.dequantize(), iou_threshold)
    _check_boxes_and_scores("nms", boxes, scores)
    threshold = _check_values("nms", boxes, scores, iou_threshold)
    return torch.ops.detector.nms(boxes, scores, threshold)


@torch.fx.wrap
def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Non-maximum suppression per category (torchvision.ops.batched_nms).

    Boxes of different categories never suppress each other. See the module docstring for how
    this differs from torchvision's coordinate-offset trick.

    Args:
        boxes: Tensor[N, 4] boxes (x1, y1, x2, y2), of any dtype nms takes (quint8: suppressed
            on the dequantized values).
        scores: Tensor[N] scores, same dtype and device as `boxes`.
        idxs: Tensor[N] integer category (or image) index of each box.
        iou_threshold: IoU above which a box is dropped by a kept box of its category.

    Returns:
        Tensor[K] int64 indices of the kept boxes, in decreasing score order. An empty `boxes`
        gives an empty result whatever the other arguments are (None included), as in
        torchvision.
    """
    # Not while compiling or exporting: there the box count may be data-dependent (unbacked),
    # and the op itself returns an empty result for empty (well-formed) inputs.
    if not torch.compiler.is_compiling() and isinstance(boxes, Tensor) and boxes.numel() == 0:  # pyright: ignore[reportUnnecessaryIsInstance]
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if not torch.jit.is_scripting():  # pyright: ignore[reportPrivateImportUsage]
        # quint8 as nms (torchvision's batched_nms fails on quantized boxes)
        if isinstance(boxes, Tensor) and boxes.is_quantized:  # pyright: ignore[reportUnnecessaryIsInstance]
            return batched_nms(boxes.dequantize(), scores.dequantize(), idxs, iou_threshold)
    _check_boxes_and_scores("batched_nms", boxes, scores)
    _check_idxs("batched_nms", boxes, idxs)
    threshold = _check_values("batched_nms", boxes, scores, iou_threshold)
    return torch.ops.detector.batched_nms(boxes, scores, idxs.to(torch.int64), threshold)


def _fake_kept_indices(boxes: Tensor) -> Tensor:
    """An int64 Tensor[K] on `boxes`' device with an unbacked size 0 <= K (fake kernels)."""
    # get_ctx() -> FakeImplCtx, whose new_dynamic_size() -> SymInt (pyright cannot resolve the
    # forward reference "torch._library.fake_impl.FakeImplCtx")
    num_kept = cast(torch.SymInt, torch.library.get_ctx().new_dynamic_size())  # pyright: ignore[reportUnknownMemberType]
    return boxes.new_empty((num_kept,), dtype=torch.int64)


@register_fake("detector::nms")
def _nms_fake(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    torch_check(boxes.dim() == 2 and boxes.size(1) == 4, lambda: "nms: `boxes` must be (N, 4)")
    torch_check(scores.dim() == 1, lambda: "nms: `scores` must be (N,)")
    torch_check(boxes.size(0) == scores.size(0), lambda: "nms: `boxes`/`scores` lengths differ")
    return _fake_kept_indices(boxes)


@register_fake("detector::batched_nms")
def _batched_nms_fake(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    torch_check(
        boxes.dim() == 2 and boxes.size(1) == 4, lambda: "batched_nms: `boxes` must be (N, 4)"
    )
    torch_check(scores.dim() == 1, lambda: "batched_nms: `scores` must be (N,)")
    torch_check(idxs.dim() == 1, lambda: "batched_nms: `idxs` must be (N,)")
    torch_check(
        boxes.size(0) == scores.size(0) and boxes.size(0) == idxs.size(0),
        lambda: "batched_nms: `boxes`, `scores` and `idxs` lengths differ",
    )
    torch_check(idxs.dtype == torch.int64, lambda: "batched_nms: `idxs` must be int64")
    return _fake_kept_indices(boxes)
