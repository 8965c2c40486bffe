"""Host memory of a COCO evaluation over thousands of images: everything after the network, as
tools/test.py runs it (detector.evaluation.inference_on_dataset -> detector_postprocess
-> COCOEvaluator, bbox and segm), on a generated COCO annotation file.

The network is replaced by a stub that returns, per image, `--dets` detections with 28x28 mask
probabilities (smooth elliptic blobs, like a trained mask head's), so that thousands of images
take minutes, not hours; the stub keeps nothing. Every image's masks are pasted at the original
size (`--height` x `--width`) and cut at 0.5, exactly as for a real model, and the evaluator must
turn them into RLE as they come: kept as pixels they would need dets x height x width bytes per
image (30 MB at the defaults, 92 GB for 3,000 images).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/eval_memory.py --images 3000

Prints the resident set size (RSS) every `--every` images, the bytes of RLE kept, and RSS and
time of the final COCOeval; nothing is asserted (see docs/reliability.md, "Long runs").
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detector.evaluation import COCOEvaluator, inference_on_dataset
from detector.structures import Boxes, Instances

NUM_CATEGORIES = 80
MASK_SIDE = 28


def _status_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _random_boxes(n: int, height: int, width: int, generator: torch.Generator) -> Tensor:
    """(n, 4) xyxy boxes of 5..50% of the image side, inside the image."""
    size = torch.rand(n, 2, generator=generator) * 0.45 + 0.05  # (n, [w, h]) fractions
    corner = torch.rand(n, 2, generator=generator) * (1 - size)
    scale = torch.tensor([width, height], dtype=torch.float32)
    return torch.cat([corner * scale, (corner + size) * scale], dim=1)


def write_annotations(path: Path, args: argparse.Namespace) -> None:
    """A COCO instances file: `--images` images, `--gt` boxes each (rectangle polygons)."""
    generator = torch.Generator().manual_seed(0)
    images, annotations = [], []
    for image_id in range(1, args.images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg",
                       "height": args.height, "width": args.width})  # fmt: skip
        boxes = _random_boxes(args.gt, args.height, args.width, generator)
        labels = torch.randint(1, NUM_CATEGORIES + 1, (args.gt,), generator=generator)
        for (x0, y0, x1, y1), label in zip(boxes.tolist(), labels.tolist(), strict=True):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
            })  # fmt: skip
    categories = [{"id": k, "name": f"class_{k}"} for k in range(1, NUM_CATEGORIES + 1)]
    data = {"images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(data))


class StubDetector(nn.Module):
    """Stands in for the network: `dets` detections per image with 28x28 elliptic mask
    probabilities, in the input image's pixels (`input_size`)."""

    def __init__(self, dets: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.dets = dets
        self.input_size = input_size
        self.generator = torch.Generator().manual_seed(1)
        axis = torch.linspace(-1.2, 1.2, MASK_SIDE)
        radius = axis[None, :] ** 2 + axis[:, None] ** 2  # (M, M)
        self.register_buffer("blob", torch.sigmoid(8 * (1 - radius)), persistent=False)

    def forward(self, images: list[Tensor]) -> list[Instances]:
        return [self._one() for _ in images]

    def _one(self) -> Instances:
        height, width = self.input_size
        n = self.dets
        masks = self.blob.expand(n, 1, MASK_SIDE, MASK_SIDE).clone()  # (R, 1, M, M)
        return Instances(
            self.input_size,
            pred_boxes=Boxes(_random_boxes(n, height, width, self.generator)),
            scores=torch.rand(n, generator=self.generator),
            pred_classes=torch.randint(1, NUM_CATEGORIES + 1, (n,), generator=self.generator),
            pred_masks=masks,
        )


def batches(args: argparse.Namespace, rss: list[tuple[int, float]]) -> Iterator[tuple]:
    """(images, targets, metas) as build_test_loader yields them; records RSS every `--every`
    images into `rss` as (images done, MB)."""
    image = torch.zeros(3, 1, 1, dtype=torch.uint8)  # the stub never looks at pixels
    for start in range(1, args.images + 1, args.batch):
        ids = range(start, min(start + args.batch, args.images + 1))
        if (start - 1) % args.every < args.batch:
            rss.append((start - 1, _status_mb("VmRSS")))
        metas = [{"image_id": i, "height": args.height, "width": args.width} for i in ids]
        yield [image] * len(metas), [None] * len(metas), metas
    rss.append((args.images, _status_mb("VmRSS")))


def _rle_bytes(evaluator: COCOEvaluator) -> int:
    records: list[dict[str, Any]] = evaluator.records.get("instances", [])
    return sum(len(r["segmentation"]["counts"]) for r in records if "segmentation" in r)


class TimedCOCOEvaluator(COCOEvaluator):
    """COCOEvaluator that records the RSS before its final COCOeval and how long that took."""

    rss_before_mb: float = 0.0
    seconds: float = 0.0

    def evaluate(self) -> dict[str, float]:
        self.rss_before_mb = _status_mb("VmRSS")
        tic = time.perf_counter()
        metrics = super().evaluate()
        self.seconds = time.perf_counter() - tic
        return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--gt", type=int, default=7, help="ground-truth boxes per image")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--every", type=int, default=500, help="print RSS every this many images")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        annotations = Path(tmp) / "instances.json"
        write_annotations(annotations, args)
        evaluator = TimedCOCOEvaluator(annotations)
        scale = 800 / min(args.height, args.width)  # the stub "sees" the test-resized image
        model = StubDetector(args.dets, (round(args.height * scale), round(args.width * scale)))
        rss: list[tuple[int, float]] = []
        _report_start(args)
        tic = time.perf_counter()
        metrics = inference_on_dataset(model, batches(args, rss), evaluator, progress=False)
        _report(args, rss, evaluator, metrics, time.perf_counter() - tic)


def _report_start(args: argparse.Namespace) -> None:
    raw = args.dets * args.height * args.width
    print(
        f"{args.images} images of {args.height}x{args.width}, {args.dets} detections with "
        f"masks each: pasted masks {raw / 2**20:.1f} MB per image as bytes, "
        f"{raw * args.images / 2**30:.1f} GB for all"
    )


def _report(
    args: argparse.Namespace,
    rss: list[tuple[int, float]],
    evaluator: TimedCOCOEvaluator,
    metrics: dict[str, float],
    seconds: float,
) -> None:
    """Prints the RSS table (images done, MB), the growth per image, the RLE kept and COCOeval's
    figures."""
    print("| images processed | RSS MB |")
    print("|---:|---:|")
    for n, mb in rss:
        print(f"| {n} | {mb:.1f} |")
    first, last = rss[1] if len(rss) > 1 else rss[0], rss[-1]
    per_image = (last[1] - first[1]) / max(last[0] - first[0], 1) * 1024
    print(
        f"growth after the first {first[0]} images: {last[1] - first[1]:+.1f} MB "
        f"({per_image:.1f} KB per image)"
    )
    rle = _rle_bytes(evaluator)
    print(f"RLE kept: {rle / 2**20:.1f} MB ({rle / args.images / 1024:.1f} KB per image)")
    print(
        f"COCOeval (bbox + segm): {evaluator.seconds:.1f} s; RSS {evaluator.rss_before_mb:.1f} MB "
        f"before, {_status_mb('VmRSS'):.1f} MB after; peak RSS of the run "
        f"{_status_mb('VmHWM'):.1f} MB"
    )
    print(
        f"total {seconds:.1f} s; segm/AP {metrics.get('segm/AP', float('nan')):.4f} "
        "(random stub detections: near 0 by design)"
    )


if __name__ == "__main__":
    main()
