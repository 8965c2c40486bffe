"""Config-driven builds of backbones from detector.config.get_cfg()."""

import pytest
import torch

from detector.config import get_cfg, merge_opts, unlocked
from detector.modeling.backbone import (
    FPN,
    VGG16,
    ResNet,
    ResNetHead,
    build_backbone,
    build_res5_head,
)
from detector.modeling.backbone.resnet import parse_conv_body
from detector.modeling.registry import BACKBONES


def make_cfg(conv_body: str, **resnets):
    cfg = merge_opts(get_cfg(), ["MODEL.BACKBONE.CONV_BODY", conv_body])
    with unlocked(cfg):
        for key, value in resnets.items():
            cfg.MODEL.RESNETS[key] = value
    return cfg


def test_registered_names():
    expected = {"VGG-16", "R-50-C4", "R-101-C4", "R-50-FPN", "R-101-FPN", "R-152-FPN",
                "R-18-FPN", "R-34-FPN", "X-101-32x8d-FPN", "R-18-C4", "R-34-C4"}  # fmt: skip
    assert expected <= set(BACKBONES)
    for name in BACKBONES:
        if name != "VGG-16":
            parse_conv_body(name, make_cfg(name))


def test_resnext_name_fixes_groups():
    assert parse_conv_body("X-101-32x8d-FPN", make_cfg("X-101-32x8d-FPN")) == {
        "depth": 101, "num_groups": 32, "width_per_group": 8,
    }  # fmt: skip
    with pytest.raises(ValueError, match="NUM_GROUPS 32"):
        parse_conv_body("X-101-32x8d-FPN", make_cfg("X", NUM_GROUPS=16, WIDTH_PER_GROUP=8))


@torch.no_grad()
def test_build_r18_fpn_with_group_norm():
    cfg = merge_opts(make_cfg("R-18-FPN", BACKBONE_OUT_CHANNELS=64), ["MODEL.FPN.USE_GN", "True"])
    model = build_backbone(cfg)
    assert isinstance(model, FPN) and model.out_channels == 64
    assert isinstance(model.inner_blocks[0][1], torch.nn.GroupNorm)
    features = model(torch.randn(1, 3, 64, 64))
    assert [v.shape[-1] for v in features.values()] == [16, 8, 4, 2, 1]
    assert not any(p.requires_grad for p in model.body.layer1.parameters())
    assert all(p.requires_grad for p in model.body.layer2.parameters())


@torch.no_grad()
def test_build_r50_c4_and_res5_head():
    cfg = make_cfg("R-50-C4")
    body, head = build_backbone(cfg), build_res5_head(cfg)
    assert isinstance(body, ResNet) and isinstance(head, ResNetHead)
    assert body.out_features == ["c4"] and body.out_channels == head.in_channels == 1024
    c4 = body(torch.randn(1, 3, 32, 32))["c4"]
    assert c4.shape == (1, 1024, 2, 2)
    assert head(torch.randn(2, 1024, 14, 14)).shape == (2, 2048, 7, 7)


def test_build_vgg16():
    model = build_backbone(make_cfg("VGG-16"))
    assert isinstance(model, VGG16) and model.out_channels == 512


def test_unknown_conv_body_lists_known_names():
    with pytest.raises(KeyError, match="R-50-FPN"):
        build_backbone(make_cfg("R-50-FPM"))


def _expected_features(name: str) -> dict[str, tuple[int, int]]:
    """{feature name: (stride, channels)} that CONV_BODY `name` must produce."""
    if name == "VGG-16":
        return {"c4": (16, 512)}
    if name.endswith("-FPN"):
        return {f"p{level}": (2**level, 256) for level in range(2, 7)}
    if name.endswith("-C5"):
        return {"c5": (32, 2048)}
    shallow = name.startswith(("R-18", "R-34"))  # basic blocks: res4 has 256 channels
    return {"c4": (16, 256 if shallow else 1024)}


@torch.no_grad()
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_conv_body_has_its_strides_and_channels(name):
    cfg = make_cfg(name, BACKBONE_OUT_CHANNELS=256)
    model = build_backbone(cfg).eval()
    features = model(torch.zeros(1, 3, 128, 192))
    expected = _expected_features(name)
    assert list(features) == list(expected)
    for key, (stride, channels) in expected.items():
        assert features[key].shape == (1, channels, 128 // stride, 192 // stride), key
        assert model.out_channels == channels
