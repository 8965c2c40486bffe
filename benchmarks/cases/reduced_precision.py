"""float16 and bfloat16 rows: every op at each dtype against torchvision at the same dtype where
torchvision runs it, else against our float32 kernel on the same values (the goal there: not
slower than float32).

Shapes: RoI Align on 1x256x200x272 with 512 RoIs, 7x7, sampling 2, aligned (as roi_align.py);
nms on 12,000 RPN-like boxes at IoU 0.7 (as nms.py); roi_pool, ps_roi_pool / ps_roi_align,
deform_conv2d (v2) and deform_roi_pool as in roi_pool.py, ps_roi.py, deform_conv.py and
deform_roi_pool.py.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import Tensor

from benchmarks.cases import deform_roi_pool as droi_cases
from benchmarks.cases import ps_roi as ps_cases
from benchmarks.cases.nms import rpn_like_boxes
from benchmarks.cases.roi_align import _backward_timer, _rois
from benchmarks.timing import Case
from detector.ops import (
    deform_conv2d,
    deform_roi_pool,
    nms,
    ps_roi_align,
    ps_roi_pool,
    roi_align,
    roi_pool,
)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
ALIGN_SHAPE = "1x256x200x272, 512 RoIs, 7x7, s2, aligned"


def _peer(
    name: str, theirs: Callable[[], object], ours_float32: Callable[[], object]
) -> tuple[Callable[[], object], str]:
    """torchvision's call when it runs at this dtype, else our float32 call."""
    try:
        theirs()
    except (RuntimeError, NotImplementedError):
        return ours_float32, "ours float32"
    return theirs, f"torchvision {name}"


def _roi_align_cases(device: str, name: str, dtype: torch.dtype) -> list[Case]:
    torch.manual_seed(0)
    x32 = torch.randn(1, 256, 200, 272, device=device)
    x = x32.to(dtype)
    rois32 = _rois(512, device, seed=0)
    rois = rois32.to(dtype)
    args = (7, 0.25, 2, True)
    avg_peer, avg_peer_name = _peer(
        name,
        lambda: torchvision.ops.roi_align(x, rois, *args),
        lambda: roi_align(x32, rois32, *args),
    )
    cases = [
        Case("roi_align", "fwd", ALIGN_SHAPE, lambda: roi_align(x, rois, *args), avg_peer,
             dtype=name, peer_name=avg_peer_name),
        # torchvision has no max mode: the peer is our float32 kernel
        Case("roi_align", "fwd", ALIGN_SHAPE + ", mode=max",
             lambda: roi_align(x, rois, *args, "max"),
             lambda: roi_align(x32, rois32, *args, "max"), dtype=name, peer_name="ours float32"),
    ]  # fmt: skip
    x_req, x32_req = x.detach().requires_grad_(), x32.detach().requires_grad_()
    cases.append(
        Case("roi_align", "bwd", ALIGN_SHAPE,
             _backward_timer(roi_align(x_req, rois, *args), x_req),
             _backward_timer(roi_align(x32_req, rois32, *args), x32_req),
             dtype=name, peer_name="ours float32")
    )  # fmt: skip
    return cases


def _nms_case(device: str, name: str, dtype: torch.dtype) -> Case:
    boxes32, scores32 = rpn_like_boxes(12000, device)
    boxes, scores = boxes32.to(dtype), scores32.to(dtype)
    peer, peer_name = _peer(
        name,
        lambda: torchvision.ops.nms(boxes, scores, 0.7),
        lambda: nms(boxes32, scores32, 0.7),
    )
    return Case("nms", "fwd", "12000 RPN-like boxes, IoU 0.7", lambda: nms(boxes, scores, 0.7),
                peer, dtype=name, peer_name=peer_name)  # fmt: skip


OtherOp = tuple[str, Callable[..., Tensor], Callable[..., Tensor] | None, list[Tensor]]


