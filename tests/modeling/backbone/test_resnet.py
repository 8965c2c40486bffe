import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from detector.layers import FrozenBatchNorm2d, get_norm
from detector.modeling.backbone import (
    Bottleneck,
    DFConv2d,
    ResNet,
    ResNetHead,
    load_torchvision_weights,
)


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so that a mismatch in norms shows."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _torchvision_frozen(factory, theirs: nn.Module) -> nn.Module:
    """`theirs` with torchvision's FrozenBatchNorm2d: the same arithmetic as our FrozenBN."""
    frozen = factory(weights=None, norm_layer=torchvision.ops.FrozenBatchNorm2d)
    frozen.load_state_dict(theirs.state_dict())
    return frozen.eval()


def _torchvision_features(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    features = {}
    for index, name in enumerate(("c2", "c3", "c4", "c5")):
        x = getattr(model, f"layer{index + 1}")(x)
        features[name] = x
    return features


@pytest.mark.parametrize(
    "factory, depth, groups, width, norm",
    [
        (torchvision.models.resnet18, 18, 1, 64, "BN"),
        (torchvision.models.resnet50, 50, 1, 64, "FrozenBN"),
        (torchvision.models.resnet50, 50, 1, 64, "BN"),
        pytest.param(
            torchvision.models.resnext101_32x8d, 101, 32, 8, "FrozenBN", marks=pytest.mark.slow
        ),
    ],
)
@torch.no_grad()
def test_resnet_equals_torchvision(factory, depth, groups, width, norm):
    torch.manual_seed(0)
    theirs = _randomize_bn(factory(weights=None))
    if norm == "FrozenBN":
        theirs = _torchvision_frozen(factory, theirs)
    ours = ResNet(
        depth=depth,
        num_groups=groups,
        width_per_group=width,
        stride_in_1x1=False,
        norm=norm,
        freeze_at=0,
    ).eval()
    report = load_torchvision_weights(ours, theirs.state_dict())
    assert report.missing == []
    assert report.unmatched == ["fc.weight", "fc.bias"]
    x = torch.randn(1, 3, 64, 64)
    expected = _torchvision_features(theirs, x)
    features = ours(x)
    assert list(features) == ["c2", "c3", "c4", "c5"]
    for name, value in features.items():
        torch.testing.assert_close(value, expected[name], atol=1e-5, rtol=1e-5)
        assert value.shape[1] == ours.feature_channels[name]
        assert 64 // value.shape[-1] == ours.feature_strides[name]


@torch.no_grad()
def test_c4_body_and_res5_head_equal_torchvision():
    torch.manual_seed(0)
    resnet50 = torchvision.models.resnet50
    theirs = _torchvision_frozen(resnet50, _randomize_bn(resnet50(weights=None)))
    body = ResNet(depth=50, out_features=("c4",), stride_in_1x1=False).eval()
    head = ResNetHead(depth=50, stride_in_1x1=False).eval()
    body_report = load_torchvision_weights(body, theirs.state_dict())
    head_report = load_torchvision_weights(head, theirs.state_dict())
    assert body_report.missing == [] and head_report.missing == []
    assert any(k.startswith("layer4.") for k in body_report.unmatched)
    assert not hasattr(body, "layer4")
    x = torch.randn(1, 3, 64, 64)
    expected = _torchvision_features(theirs, x)
    features = body(x)
    assert list(features) == ["c4"] and body.out_channels == 1024 and head.out_channels == 2048
    torch.testing.assert_close(features["c4"], expected["c4"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head(features["c4"]), expected["c5"], atol=1e-5, rtol=1e-5)


def test_head_on_pooled_rois_and_dilation():
    head = ResNetHead(depth=18)
    assert head(torch.randn(2, 256, 14, 14)).shape == (2, 512, 7, 7)
    dilated = ResNetHead(depth=18, dilation=2)
    assert dilated(torch.randn(1, 256, 14, 14)).shape == (1, 512, 14, 14)


def test_stride_in_1x1_places_the_stride():
    msra = Bottleneck(16, 32, bottleneck_channels=8, stride=2, stride_in_1x1=True)
    tv = Bottleneck(16, 32, bottleneck_channels=8, stride=2, stride_in_1x1=False)
    assert msra.conv1.stride == (2, 2) and msra.conv2.stride == (1, 1)
    assert tv.conv1.stride == (1, 1) and tv.conv2.stride == (2, 2)
    assert msra(torch.randn(1, 16, 8, 8)).shape == (1, 32, 4, 4)


def test_res5_dilation_keeps_stride_16():
    model = ResNet(depth=18, res5_dilation=2)
    assert model.feature_strides == {"c2": 4, "c3": 8, "c4": 16, "c5": 16}
    features = model(torch.randn(1, 3, 64, 64))
    assert features["c5"].shape == (1, 512, 4, 4)


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 4])
def test_freeze_conv_body_at(freeze_at):
    model = ResNet(depth=18, norm="BN", freeze_at=freeze_at)
    frozen = ["stem", "layer1", "layer2", "layer3", "layer4"][:freeze_at]
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == (name.split(".")[0] not in frozen), name
    norms = {name.split(".")[0]: type(m) for name, m in model.named_modules() if "bn1" in name}
    for stage in frozen:
        assert norms[stage] is FrozenBatchNorm2d
    if freeze_at < 5:
        assert norms["layer4"] is nn.BatchNorm2d


