"""Keypoint head feature extractors: pooled RoI features -> keypoint features.

Registered in `ROI_KEYPOINT_FEATURE_EXTRACTORS` under MODEL.ROI_KEYPOINT_HEAD.FEATURE_EXTRACTOR
names, each as a builder ``(cfg, in_channels) -> extractor``:

- "KeypointRCNNFeatureExtractor": a stack of 3x3 convs + ReLU (CONV_LAYERS widths, 8 x 512 in
  Keypoint R-CNN), which keeps the pooled size. Layers are named `conv_fcn1`, `conv_fcn2`, ...
  as in maskrcnn_benchmark and detectron2, so their checkpoints map one to one.

Shapes: R RoIs, C channels, S the pooled side.
"""

from __future__ import annotations

from collections.abc import Sequence

from detector.config import Config
from detector.modeling.registry import ROI_KEYPOINT_FEATURE_EXTRACTORS
from detector.modeling.roi_heads.conv_stack import HeadConvStack

__all__ = ["KeypointRCNNFeatureExtractor", "build_keypoint_feature_extractor"]


class KeypointRCNNFeatureExtractor(HeadConvStack):
    """3x3 convolutions, each followed by ReLU; the size is kept.

    Shapes: ``(R, in_channels, S, S) -> (R, conv_layers[-1], S, S)``.
    """

    def __init__(self, in_channels: int, *, conv_layers: Sequence[int]) -> None:
        super().__init__(
            in_channels,
            conv_layers,
            prefix="conv_fcn",
            key="MODEL.ROI_KEYPOINT_HEAD.CONV_LAYERS",
        )


@ROI_KEYPOINT_FEATURE_EXTRACTORS.register("KeypointRCNNFeatureExtractor")
def build_keypoint_feature_extractor(cfg: Config, in_channels: int) -> KeypointRCNNFeatureExtractor:
    """The keypoint head's convs from MODEL.ROI_KEYPOINT_HEAD.CONV_LAYERS."""
    layers = [int(c) for c in cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_LAYERS]
    return KeypointRCNNFeatureExtractor(in_channels, conv_layers=layers)
