"""float16 and bfloat16 rows: our native CPU kernels (roi_align avg/max, multi-level roi_align,
nms) at each dtype against torchvision at the same dtype where torchvision runs it, else against
our float32 kernel on the same values (the goal there: not slower than float32).

Shapes: RoI Align on 1x256x200x272 with 512 RoIs, 7x7, sampling 2, aligned (as roi_align.py);
nms on 12,000 RPN-like boxes at IoU 0.7 (as nms.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision

from benchmarks.cases.nms import rpn_like_boxes
from benchmarks.cases.roi_align import _backward_timer, _rois
from benchmarks.timing import Case
from detector.ops import nms, roi_align

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


def cases(device: str) -> list[Case]:
    """The float16 and bfloat16 rows on `device`."""
    rows: list[Case] = []
    for name, dtype in DTYPES.items():
        rows += _roi_align_cases(device, name, dtype) + [_nms_case(device, name, dtype)]
    return rows
