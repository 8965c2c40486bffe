"""A (small) Mask R-CNN trains and predicts under CPU bfloat16 autocast (SOLVER.AMP on the CPU)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from detector.config import load_config
from detector.modeling.detector import GeneralizedRCNN
from tests.modeling.small_models import SMALL_FPN_OPTS
from tests.test_configs import CONFIG_DIR, TINY_INPUT, _tiny_batch


def test_mask_rcnn_under_bfloat16_autocast() -> None:
    torch.manual_seed(0)
    opts = [*TINY_INPUT, *SMALL_FPN_OPTS, "MODEL.ROI_HEADS.SCORE_THRESH", "0.0"]
    cfg = load_config(Path(CONFIG_DIR) / "e2e_mask_rcnn_R_50_FPN_1x.yaml", opts)
    model = GeneralizedRCNN.from_config(cfg).train()
    images, targets = _tiny_batch(mask_on=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
    assert len(losses) == 5 and all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        results = model(images)
    for result in results:
        # Boxes stay float32: proposals are decoded and suppressed in float32.
        assert result.pred_boxes.tensor.dtype == torch.float32
        assert len(result.pred_masks) == len(result.pred_boxes) > 0
