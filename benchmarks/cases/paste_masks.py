"""Benchmark cases of Mask R-CNN's mask pasting: our `paste_masks_in_image` (the compiled
`paste_masks` kernel on the CPU) against torchvision's `paste_masks_in_image` (a Python loop of
one F.interpolate per mask), the same probabilities and boxes, probabilities out (no threshold).

Shapes: 100 detections of 28 x 28 masks (Mask R-CNN's inference output) pasted into a 512 x 683
image (train_speed's default) and an 800 x 1088 one; the boxes are random, up to half the image.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste

from benchmarks.timing import Case
from detector.ops import paste_masks_in_image

SIZES = [(512, 683), (800, 1088)]
NUM_MASKS = 100
MASK_SIZE = 28


def _masks_and_boxes(height: int, width: int, device: str) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(height)
    masks = torch.rand(NUM_MASKS, MASK_SIZE, MASK_SIZE, generator=generator)
    scale = torch.tensor([width, height], dtype=torch.float32)
    corner = torch.rand(NUM_MASKS, 2, generator=generator) * scale
    size = torch.rand(NUM_MASKS, 2, generator=generator) * scale * 0.5
    boxes = torch.cat([corner, corner + size], dim=1)
    return masks.to(device), boxes.to(device)


def cases(device: str) -> list[Case]:
    rows = []
    for height, width in SIZES:
        masks, boxes = _masks_and_boxes(height, width, device)
        shape = f"{NUM_MASKS} masks {MASK_SIZE}x{MASK_SIZE} into {height}x{width}"
        rows.append(
            Case(
                "paste_masks",
                "fwd",
                shape,
                lambda m=masks, b=boxes, s=(height, width): paste_masks_in_image(m, b, s, None),
                lambda m=masks, b=boxes, s=(height, width): tv_paste(m[:, None], b, s),
            )
        )
    return rows
