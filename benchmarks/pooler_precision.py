"""The FPN pooler under CPU bfloat16 autocast: the ops' own bfloat16 kernels (what the pooler
runs) against casting the pyramid to float32 first (what it ran before), forward and backward,
interleaved in one run, for RoI Align and RoIPool; prints both medians and the ratio.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/pooler_precision.py --threads 1

Both give the same bits (tests/modeling/roi_heads/test_poolers.py); the question is the time.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from torch import Tensor

from benchmarks.timing import wall_seconds
from detector.config import get_cfg
from detector.modeling.roi_heads.poolers import Pooler, build_pooler
from detector.structures import Boxes

STRIDES = (4, 8, 16, 32)


def random_boxes(n: int, height: int, width: int, g: torch.Generator) -> Boxes:
    """n boxes of 8 to 264 px sides with their corner inside the image."""
    corner = torch.rand(n, 2, generator=g) * torch.tensor([width * 0.8, height * 0.8])
    sides = torch.rand(n, 2, generator=g) * 256 + 8
    return Boxes(torch.cat([corner, corner + sides], dim=1))


def train_step(
    pooler: Pooler, maps: list[Tensor], boxes: list[Boxes], via_float32: bool
) -> Callable[[], None]:
    """Pools under bfloat16 autocast and back-propagates a sum into fresh bfloat16 leaf maps;
    `via_float32` casts the maps to float32 first and the result back (the former rule)."""

    def step() -> None:
        leaves = [m.detach().requires_grad_() for m in maps]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if via_float32:
                pooled = pooler([f.float() for f in leaves], boxes).bfloat16()
            else:
                pooled = pooler(leaves, boxes)
        pooled.float().sum().backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--size", type=int, nargs=2, default=(512, 704), metavar=("H", "W"))
    parser.add_argument("--repeat", type=int, default=10, help="timed rounds after 2 warm-up")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = args.size
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, 256, height // s, width // s, generator=g).bfloat16() for s in STRIDES]
    head = get_cfg().MODEL.ROI_BOX_HEAD
    head.POOLER_SAMPLING_RATIO = 0
    head.POOLER_SCALES = [1.0 / s for s in STRIDES]
    print(f"2 images, 256-channel P2-P5 of {height}x{width} (ROIAlignV2: adaptive sampling)")
    print("| pooler | RoIs | output | float32 path (ms) | bf16 kernels (ms) | ratio |")
    print("|---|---:|---|---:|---:|---:|")
    for pooler_type in ("ROIAlignV2", "ROIPool"):
        head.POOLER_TYPE = pooler_type
        for resolution, per_image in ((7, 512), (14, 64)):
            head.POOLER_RESOLUTION = resolution
            pooler = build_pooler(head)
            boxes = [random_boxes(per_image, height, width, g)] * 2
            old, new = compare(pooler, maps, boxes, args.repeat)
            cells = f"{old:.1f} | {new:.1f} | {new / old:.2f}"
            print(f"| {pooler_type} | {2 * per_image} | {resolution}x{resolution} | {cells} |")


def compare(pooler: Pooler, maps: list[Tensor], boxes: list[Boxes], repeat: int) -> list[float]:
    """Median ms of a step through float32 and with the bfloat16 kernels, interleaved."""
    steps = {k: train_step(pooler, maps, boxes, via_float32=k) for k in (True, False)}
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeat + 2):
        for via_float32, step in steps.items():
            times[via_float32].append(wall_seconds(step) * 1e3)
    return [statistics.median(times[k][2:]) for k in (True, False)]


if __name__ == "__main__":
    main()