def _other_ops(device: str) -> dict[str, OtherOp]:
    """name -> (shape, ours(*tensors), torchvision's(*tensors) or None, float32 tensors); the
    first tensor is the one whose gradient the backward row times."""
    g = torch.Generator().manual_seed(0)
    ps_x, ps_rois = ps_cases._inputs(device)
    bins, ps_scale = ps_cases._BINS, 1.0 / ps_cases._STRIDE
    dc = [
        torch.randn(1, 64, 100, 100, generator=g),
        torch.randn(1, 18, 100, 100, generator=g) * 2,
        torch.randn(64, 64, 3, 3, generator=g) * 0.05,
        torch.randn(64, generator=g),
        torch.rand(1, 9, 100, 100, generator=g),
    ]
    x = torch.randn(1, 256, 200, 272, generator=g)
    dr_offset = 0.1 * torch.randn(droi_cases.NUM_ROIS, 2, 7, 7, generator=g)
    dr_rois = droi_cases._rois(droi_cases.NUM_ROIS, device)
    tv = torchvision.ops
    return {
        "roi_pool": ("1x256x200x272, 512 RoIs, 7x7", lambda x, r: roi_pool(x, r, 7, 0.25),
                     lambda x, r: tv.roi_pool(x, r, 7, 0.25), [x, _rois(512, device, seed=0)]),
        "ps_roi_pool": (ps_cases._SHAPE, lambda x, r: ps_roi_pool(x, r, bins, ps_scale),
                        lambda x, r: tv.ps_roi_pool(x, r, bins, ps_scale), [ps_x, ps_rois]),
        "ps_roi_align": (ps_cases._SHAPE + ", s2",
                         lambda x, r: ps_roi_align(x, r, bins, ps_scale, 2),
                         lambda x, r: tv.ps_roi_align(x, r, bins, ps_scale, 2), [ps_x, ps_rois]),
        "deform_conv2d": ("1x64x100x100 k3 p1 O64 v2 (mask)",
                          lambda x, o, w, b, m: deform_conv2d(x, o, w, b, padding=1, mask=m),
                          lambda x, o, w, b, m: tv.deform_conv2d(x, o, w, b, padding=1, mask=m),
                          dc),
        "deform_roi_pool": ("1x256x200x272, 512 RoIs, 7x7, s2",
                            lambda x, r, o: deform_roi_pool(x, r, o, 7, 0.25, 2, 0.1), None,
                            [x, dr_rois, dr_offset]),
    }  # fmt: skip


def _backward_of(fn: Callable[..., Tensor], tensors: list[Tensor]) -> Callable[[], object]:
    """Times the backward of fn(*tensors) to its first tensor."""
    x = tensors[0].detach().requires_grad_()
    return _backward_timer(fn(x, *tensors[1:]), x)


def _other_cases(device: str, name: str, dtype: torch.dtype) -> list[Case]:
    """Forward and backward of each other op at `dtype` against torchvision at `dtype` where its
    CPU kernel takes it, else against our op in float32."""
    rows: list[Case] = []
    for op, (shape, fn, theirs, tensors32) in _other_ops(device).items():
        tensors = [t.to(device, dtype) for t in tensors32]
        tensors32 = [t.to(device) for t in tensors32]
        peer, peer_name = _peer(
            name,
            (lambda f=theirs, t=tensors: f(*t)) if theirs else _unsupported,
            lambda f=fn, t=tensors32: f(*t),
        )
        on_peer_side = (theirs, tensors) if peer_name.startswith("torchvision") else (fn, tensors32)
        rows.append(Case(op, "fwd", shape, lambda f=fn, t=tensors: f(*t), peer, dtype=name,
                         peer_name=peer_name))  # fmt: skip
        rows.append(Case(op, "bwd", shape, _backward_of(fn, tensors),
                         _backward_of(*on_peer_side), dtype=name, peer_name=peer_name))  # fmt: skip
    return rows


def _unsupported() -> object:
    raise NotImplementedError


def cases(device: str) -> list[Case]:
    """The float16 and bfloat16 rows on `device`."""
    rows: list[Case] = []
    for name, dtype in DTYPES.items():
        rows += _roi_align_cases(device, name, dtype) + [_nms_case(device, name, dtype)]
        rows += _other_cases(device, name, dtype)
    return rows
