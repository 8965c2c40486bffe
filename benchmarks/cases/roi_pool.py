"""Benchmark cases of roi_pool: features 1x256x200x272 (an 800x1088 image at stride 4), 512 RoIs,
7x7 bins, forward and backward, against torchvision.ops.roi_pool on the same inputs."""

from __future__ import annotations

import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision.*)

from benchmarks.timing import Case
from detector.ops.roi_pool import roi_pool  # noqa: F401  (registers autograd and fake kernels)

SCALE = 1 / 4


def _rois(num: int, height: int, width: int, device: str) -> torch.Tensor:
    """Random boxes of the image (feature size / SCALE), about 10% crossing the border."""
    g = torch.Generator().manual_seed(0)
    img = torch.tensor([width / SCALE, height / SCALE])
    xy = torch.rand(num, 2, generator=g) * img * 1.2 - img * 0.1
    wh = torch.rand(num, 2, generator=g) * img * 0.5 + 1.0
    return torch.cat([torch.zeros(num, 1), xy, xy + wh], dim=1).to(device)


def cases(device: str) -> list[Case]:
    """Forward and backward of the op itself (the argmax is kept, as autograd does)."""
    torch.manual_seed(0)
    x = torch.randn(1, 256, 200, 272, device=device)
    rois = _rois(512, 200, 272, device)
    ours_out, ours_argmax = torch.ops.detector.roi_pool(x, rois, SCALE, 7, 7)
    tv_out, tv_argmax = torch.ops.torchvision.roi_pool(x, rois, SCALE, 7, 7)
    grad = torch.randn_like(ours_out)
    shape = "1x256x200x272, 512 RoIs, 7x7"
    return [
        Case("roi_pool", "fwd", shape,
             lambda: torch.ops.detector.roi_pool(x, rois, SCALE, 7, 7),
             lambda: torch.ops.torchvision.roi_pool(x, rois, SCALE, 7, 7), goal=0.1),
        Case("roi_pool", "bwd", shape,
             lambda: torch.ops.detector._roi_pool_backward(
                 grad, rois, ours_argmax, 1, 256, 200, 272),
             lambda: torch.ops.torchvision._roi_pool_backward(
                 grad, rois, tv_argmax, SCALE, 7, 7, 1, 256, 200, 272),
             goal=0.1),
    ]
