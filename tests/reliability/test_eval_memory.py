"""Evaluation memory is bounded by the detections, not the pixels: COCOEvaluator turns pasted
masks into RLE as each image arrives and keeps no tensor or array. The figures over thousands of
images come from benchmarks/eval_memory.py (docs/reliability.md, "Long runs")."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch

from detector.evaluation import COCOEvaluator
from detector.structures import Boxes, Instances

HEIGHT, WIDTH, IMAGES, DETS = 480, 640, 12, 30


def _annotations(path: Path) -> Path:
    images = [{"id": i, "file_name": f"{i}.jpg", "height": HEIGHT, "width": WIDTH}
              for i in range(1, IMAGES + 1)]  # fmt: skip
    annotations = [
        {"id": i, "image_id": i, "category_id": 1, "bbox": [10, 20, 100, 80], "area": 8000,
         "iscrowd": 0, "segmentation": [[10, 20, 110, 20, 110, 100, 10, 100]]}
        for i in range(1, IMAGES + 1)
    ]  # fmt: skip
    categories = [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))  # fmt: skip
    return path


def _prediction(generator: torch.Generator) -> Instances:
    """DETS detections with pasted elliptic masks (R, H, W) bool, as inference_on_dataset gives."""
    corner = torch.rand(DETS, 2, generator=generator) * torch.tensor([WIDTH / 2, HEIGHT / 2])
    size = torch.rand(DETS, 2, generator=generator) * 150 + 20
    boxes = torch.cat([corner, corner + size], dim=1)  # (R, 4) xyxy
    ys = torch.arange(HEIGHT, dtype=torch.float32)[None, :, None]  # (1, H, 1)
    xs = torch.arange(WIDTH, dtype=torch.float32)[None, None, :]  # (1, 1, W)
    center = (boxes[:, :2] + boxes[:, 2:]) / 2  # (R, 2)
    half = size / 2
    masks = ((xs - center[:, 0, None, None]) / half[:, 0, None, None]) ** 2 + (
        (ys - center[:, 1, None, None]) / half[:, 1, None, None]
    ) ** 2 <= 1  # (R, H, W)
    return Instances(
        (HEIGHT, WIDTH),
        pred_boxes=Boxes(boxes),
        scores=torch.rand(DETS, generator=generator),
        pred_classes=torch.randint(1, 3, (DETS,), generator=generator),
        pred_masks=masks,
    )


def _arrays_in(value: object) -> list[type]:
    """Types of tensors / arrays anywhere inside nested dicts and lists."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return [type(value)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _arrays_in(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _arrays_in(v)]
    return []


def test_coco_evaluator_keeps_rle_not_pixels(tmp_path: Path):
    evaluator = COCOEvaluator(_annotations(tmp_path / "gt.json"))
    generator = torch.Generator().manual_seed(0)
    pixel_bytes = 0
    for image_id in range(1, IMAGES + 1):
        prediction = _prediction(generator)
        pixel_bytes += prediction.pred_masks.numel()  # one byte per pasted mask pixel
        evaluator.process([image_id], [prediction])
    records = evaluator.records["instances"]
    assert len(records) == IMAGES * DETS
    for record in records:
        rle = record["segmentation"]
        assert rle["size"] == [HEIGHT, WIDTH] and isinstance(rle["counts"], str)
    assert _arrays_in(evaluator.state()) == []
    kept = len(pickle.dumps(evaluator.state()))
    assert kept < pixel_bytes / 100, (kept, pixel_bytes)  # RLE: ~1% of the pixels at most
    metrics = evaluator.evaluate()  # the RLE are what COCOeval scores
    assert 0.0 <= metrics["segm/AP"] <= 1.0
