"""Benchmark cases of roi_pool: features 1x256x200x272 (an 800x1088 image at stride 4), 512 RoIs,
7x7 bins, forward and backward, against torchvision.ops.roi_pool on the same inputs.

The RoIs are the roi_align case's (the baseline of docs/benchmarks.md: "same inputs"): boxes
inside the image, sides up to half of it. (An earlier version drew boxes reaching up to 60% past
the image, so that 37% of the bins were empty: less work for the backward's scatter.)"""

from __future__ import annotations

import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision.*)

from benchmarks.cases.roi_align import _rois as roi_align_rois
from benchmarks.timing import Case
from detector.ops.roi_pool import roi_pool  # noqa: F401  (registers autograd and fake kernels)

SCALE = 1 / 4


def cases(device: str) -> list[Case]:
    """Forward and backward of the op itself (the argmax is kept, as autograd does)."""
    torch.manual_seed(0)
    x = torch.randn(1, 256, 200, 272, device=device)
    rois = roi_align_rois(512, device, seed=0)
    ours_out, ours_argmax = torch.ops.detector.roi_pool(x, rois, SCALE, 7, 7)
    tv_out, tv_argmax = torch.ops.torchvision.roi_pool(x, rois, SCALE, 7, 7)
    grad = torch.randn_like(ours_out)
    shape = "1x256x200x272, 512 RoIs, 7x7"
    return [
        Case(
            "roi_pool",
            "fwd",
            shape,
            lambda: torch.ops.detector.roi_pool(x, rois, SCALE, 7, 7),
            lambda: torch.ops.torchvision.roi_pool(x, rois, SCALE, 7, 7),
            goal=0.1,
        ),
        Case(
            "roi_pool",
            "bwd",
            shape,
            lambda: torch.ops.detector._roi_pool_backward(
                grad, rois, ours_argmax, 1, 256, 200, 272
            ),
            lambda: torch.ops.torchvision._roi_pool_backward(
                grad, rois, tv_argmax, SCALE, 7, 7, 1, 256, 200, 272
            ),
            goal=0.1,
        ),
    ]
