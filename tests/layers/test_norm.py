import pytest
import torch
import torchvision
from torch import nn

from detector.layers import FrozenBatchNorm2d, get_norm, norm_factory


def _random_bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return bn.eval()


def test_frozen_bn_equals_batchnorm_in_eval():
    bn = _random_bn(6)
    frozen = FrozenBatchNorm2d(6)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped
    x = torch.randn(2, 6, 5, 4)
    torch.testing.assert_close(frozen(x), bn(x))
    assert not list(frozen.parameters())


def test_frozen_bn_equals_torchvision_and_loads_its_state():
    theirs = torchvision.ops.FrozenBatchNorm2d(4)
    for name in ("weight", "bias", "running_mean"):
        getattr(theirs, name).uniform_(-1, 1)
    theirs.running_var.uniform_(0.5, 2)
    ours = FrozenBatchNorm2d(4)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 4, 3, 3)
    torch.testing.assert_close(ours(x), theirs(x))
    assert ours.eps == theirs.eps == 1e-5


def test_convert_frozen_batchnorm():
    bn = _random_bn(3)
    model = nn.Sequential(nn.Conv2d(3, 3, 1), bn)
    x = torch.randn(1, 3, 4, 4)
    expected = model(x)
    FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    assert isinstance(model[1], FrozenBatchNorm2d)
    torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize(
    "name, cls",
    [
        ("FrozenBN", FrozenBatchNorm2d),
        ("BN", nn.BatchNorm2d),
        ("SyncBN", nn.SyncBatchNorm),
        ("GN", nn.GroupNorm),
    ],
)
def test_get_norm(name, cls):
    layer = get_norm(name, 64)
    assert isinstance(layer, cls)
    assert norm_factory(name)(64).__class__ is cls


def test_get_norm_group_settings_and_errors():
    gn = get_norm("GN", 8, num_groups=4, eps=1e-3)
    assert gn.num_groups == 4 and gn.eps == 1e-3
    with pytest.raises(ValueError, match="NUM_GROUPS"):
        get_norm("GN", 10, num_groups=4)
    with pytest.raises(ValueError, match="FrozenBN"):
        get_norm("LayerNorm", 8)
