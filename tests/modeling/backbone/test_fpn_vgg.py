import pytest
import torch
import torchvision
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool as TorchvisionMaxPool

from detector.modeling.backbone import (
    FPN,
    VGG16,
    LastLevelMaxPool,
    ResNet,
    load_torchvision_weights,
)


@torch.no_grad()
@pytest.mark.parametrize("size", [(64, 64), (40, 56)])
def test_fpn_equals_torchvision(size):
    torch.manual_seed(0)
    body = ResNet(depth=18, freeze_at=0).eval()
    ours = FPN(body, out_channels=16, top_block=LastLevelMaxPool()).eval()
    theirs = FeaturePyramidNetwork([64, 128, 256, 512], 16, extra_blocks=TorchvisionMaxPool())
    fpn_state = {k: v for k, v in ours.state_dict().items() if not k.startswith("body.")}
    theirs.load_state_dict(fpn_state)  # the same key names: {inner,layer}_blocks.<i>.0.*
    x = torch.randn(1, 3, *size)
    expected = list(theirs(body(x)).values())
    features = ours(x)
    assert list(features) == ["p2", "p3", "p4", "p5", "p6"]
    assert ours.out_strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    for value, reference in zip(features.values(), expected, strict=True):
        assert value.shape[1] == ours.out_channels == 16
        torch.testing.assert_close(value, reference)


def test_fpn_with_group_norm_and_relu():
    body = ResNet(depth=18)
    fpn = FPN(body, out_channels=32, norm="GN", use_relu=True, top_block=None)
    block = fpn.layer_blocks[0]
    assert block[0].bias is None and isinstance(block[1], torch.nn.GroupNorm)
    assert isinstance(block[2], torch.nn.ReLU)
    features = fpn(torch.randn(1, 3, 64, 64))
    assert list(features) == ["p2", "p3", "p4", "p5"] and features["p5"].shape == (1, 32, 2, 2)
    assert min(v.min().item() for v in features.values()) >= 0


def test_fpn_backbone_loads_torchvision_weights_into_its_body():
    model = FPN(ResNet(depth=18), out_channels=16, top_block=LastLevelMaxPool())
    theirs = torchvision.models.resnet18(weights=None)
    report = load_torchvision_weights(model, theirs.state_dict())
    assert report.missing == [] and report.unmatched == ["fc.weight", "fc.bias"]
    assert "body.stem.conv1.weight" in report.loaded
    torch.testing.assert_close(model.body.layer2[0].conv1.weight, theirs.layer2[0].conv1.weight)


@torch.no_grad()
def test_vgg16_equals_torchvision_and_freezes_conv1_conv2(tmp_path):
    torch.manual_seed(0)
    theirs = torchvision.models.vgg16(weights=None).eval()
    path = tmp_path / "vgg16.pth"
    torch.save(theirs.state_dict(), path)
    ours = VGG16(freeze_at=2)
    report = load_torchvision_weights(ours, path)  # from a file
    assert report.missing == [] and all(k.startswith("classifier.") for k in report.unmatched)
    x = torch.randn(1, 3, 64, 48)
    features = ours(x)
    assert list(features) == ["c4"] and ours.out_strides == {"c4": 16} and ours.out_channels == 512
    torch.testing.assert_close(features["c4"], theirs.features[:30](x), atol=1e-5, rtol=1e-5)
    assert features["c4"].shape == (1, 512, 4, 3)
    convs = [m for m in ours.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.weight.requires_grad for c in convs] == [False] * 4 + [True] * 9


def test_vgg16_freeze_range():
    assert all(p.requires_grad for p in VGG16(freeze_at=0).parameters())
    with pytest.raises(ValueError, match="FREEZE_CONV_BODY_AT"):
        VGG16(freeze_at=6)


def test_load_weights_shape_mismatch_names_the_key():
    with pytest.raises(ValueError, match="layer1.0.conv1.weight"):
        load_torchvision_weights(
            ResNet(depth=50, out_features=("c2",)), torchvision.models.resnet18().state_dict()
        )
