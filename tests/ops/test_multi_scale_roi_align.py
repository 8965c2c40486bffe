"""`detector.ops.MultiScaleRoIAlign` against torchvision.ops.MultiScaleRoIAlign: the same call,
the same results on random pyramids and boxes; TorchScript and FX as torchvision's module."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import Tensor

from detector.ops import MultiScaleRoIAlign
from detector.ops.poolers import _pool_pyramid

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

IMAGE_SHAPES = [(128, 120), (120, 128)]  # padded batch: 128 x 128


def _pyramid(seed: int, channels: int = 5) -> OrderedDict[str, Tensor]:
    """Maps of strides 4, 8, 16, 32 for a 128 x 128 batch, and one unused map."""
    g = torch.Generator().manual_seed(seed)
    x = OrderedDict()
    for name, size in (("p2", 32), ("p3", 16), ("unused", 9), ("p4", 8), ("p5", 4)):
        x[name] = torch.randn(2, channels, size, size, generator=g)
    return x


def _boxes(seed: int) -> list[Tensor]:
    """Boxes of 2 to 128 pixels (all four levels), a few crossing the border, per image."""
    g = torch.Generator().manual_seed(seed)
    boxes = []
    for count in (30, 17):
        xy = torch.rand(count, 2, generator=g) * 130 - 10
        wh = 2.0 ** (1 + torch.rand(count, 1, generator=g) * 6) * (
            0.5 + torch.rand(count, 2, generator=g)
        )
        boxes.append(torch.cat([xy, xy + wh], dim=1))
    return boxes


CASES = [
    (["p2", "p3", "p4", "p5"], 7, 2, {}),
    (["p2", "p3", "p4", "p5"], (5, 3), -1, {"canonical_scale": 112, "canonical_level": 3}),
    (["p3", "p4"], 4, 0, {}),
    (["p4"], 3, 2, {}),
]


@pytest.mark.parametrize("names, output_size, sampling_ratio, kwargs", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_torchvision(names, output_size, sampling_ratio, kwargs, seed) -> None:
    x, boxes = _pyramid(seed), _boxes(seed)
    ours = MultiScaleRoIAlign(names, output_size, sampling_ratio, **kwargs)
    theirs = torchvision.ops.MultiScaleRoIAlign(names, output_size, sampling_ratio, **kwargs)
    expected = theirs(x, boxes, IMAGE_SHAPES)
    torch.testing.assert_close(ours(x, boxes, IMAGE_SHAPES), expected, rtol=1e-5, atol=1e-5)


def test_gradients_match_torchvision() -> None:
    names = ["p2", "p3", "p4", "p5"]
    x, boxes = _pyramid(2), _boxes(2)
    grads = []
    for module in (
        MultiScaleRoIAlign(names, 3, 2),
        torchvision.ops.MultiScaleRoIAlign(names, 3, 2),
    ):
        inputs = OrderedDict((k, v.clone().requires_grad_()) for k, v in x.items())
        module(inputs, boxes, IMAGE_SHAPES).square().sum().backward()
        grads.append([inputs[name].grad for name in names])
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_no_boxes_and_empty_image() -> None:
    module = MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 2, 2)
    out = module(_pyramid(0), [torch.zeros(0, 4), torch.zeros(0, 4)], IMAGE_SHAPES)
    assert out.shape == (0, 5, 2, 2)
    boxes = [torch.zeros(0, 4), _boxes(0)[1]]
    expected = torchvision.ops.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 2, 2)(
        _pyramid(0), boxes, IMAGE_SHAPES
    )
    torch.testing.assert_close(module(_pyramid(0), boxes, IMAGE_SHAPES), expected)


def test_misuse_names_the_module() -> None:
    module = MultiScaleRoIAlign(["q2"], 2, 2)
    with pytest.raises(ValueError, match="MultiScaleRoIAlign: no feature map of `x` is named"):
        module(_pyramid(0), _boxes(0), IMAGE_SHAPES)
    with pytest.raises(ValueError, match="MultiScaleRoIAlign: `image_shapes` is empty"):
        MultiScaleRoIAlign(["p2"], 2, 2)(_pyramid(0), _boxes(0), [])
    with pytest.raises(
        ValueError, match=r"MultiScaleRoIAlign: `boxes\[0\]` must be a Tensor\[K, 4\]"
    ):
        MultiScaleRoIAlign(["p2"], 2, 2)(_pyramid(0), [torch.zeros(3, 5)], IMAGE_SHAPES)


def test_scripted_module_gives_the_eager_result() -> None:
    module = MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 3, 2)
    scripted = torch.jit.script(module)
    expected = module(_pyramid(3), _boxes(3), IMAGE_SHAPES)
    torch.testing.assert_close(
        scripted(_pyramid(3), _boxes(3), IMAGE_SHAPES), expected, rtol=0, atol=0
    )


def test_fx_keeps_the_pooling_as_a_leaf() -> None:
    module = MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 3, 2)
    traced = torch.fx.symbolic_trace(module)
    targets = [node.target for node in traced.graph.nodes if node.op == "call_function"]
    assert targets == [_pool_pyramid]  # one leaf call, as torchvision's
    expected = module(_pyramid(4), _boxes(4), IMAGE_SHAPES)
    torch.testing.assert_close(
        traced(_pyramid(4), _boxes(4), IMAGE_SHAPES), expected, rtol=0, atol=0
    )
