"""Feature Pyramid Network (Lin et al., 2017) over a ResNet body.

Outputs "p2".."p5" from "c2".."c5" (strides 4, 8, 16, 32) and "p6" (stride 64) by a 1x1/2 max
pool of p5 (maskrcnn_benchmark's LastLevelMaxPool), all with `out_channels` channels.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

from detector.config import Config
from detector.layers.conv import Conv2d
from detector.layers.norm import NormFactory, norm_factory
from detector.modeling.backbone.resnet import ResNet, norm_from_config, resnet_kwargs_from_config
from detector.modeling.registry import BACKBONES


class LastLevelMaxPool(nn.Module):
    """P6 = max_pool2d(P5, kernel 1, stride 2): ``(N, C, H, W) -> (N, C, ceil(H/2), ceil(W/2))``."""

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, kernel_size=1, stride=2, padding=0)


def _conv_block(
    in_channels: int, out_channels: int, kernel_size: int, norm: NormFactory | None, use_relu: bool
) -> nn.Sequential:
    """Conv (bias only without norm), optional norm and ReLU; kaiming_uniform(a=1) init."""
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        padding=(kernel_size - 1) // 2,
        bias=norm is None,
    )
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    layers: list[nn.Module] = [conv]
    if norm is not None:
        layers.append(norm(out_channels))
    if use_relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FPN(nn.Module):
    """An FPN over `body`, a module returning an OrderedDict with `in_features`.

    Args:
        body: the bottom-up body, e.g. `ResNet`; it must expose `feature_channels` and
            `feature_strides` (dicts by feature name).
        in_features: the body's features, finest first, e.g. ("c2", "c3", "c4", "c5").
        out_channels: channels of every output level (MODEL.RESNETS.BACKBONE_OUT_CHANNELS).
        norm: None, or a norm name / factory after each conv ("GN" when MODEL.FPN.USE_GN).
        use_relu: a ReLU after each conv (MODEL.FPN.USE_RELU).
        top_block: the extra coarsest level (P6 by max pooling), or None.

    Forward: ``(N, 3, H, W)`` -> OrderedDict "p{l}" -> ``(N, out_channels, H/2^l, W/2^l)``.
    """

    def __init__(
        self,
        body: nn.Module,
        *,
        in_features: Sequence[str] = ("c2", "c3", "c4", "c5"),
        out_channels: int = 256,
        norm: str | NormFactory | None = None,
        use_relu: bool = False,
        top_block: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.body = body
        self.in_features = list(in_features)
        norm_fn = None if norm is None else norm_factory(norm)
        self.inner_blocks = nn.ModuleList()
        self.layer_blocks = nn.ModuleList()
        # the body's outputs by name (ResNet, VGG16): channels and strides
        body_channels = cast(dict[str, int], body.feature_channels)
        body_strides = cast(dict[str, int], body.feature_strides)
        for name in self.in_features:
            in_channels = body_channels[name]
            self.inner_blocks.append(_conv_block(in_channels, out_channels, 1, norm_fn, use_relu))
            self.layer_blocks.append(_conv_block(out_channels, out_channels, 3, norm_fn, use_relu))
        self.top_block = top_block
        self.out_channels = out_channels
        self.out_strides: dict[str, int] = {}
        for name in self.in_features:
            stride = body_strides[name]
            self.out_strides[f"p{stride.bit_length() - 1}"] = stride
        if top_block is not None:
            stride = 2 * body_strides[self.in_features[-1]]
            self.out_strides[f"p{stride.bit_length() - 1}"] = stride
        self.out_features = list(self.out_strides)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        body_features = self.body(x)
        features = [body_features[name] for name in self.in_features]
        last_inner = self.inner_blocks[-1](features[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for index in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[index](features[index])
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            results.insert(0, self.layer_blocks[index](last_inner))
        if self.top_block is not None:
            results.append(self.top_block(results[-1]))
        return OrderedDict(zip(self.out_features, results, strict=True))


@BACKBONES.register("R-18-FPN", "R-34-FPN", "R-50-FPN", "R-101-FPN", "R-152-FPN", "X-101-32x8d-FPN")
def build_resnet_fpn_backbone(cfg: Config) -> FPN:
    """A ResNet/ResNeXt body with an FPN: {"p2", ..., "p6"}, strides 4..64."""
    body = ResNet(
        out_features=("c2", "c3", "c4", "c5"),
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT,
        **resnet_kwargs_from_config(cfg),
    )
    return FPN(
        body,
        in_features=("c2", "c3", "c4", "c5"),
        out_channels=cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS,
        norm=norm_from_config(cfg, "GN") if cfg.MODEL.FPN.USE_GN else None,
        use_relu=cfg.MODEL.FPN.USE_RELU,
        top_block=LastLevelMaxPool(),
    )