def test_group_norm_and_resnext_shapes():
    model = ResNet(
        depth=50,
        num_groups=4,
        width_per_group=4,
        res2_out_channels=32,
        norm=lambda channels: get_norm("GN", channels, num_groups=4),
        stem_out_channels=32,
        out_features=("c3", "c5"),
        freeze_at=0,
    )
    assert model.layer1[0].conv2.groups == 4
    features = model(torch.randn(1, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "c3": (1, 64, 4, 4),
        "c5": (1, 256, 1, 1),
    }
    assert model.out_strides == {"c3": 8, "c5": 32}


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        ResNet(depth=42)
    with pytest.raises(ValueError, match="out_features"):
        ResNet(depth=18, out_features=("p2",))
    with pytest.raises(ValueError, match="NUM_GROUPS"):
        ResNet(depth=18, num_groups=2)


# --- Deformable convolutions (detector.layers.DeformConv2d).


@torch.no_grad()
@pytest.mark.parametrize("modulated, scale", [(False, 1.0), (True, 0.5)])
@pytest.mark.parametrize("stride, dilation, groups", [(1, 1, 1), (2, 1, 2), (1, 2, 1)])
def test_untrained_dcn_equals_plain_conv(modulated, scale, stride, dilation, groups):
    torch.manual_seed(0)
    dcn = DFConv2d(
        4,
        6,
        stride=stride,
        dilation=dilation,
        groups=groups,
        modulated=modulated,
        deformable_groups=2,
    )
    assert dcn.offset.out_channels == 2 * 2 * 9 + (2 * 9 if modulated else 0)
    x = torch.randn(1, 4, 9, 9)
    expected = F.conv2d(
        x, dcn.weight, stride=stride, padding=dilation, dilation=dilation, groups=groups
    )
    # DCN v2's mask is sigmoid(0) = 0.5 before training, as in the paper.
    torch.testing.assert_close(dcn(x), scale * expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_dcn_bottleneck_equals_plain_bottleneck():
    torch.manual_seed(0)
    kwargs = dict(bottleneck_channels=8, stride=2, num_groups=2, stride_in_1x1=False)
    plain = Bottleneck(8, 16, **kwargs).eval()
    dcn = Bottleneck(8, 16, with_dcn=True, deformable_groups=2, **kwargs).eval()
    state = {
        k.replace("conv2.weight", "conv2.conv.weight"): v for k, v in plain.state_dict().items()
    }
    missing, unexpected = dcn.load_state_dict(state, strict=False)
    assert sorted(missing) == ["conv2.offset.bias", "conv2.offset.weight"] and not unexpected
    x = torch.randn(1, 8, 8, 8)
    torch.testing.assert_close(dcn(x), plain(x), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_dcn_resnet_loads_torchvision_weights():
    torch.manual_seed(0)
    theirs = _randomize_bn(torchvision.models.resnet18(weights=None))
    ours = ResNet(
        depth=18, stride_in_1x1=False, stage_with_dcn=(False, False, True, True), freeze_at=0
    ).eval()
    report = load_torchvision_weights(ours, theirs.state_dict())
    assert report.missing and all(".conv2.offset." in k for k in report.missing)
    assert isinstance(ours.layer3[0].conv2, DFConv2d) and not isinstance(
        ours.layer2[0].conv2, DFConv2d
    )
    x = torch.randn(1, 3, 64, 64)
    expected = _torchvision_features(theirs, x)
    for name, value in ours(x).items():
        torch.testing.assert_close(value, expected[name], atol=1e-5, rtol=1e-5)
