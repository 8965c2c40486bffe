"""A Mask R-CNN (R-18-FPN, GroupNorm trunk from scratch) overfits three real COCO images of
../shared/data/coco-val2017-sample6 on the CPU: all five losses fall, and its detections on those
images find every ground-truth object (same class, box IoU > 0.7)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detector.config import load_config
from detector.data import build_transforms, get_dataset
from detector.modeling.detector import GeneralizedRCNN
from detector.structures import pairwise_iou
from tests.modeling.small_models import SMALL_FPN_OPTS
from tests.test_configs import CONFIG_DIR

ITERATIONS = 300
IMAGES = (1, 2, 3)  # 6 objects: person + tie, car, 3 zebras
OPTS = [
    *SMALL_FPN_OPTS,
    *("INPUT.MIN_SIZE_TRAIN", "(256,)", "INPUT.MAX_SIZE_TRAIN", "400"),
    *("INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "400"),
    *("INPUT.HORIZONTAL_FLIP_PROB_TRAIN", "0.0"),
]


def _batch(cfg) -> tuple[list[torch.Tensor], list]:
    dataset = get_dataset("coco_sample6", cfg)
    transforms = build_transforms(cfg, is_train=True)
    images, targets = [], []
    for index in IMAGES:
        image, target, _ = dataset[index]
        image, target = transforms(image, target)
        images.append(image)
        targets.append(target)
    return images, targets


@pytest.mark.slow
def test_mask_rcnn_overfits_three_coco_images(shared_data: Path) -> None:
    torch.manual_seed(0)
    opts = [*OPTS, "DATASETS.SHARED_ROOT", str(shared_data)]
    cfg = load_config(CONFIG_DIR / "e2e_mask_rcnn_R_50_FPN_1x.yaml", opts)
    images, targets = _batch(cfg)
    model = GeneralizedRCNN.from_config(cfg).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    history = []
    for step in range(ITERATIONS):
        for group in optimizer.param_groups:  # linear warmup over the first 20 steps
            group["lr"] = 0.01 * min(1.0, (step + 1) / 20)
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)  # from scratch: keep it stable
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    first = {k: sum(h[k] for h in history[:5]) / 5 for k in history[0]}
    last = {k: sum(h[k] for h in history[-5:]) / 5 for k in history[0]}
    assert len(first) == 5
    for key in first:
        assert last[key] < first[key] / 2, (key, first[key], last[key])

    model.eval()
    with torch.no_grad():
        results = model(images)
    for result, target in zip(results, targets, strict=True):
        iou = pairwise_iou(target.gt_boxes, result.pred_boxes)  # (G, D)
        same_class = target.gt_classes[:, None] == result.pred_classes[None, :]
        best = (iou * same_class).max(dim=1).values
        assert (best > 0.7).all(), (target.gt_classes.tolist(), best.tolist())
