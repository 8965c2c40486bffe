"""A tiny randomly initialized Mask R-CNN (R-18-FPN at a quarter width, GroupNorm) saved by the
engine's Checkpointer with an SGD momentum state, as a training run would leave it."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from detector.config import load_config
from detector.engine.checkpoint import Checkpointer
from detector.modeling.detector import GeneralizedRCNN

TINY_YAML = """\
MODEL:
  DEVICE: cpu
  MASK_ON: {mask_on}
  BACKBONE:
    CONV_BODY: R-18-FPN
    FREEZE_CONV_BODY_AT: 0
  RESNETS:
    NORM: GN
    STEM_OUT_CHANNELS: 16
    WIDTH_PER_GROUP: 16
    BACKBONE_OUT_CHANNELS: 32
  GROUP_NORM:
    NUM_GROUPS: 4
  RPN:
    USE_FPN: True
    ANCHOR_SIZES: (16, 32, 64, 128, 256)
    ANCHOR_STRIDE: (4, 8, 16, 32, 64)
    PRE_NMS_TOP_N_TEST: 100
    POST_NMS_TOP_N_TEST: 30
    FPN_POST_NMS_TOP_N_TEST: 30
  ROI_HEADS:
    USE_FPN: True
    SCORE_THRESH: 0.0
    DETECTIONS_PER_IMG: 10
  ROI_BOX_HEAD:
    NUM_CLASSES: 4
    POOLER_TYPE: ROIAlign
    POOLER_RESOLUTION: 7
    POOLER_SCALES: (0.25, 0.125, 0.0625, 0.03125)
    POOLER_SAMPLING_RATIO: 2
    FEATURE_EXTRACTOR: FPN2MLPFeatureExtractor
    PREDICTOR: FPNPredictor
    MLP_HEAD_DIM: 32
  ROI_MASK_HEAD:
    POOLER_SCALES: (0.25, 0.125, 0.0625, 0.03125)
    FEATURE_EXTRACTOR: MaskRCNNFPNFeatureExtractor
    PREDICTOR: MaskRCNNC4Predictor
    POOLER_RESOLUTION: 7
    POOLER_SAMPLING_RATIO: 2
    RESOLUTION: 14
    CONV_LAYERS: (16, 16)
    SHARE_BOX_FEATURE_EXTRACTOR: False
INPUT:
  MIN_SIZE_TEST: 64
  MAX_SIZE_TEST: 96
  TO_BGR255: False
  PIXEL_MEAN: (0.485, 0.456, 0.406)
  PIXEL_STD: (0.229, 0.224, 0.225)
DATALOADER:
  SIZE_DIVISIBILITY: 32
TEST:
  IMS_PER_BATCH: 2
"""


# A Keypoint R-CNN variant of TINY_YAML (its _BASE_): 5 keypoints, 28 x 28 heatmaps.
TINY_KEYPOINT_YAML = """\
_BASE_: tiny.yaml
MODEL:
  KEYPOINT_ON: True
  ROI_KEYPOINT_HEAD:
    POOLER_SCALES: (0.25, 0.125, 0.0625, 0.03125)
    POOLER_RESOLUTION: 7
    POOLER_SAMPLING_RATIO: 2
    CONV_LAYERS: (16, 16)
    RESOLUTION: 28
    NUM_CLASSES: 5
    SHARE_BOX_FEATURE_EXTRACTOR: False
"""


@dataclass
class TinyRun:
    """A saved tiny model: its config file, config, training checkpoint and the model."""

    config_file: Path
    cfg: Any
    checkpoint: Path
    model: GeneralizedRCNN


def make_tiny_run(directory: Path, mask_on: bool = True, keypoint_on: bool = False) -> TinyRun:
    """Builds the tiny model (with a keypoint head: TINY_KEYPOINT_YAML), gives it an SGD
    momentum state (one step on zero gradients, so the weights do not move) and saves
    model_final.pth with Checkpointer."""
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / "tiny.yaml"
    config_file.write_text(TINY_YAML.format(mask_on=mask_on))
    if keypoint_on:
        config_file = directory / "tiny_keypoint.yaml"
        config_file.write_text(TINY_KEYPOINT_YAML)
    cfg = load_config(config_file)
    torch.manual_seed(0)
    model = GeneralizedRCNN.from_config(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    checkpointer = Checkpointer(directory, model=model, optimizer=optimizer)
    path = checkpointer.save("model_final", iteration=0, metrics={"bbox": {"AP": 0.125}})
    return TinyRun(config_file, cfg, path, model.eval())


TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str) -> ModuleType:
    """tools/<name>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
