"""Backbones: VGG-16, ResNet/ResNeXt (C4, C5) and ResNet-FPN, built by MODEL.BACKBONE.CONV_BODY.

Every backbone returns an OrderedDict[str, Tensor] and exposes `out_features` (names, finest
first), `out_strides` (name -> stride) and `out_channels` (the channels of every output):

    "VGG-16"                       {"c4"}: stride 16, 512 channels (conv5_3)
    "R-{18,34,50,101,152}-C4", "X-101-32x8d-C4"
                                   {"c4"}: stride 16, 256 (basic) or 1024 channels; res5 is in
                                   `build_res5_head(cfg)`, run by the box head on pooled RoIs
    "R-{50,101}-C5"                {"c5"}: stride 32, 2048 channels
    "R-{18,34,50,101,152}-FPN", "X-101-32x8d-FPN"
                                   {"p2", "p3", "p4", "p5", "p6"}: strides 4..64,
                                   MODEL.RESNETS.BACKBONE_OUT_CHANNELS (256) channels
"""

from __future__ import annotations

from torch import nn

from detector.config import Config
from detector.modeling.backbone.fpn import FPN, LastLevelMaxPool, build_resnet_fpn_backbone
from detector.modeling.backbone.resnet import (
    BasicBlock,
    Bottleneck,
    DFConv2d,
    ResNet,
    ResNetHead,
    build_res5_head,
)
from detector.modeling.backbone.vgg import VGG16
from detector.modeling.backbone.weights import WeightLoadReport, load_torchvision_weights
from detector.modeling.registry import BACKBONES


def build_backbone(cfg: Config) -> nn.Module:
    """The backbone registered under MODEL.BACKBONE.CONV_BODY."""
    return BACKBONES.get(cfg.MODEL.BACKBONE.CONV_BODY)(cfg)


__all__ = [
    "FPN",
    "VGG16",
    "BasicBlock",
    "Bottleneck",
    "DFConv2d",
    "LastLevelMaxPool",
    "ResNet",
    "ResNetHead",
    "WeightLoadReport",
    "build_backbone",
    "build_res5_head",
    "build_resnet_fpn_backbone",
    "load_torchvision_weights",
]
