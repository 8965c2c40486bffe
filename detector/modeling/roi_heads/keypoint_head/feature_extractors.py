"""Keypoint head feature extractors: pooled RoI features -> keypoint features.

Registered in `ROI_KEYPOINT_FEATURE_EXTRACTORS` under MODEL.ROI_KEYPOINT_HEAD.FEATURE_EXTRACTOR
names, each as a builder ``(cfg, in_channels) -> extractor``:

- "KeypointRCNNFeatureExtractor": a stack of 3x3 convs + ReLU (CONV_LAYERS widths, 8 x 512 in
  Keypoint R-CNN), which keeps the pooled size. Layers are named `conv_fcn1`, `conv_fcn2`, ...
  as in maskrcnn_benchmark and detectron2, so their checkpoints map one to one.

Shapes: R RoIs, C channels, S the pooled side.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from detector.layers import Conv2d
from detector.modeling.registry import ROI_KEYPOINT_FEATURE_EXTRACTORS

__all__ = ["KeypointRCNNFeatureExtractor", "build_keypoint_feature_extractor"]


class KeypointRCNNFeatureExtractor(nn.Module):
    """3x3 convolutions, each followed by ReLU; the size is kept.

    Shapes: ``(R, in_channels, S, S) -> (R, conv_layers[-1], S, S)``.
    """

    def __init__(self, in_channels: int, *, conv_layers: list[int] | tuple[int, ...]) -> None:
        super().__init__()
        if len(conv_layers) == 0:
            raise ValueError("MODEL.ROI_KEYPOINT_HEAD.CONV_LAYERS must list at least one width")
        self.layer_names: list[str] = []
        channels = in_channels
        for index, width in enumerate(conv_layers, start=1):
            conv = Conv2d(channels, width, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            name = f"conv_fcn{index}"
            self.add_module(name, conv)
            self.layer_names.append(name)
            channels = width
        self.out_channels = channels

    def output_resolution(self, pooled_resolution: int) -> int:
        """Side of the output for a pooled side (the convs keep it)."""
        return pooled_resolution

    def forward(self, x: Tensor) -> Tensor:
        for name in self.layer_names:
            x = F.relu_(getattr(self, name)(x))  # in place on the fresh conv output
        return x


@ROI_KEYPOINT_FEATURE_EXTRACTORS.register("KeypointRCNNFeatureExtractor")
def build_keypoint_feature_extractor(cfg: Any, in_channels: int) -> KeypointRCNNFeatureExtractor:
    """The keypoint head's convs from MODEL.ROI_KEYPOINT_HEAD.CONV_LAYERS."""
    layers = [int(c) for c in cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_LAYERS]
    return KeypointRCNNFeatureExtractor(in_channels, conv_layers=layers)
