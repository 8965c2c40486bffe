"""MODEL.RESNETS.CONV_INIT: how the trunk's convolutions are filled before training from scratch.

XavierFill (maskrcnn_benchmark's) draws uniformly with std 1/sqrt(fan_in); MSRAFill
(torchvision's and detectron2's) draws normally with std sqrt(2/fan_out). The two differ by 3.3x
on the stem (fan_in 147, fan_out 3136) and by sqrt(2) on a square 3x3 conv, which changes each
normalized layer's effective learning rate (docs/accuracy.md).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from detector.config import load_config
from detector.modeling.backbone import DFConv2d, ResNet, ResNetHead
from detector.modeling.backbone.resnet import resnet_kwargs_from_config

BASE = Path(__file__).resolve().parents[3] / "configs" / "Base-RCNN-FPN.yaml"


def _fans(conv: nn.Conv2d) -> tuple[int, int]:
    receptive = conv.weight[0, 0].numel()
    return conv.in_channels // conv.groups * receptive, conv.out_channels // conv.groups * receptive


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _resnet18(fill: str) -> ResNet:
    torch.manual_seed(0)
    return ResNet(depth=18, norm="GN", freeze_at=0, res2_out_channels=64, conv_init=fill)


def test_msra_fill_matches_torchvision_resnet_per_layer() -> None:
    ours = _convs(_resnet18("MSRAFill"))
    torch.manual_seed(1)
    theirs = _convs(torchvision.models.resnet18(norm_layer=lambda c: nn.GroupNorm(32, c)))
    assert [c.weight.shape for c in ours] == [c.weight.shape for c in theirs]
    for mine, tv in zip(ours, theirs, strict=True):
        expected = math.sqrt(2.0 / _fans(mine)[1])
        assert mine.weight.std().item() == pytest.approx(expected, rel=0.1)
        assert mine.weight.std().item() == pytest.approx(tv.weight.std().item(), rel=0.1)
        assert mine.weight.abs().max() > math.sqrt(3) * expected  # normal, not uniform


def test_xavier_fill_is_uniform_with_std_one_over_sqrt_fan_in() -> None:
    for conv in _convs(_resnet18("XavierFill")):
        bound = math.sqrt(3.0 / _fans(conv)[0])
        assert conv.weight.abs().max() <= bound
        assert conv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_fills_differ_where_the_fans_differ() -> None:
    xavier, msra = _resnet18("XavierFill"), _resnet18("MSRAFill")
    ratio = xavier.stem.conv1.weight.std() / msra.stem.conv1.weight.std()
    assert ratio.item() == pytest.approx(math.sqrt(3136 / (2 * 147)), rel=0.1)  # 3.3x


def test_deformable_offsets_stay_zero_and_the_head_is_filled_too() -> None:
    torch.manual_seed(0)
    body = ResNet(
        depth=18, norm="GN", freeze_at=0, res2_out_channels=64,
        stage_with_dcn=(False, True, False, False), conv_init="MSRAFill",
    )  # fmt: skip
    offsets = [m.offset for m in body.modules() if isinstance(m, DFConv2d)]
    assert offsets and all(bool((o.weight == 0).all()) for o in offsets)
    head = ResNetHead(depth=50, norm="GN", conv_init="MSRAFill")
    conv = head.layer4[0].conv2
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / _fans(conv)[1]), rel=0.1)


def test_config_key_reaches_the_trunk_and_refuses_unknown_fills() -> None:
    opts = ["MODEL.BACKBONE.CONV_BODY", "R-18-FPN", "MODEL.RESNETS.NORM", "GN"]
    assert load_config(BASE, opts).MODEL.RESNETS.CONV_INIT == "XavierFill"
    cfg = load_config(BASE, opts + ["MODEL.RESNETS.CONV_INIT", "MSRAFill"])
    assert resnet_kwargs_from_config(cfg)["conv_init"] == "MSRAFill"
    with pytest.raises(ValueError, match="MODEL.RESNETS.CONV_INIT"):
        load_config(BASE, opts + ["MODEL.RESNETS.CONV_INIT", "msra"])
    with pytest.raises(ValueError, match="MODEL.RESNETS.CONV_INIT 'he'"):
        ResNet(depth=18, conv_init="he")
