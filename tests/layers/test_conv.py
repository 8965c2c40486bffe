"""detector.layers.Conv2d: nn.Conv2d with a Winograd path for large 3x3 same-size convolutions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detector.layers import Conv2d
from detector.layers import conv as conv_module
from detector.layers.conv import MIN_CHANNELS, MIN_TILES, winograd, winograd_is_enabled

C = MIN_CHANNELS  # input and output channels of the eligible convolutions here


def _pair(seed: int = 0, **kwargs) -> tuple[Conv2d, nn.Conv2d]:
    torch.manual_seed(seed)
    ours = Conv2d(C, C, 3, padding=1, **kwargs)
    reference = nn.Conv2d(C, C, 3, padding=1, **kwargs)
    reference.load_state_dict(ours.state_dict())
    return ours, reference


def _large_input(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(1, C, 24, 26, dtype=dtype)  # 12 * 13 = 156 tiles >= MIN_TILES


def test_winograd_path_equals_nn_conv2d_forward_and_backward():
    ours, reference = _pair()
    ours.double(), reference.double()
    x = _large_input().requires_grad_()
    assert ours.uses_winograd(x)
    grad = torch.randn(1, C, 24, 26, dtype=torch.float64)
    out, expected = ours(x), reference(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    params = (x, ours.weight, ours.bias)
    ours_grads = torch.autograd.grad(out, params, grad)
    expected_grads = torch.autograd.grad(expected, (x, reference.weight, reference.bias), grad)
    for a, b in zip(ours_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_same_state_dict_keys_as_nn_conv2d():
    ours, reference = _pair(bias=False)
    assert ours.state_dict().keys() == reference.state_dict().keys()
    assert isinstance(ours, nn.Conv2d)


@pytest.mark.parametrize(
    "kwargs",
    [{"stride": 2}, {"dilation": 2, "padding": 2}, {"groups": 2}, {"padding_mode": "reflect"}],
)
def test_other_convolutions_take_the_direct_path(kwargs):
    kwargs = {"padding": 1, **kwargs}
    conv = Conv2d(C, C, 3, **kwargs)
    x = _large_input(torch.float32)
    assert not conv.uses_winograd(x)
    reference = nn.Conv2d(C, C, 3, **kwargs)
    reference.load_state_dict(conv.state_dict())
    assert torch.equal(conv(x), reference(x))


def test_small_maps_disabled_autocast_and_graph_capture_take_the_direct_path(monkeypatch):
    conv = Conv2d(C, C, 3, padding=1)
    x = _large_input(torch.float32)
    assert conv.uses_winograd(x)
    assert not conv.uses_winograd(torch.randn(1, C, 2 * 8, 2 * 8))  # 64 tiles < MIN_TILES
    assert MIN_TILES > 64
    assert not Conv2d(C, C // 2, 3, padding=1).uses_winograd(x)  # too few output channels
    assert not Conv2d(C // 2, C, 3, padding=1).uses_winograd(x[:, : C // 2])
    assert not conv.uses_winograd(x.to(torch.bfloat16))
    with winograd(False):
        assert not winograd_is_enabled() and not conv.uses_winograd(x)
    assert winograd_is_enabled()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not conv.uses_winograd(x)
    calls = []
    original = conv_module.winograd_conv3x3
    monkeypatch.setattr(conv_module, "winograd_conv3x3", lambda *a: calls.append(1) or original(*a))
    conv(x)
    assert len(calls) == 1
    traced = torch.jit.trace(conv, x, check_trace=False)  # records F.conv2d, not the transforms
    assert len(calls) == 1
    assert "winograd" not in str(traced.graph)
    torch.testing.assert_close(traced(x), conv(x), rtol=1e-5, atol=1e-5)
