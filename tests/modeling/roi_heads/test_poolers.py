"""Poolers: FPN level assignment (hand cases, torchvision's LevelMapper), multi-level RoI Align
against torchvision's MultiScaleRoIAlign, every POOLER_TYPE forward + backward, deformable
poolers untrained = plain pooling, mixed precision, empty inputs, config errors."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torchvision
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import initLevelMapper

from detector import ops
from detector.config import get_cfg
from detector.modeling.registry import POOLERS
from detector.modeling.roi_heads import Pooler, assign_fpn_levels, build_pooler
from detector.modeling.roi_heads.poolers import PoolSettings
from detector.structures import Boxes
from tests.ops.utils import copies_of

FPN_SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
ALL_TYPES = [
    "ROIPool", "ROIAlign", "ROIAlignV2", "ROIAlignMax", "DeformRoIPool", "ModulatedDeformRoIPool",
    "PSRoIPool", "PSRoIAlign", "DeformPSRoIPool",
]  # fmt: skip
POSITION_SENSITIVE = {"PSRoIPool", "PSRoIAlign", "DeformPSRoIPool"}


def _head_cfg(pooler_type: str, scales=FPN_SCALES, resolution: int = 7, sampling: int = 2):
    cfg = get_cfg()
    head = cfg.MODEL.ROI_BOX_HEAD
    head.POOLER_TYPE = pooler_type
    head.POOLER_SCALES = list(scales)
    head.POOLER_RESOLUTION = resolution
    head.POOLER_SAMPLING_RATIO = sampling
    return head


def _random_boxes(n: int, image: float, generator: torch.Generator) -> torch.Tensor:
    """Boxes of sides from 1 px to the image size (log-uniform), inside the image."""
    sides = torch.exp(torch.rand(n, 2, generator=generator) * math.log(image))
    corner = torch.rand(n, 2, generator=generator) * (image - sides)
    return torch.cat([corner, corner + sides], dim=1)


def _pyramid(channels: int, image: int, generator: torch.Generator, batch: int = 2):
    return [
        torch.randn(batch, channels, int(image * s), int(image * s), generator=generator)
        for s in FPN_SCALES
    ]


def test_level_assignment_hand_cases() -> None:
    # sqrt(area) 224 -> k0 = 4 (index 2 from P2); 112 -> 3; 448 -> 5; 223 -> 3;
    # tiny -> P2; huge -> P5
    boxes = torch.tensor(
        [
            [0, 0, 224, 224],
            [0, 0, 112, 112],
            [0, 0, 448, 448],
            [0, 0, 223, 223],
            [10, 10, 12, 12],
            [0, 0, 2000, 2000],
            [0, 0, 56, 224],  # sqrt(56 * 224) = 112 -> P3
        ],
        dtype=torch.float32,
    )
    levels = assign_fpn_levels(boxes, min_level=2, max_level=5)
    assert levels.tolist() == [2, 1, 3, 1, 0, 3, 1]
    assert levels.dtype == torch.int64


def test_level_assignment_equals_torchvision_level_mapper() -> None:
    generator = torch.Generator().manual_seed(0)
    boxes = _random_boxes(2000, 1000.0, generator)
    # exact powers of two times 224, where the eps matters
    edges = torch.tensor([[0.0, 0, s, s] for s in (28, 56, 112, 224, 448, 896)])
    boxes = torch.cat([boxes, edges])
    mapper = initLevelMapper(2, 5)
    assert torch.equal(assign_fpn_levels(boxes, 2, 5), mapper([boxes]))
    mapper = initLevelMapper(3, 4)
    assert torch.equal(assign_fpn_levels(boxes, 3, 4), mapper([boxes]))


def test_multi_level_roi_align_equals_torchvision_multi_scale_roi_align() -> None:
    generator = torch.Generator().manual_seed(0)
    image = 512
    features = _pyramid(4, image, generator)
    large = torch.tensor([[0.0, 0, 300, 300], [10, 20, 500, 480], [0, 0, 230, 230]])
    boxes = [
        _random_boxes(40, image, generator),
        torch.cat([_random_boxes(22, image, generator), large]),
    ]
    pooler = build_pooler(_head_cfg("ROIAlign"))
    assert pooler.output_size == 7 and pooler.scales == FPN_SCALES
    ours = pooler(features + [features[-1][:, :, ::2, ::2]], [Boxes(b) for b in boxes])  # P6 unused
    tv = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    named = OrderedDict((str(i), f) for i, f in enumerate(features))
    expected = tv(named, boxes, [(image, image)] * 2)
    assert ours.shape == (65, 4, 7, 7)
    # every level is used
    levels = initLevelMapper(2, 5)(boxes)
    assert set(levels.tolist()) == {0, 1, 2, 3}
    # the scatter by level is exact: the same as our roi_align run level by level
    rois = torch.cat(
        [torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)]
    )
    by_level = torch.zeros_like(ours)
    for level, scale in enumerate(FPN_SCALES):
        index = levels == level
        by_level[index] = ops.roi_align(features[level], rois[index], 7, scale, 2)
    assert torch.equal(ours, by_level)
    # torchvision's numbers, up to the last bit of our roi_align kernel's float sums
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("pooler_type", ["ROIPool", "PSRoIPool", "PSRoIAlign", "ROIAlignV2"])
def test_single_level_equals_torchvision_op(pooler_type: str) -> None:
    generator = torch.Generator().manual_seed(1)
    channels = 2 * 49 if pooler_type in POSITION_SENSITIVE else 3
    feature = torch.randn(2, channels, 20, 24, generator=generator)
    boxes = [_random_boxes(6, 300.0, generator), _random_boxes(3, 300.0, generator)]
    pooler = build_pooler(_head_cfg(pooler_type, scales=[1 / 16]))
    ours = pooler([feature], boxes)
    tv_op = {
        "ROIPool": lambda: torchvision.ops.roi_pool(feature, boxes, 7, 1 / 16),
        "PSRoIPool": lambda: torchvision.ops.ps_roi_pool(feature, boxes, 7, 1 / 16),
        "PSRoIAlign": lambda: torchvision.ops.ps_roi_align(feature, boxes, 7, 1 / 16, 2),
        "ROIAlignV2": lambda: torchvision.ops.roi_align(feature, boxes, 7, 1 / 16, 2, True),
    }[pooler_type]
    torch.testing.assert_close(ours, tv_op(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("pooler_type", ALL_TYPES)
def test_every_type_builds_and_runs_forward_backward(pooler_type: str) -> None:
    generator = torch.Generator().manual_seed(2)
    position_sensitive = pooler_type in POSITION_SENSITIVE
    channels = 2 * 9 if position_sensitive else 3
    features = [f.requires_grad_() for f in _pyramid(channels, 128, generator)]
    boxes = [Boxes(_random_boxes(5, 128.0, generator)), Boxes(_random_boxes(4, 128.0, generator))]
    pooler = build_pooler(_head_cfg(pooler_type, resolution=3), in_channels=channels)
    assert pooler.position_sensitive == position_sensitive
    pooled = pooler(features, boxes)
    assert pooled.shape == (9, 2 if position_sensitive else 3, 3, 3)
    (pooled * torch.randn(pooled.shape, generator=generator)).sum().backward()
    grads = [f.grad for f in features if f.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    for parameter in pooler.parameters():  # the offset / mask branches get gradients
        assert parameter.grad is not None


@pytest.mark.parametrize(
    ("deform_type", "plain_type", "factor"),
    [
        ("DeformRoIPool", "ROIAlignV2", 1.0),
        ("ModulatedDeformRoIPool", "ROIAlignV2", 0.5),  # mask = sigmoid(0)
        ("DeformPSRoIPool", "PSRoIAlign", 1.0),
    ],
)
def test_untrained_deformable_pooling_is_plain_pooling(deform_type, plain_type, factor) -> None:
    generator = torch.Generator().manual_seed(3)
    channels = 3 * 4 if deform_type == "DeformPSRoIPool" else 5
    feature = torch.randn(1, channels, 16, 16, generator=generator)
    boxes = [_random_boxes(7, 256.0, generator)]
    deform = build_pooler(_head_cfg(deform_type, [1 / 16], resolution=2), in_channels=channels)
    plain = build_pooler(_head_cfg(plain_type, [1 / 16], resolution=2))
    torch.testing.assert_close(deform([feature], boxes), factor * plain([feature], boxes))


def test_trained_offsets_move_the_bins() -> None:
    generator = torch.Generator().manual_seed(4)
    feature = torch.randn(1, 2, 16, 16, generator=generator)
    boxes = [torch.tensor([[32.0, 32, 160, 160]])]
    pooler = build_pooler(_head_cfg("DeformRoIPool", [1 / 16], resolution=2), in_channels=2)
    plain = pooler([feature], boxes)
    with torch.no_grad():
        pooler.level_pool.offset_fc[-1].bias.fill_(1.0)  # every bin moves by 0.1 * RoI size
    moved = pooler([feature], boxes)
    shifted = ops.roi_align(feature, [boxes[0] + 12.8], 2, 1 / 16, 2, aligned=True)
    torch.testing.assert_close(moved, shifted)
    assert not torch.allclose(moved, plain)


def test_mixed_precision_under_cpu_autocast() -> None:
    generator = torch.Generator().manual_seed(5)
    features = [f.to(torch.bfloat16) for f in _pyramid(4, 128, generator)]
    boxes = [Boxes(_random_boxes(6, 128.0, generator)), Boxes(_random_boxes(2, 128.0, generator))]
    for pooler_type in ("ROIAlign", "ROIPool", "ModulatedDeformRoIPool"):
        pooler = build_pooler(_head_cfg(pooler_type), in_channels=4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pooled = pooler(features, boxes)
        assert pooled.dtype == torch.bfloat16
        reference = pooler([f.float() for f in features], boxes)
        torch.testing.assert_close(pooled.float(), reference, rtol=1e-2, atol=1e-2)
    # float64 features and float32 boxes: the boxes follow the features
    pooler = build_pooler(_head_cfg("ROIAlign"))
    pooled64 = pooler([f.double() for f in features], boxes)
    assert pooled64.dtype == torch.float64
    torch.testing.assert_close(pooled64.float(), pooler([f.float() for f in features], boxes))


DEFORMABLE = {"DeformRoIPool", "ModulatedDeformRoIPool", "DeformPSRoIPool"}


def _bfloat16_pooling(
    pooler_type: str, num_levels: int, autocast: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor, list[list[int]]]:
    """Pools a bfloat16 pyramid (under CPU autocast or not) and the same values in float32;
    returns the bfloat16 and float32 maps (leaves), both results and the float32 copies made of
    the bfloat16 maps."""
    generator = torch.Generator().manual_seed(7)
    channels = 2 * 9 if pooler_type in POSITION_SENSITIVE else 4
    maps = [f.bfloat16().requires_grad_() for f in _pyramid(channels, 128, generator)][:num_levels]
    wide = [m.detach().float().requires_grad_() for m in maps]
    boxes = [Boxes(_random_boxes(6, 128.0, generator)), Boxes(_random_boxes(3, 128.0, generator))]
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32][:num_levels]
    pooler = build_pooler(_head_cfg(pooler_type, scales, resolution=3), in_channels=channels)
    outputs: list[torch.Tensor] = []

    def pool() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            outputs.append(pooler(maps, boxes))

    copies = copies_of(pool, maps)
    return maps, wide, outputs[0], pooler(wide, boxes), copies


@pytest.mark.parametrize("autocast", [True, False])
@pytest.mark.parametrize("pooler_type", [t for t in ALL_TYPES if t not in DEFORMABLE])
@pytest.mark.parametrize("num_levels", [1, 4])
def test_pools_bfloat16_natively_on_the_cpu(
    pooler_type: str, num_levels: int, autocast: bool
) -> None:
    """No float32 copy of the pyramid, and the bits (values and the maps' gradients) of pooling
    the same values in float32 and rounding once."""
    maps, wide, pooled, reference, copies = _bfloat16_pooling(pooler_type, num_levels, autocast)
    assert copies == []
    assert pooled.dtype == torch.bfloat16
    torch.testing.assert_close(pooled, reference.bfloat16(), rtol=0, atol=0)
    grad = torch.rand(pooled.shape, generator=torch.Generator().manual_seed(8)).bfloat16()
    pooled.backward(grad)
    reference.backward(grad.float())
    for m, w in zip(maps, wide, strict=True):
        assert m.grad is not None and w.grad is not None
        torch.testing.assert_close(m.grad, w.grad.bfloat16(), rtol=0, atol=0)


@pytest.mark.parametrize("pooler_type", sorted(DEFORMABLE))
def test_deformable_types_pool_bfloat16_without_a_float32_pyramid(pooler_type: str) -> None:
    """Under autocast the offset branch computes in bfloat16 (its fc layers), so the offsets
    differ from float32's in the last bits: the values are close, not equal."""
    maps, _wide, pooled, reference, copies = _bfloat16_pooling(pooler_type, 4, autocast=True)
    assert copies == []
    assert pooled.dtype == torch.bfloat16
    torch.testing.assert_close(pooled.float(), reference, rtol=1e-2, atol=1e-2)
    pooled.float().sum().backward()
    assert all(m.grad is not None and m.grad.dtype == torch.bfloat16 for m in maps)


@pytest.mark.parametrize("pooler_type", ["ROIAlign", "ROIPool", "DeformRoIPool"])
def test_images_without_boxes(pooler_type: str) -> None:
    generator = torch.Generator().manual_seed(6)
    features = _pyramid(3, 64, generator)
    pooler = build_pooler(_head_cfg(pooler_type), in_channels=3)
    some = pooler(features, [Boxes(torch.zeros(0, 4)), Boxes(torch.tensor([[0.0, 0, 20, 30]]))])
    assert some.shape == (1, 3, 7, 7)
    expected = pooler([f[1:] for f in features], [Boxes(torch.tensor([[0.0, 0, 20, 30]]))])
    torch.testing.assert_close(some, expected)
    none = pooler(features, [Boxes(torch.zeros(0, 4)), Boxes(torch.zeros(0, 4))])
    assert none.shape == (0, 3, 7, 7)


def test_registry_and_config_errors() -> None:
    assert set(ALL_TYPES) <= set(POOLERS)
    with pytest.raises(KeyError, match="Known names: .*ROIAlign"):
        build_pooler(_head_cfg("ROIAlignn"))
    with pytest.raises(ValueError, match="in_channels"):
        build_pooler(_head_cfg("DeformRoIPool"))
    with pytest.raises(ValueError, match="consecutive powers of 2"):
        build_pooler(_head_cfg("ROIAlign", scales=[1 / 4, 1 / 16]))
    with pytest.raises(ValueError, match="4 levels but only 1"):
        build_pooler(_head_cfg("ROIAlign"))([torch.zeros(1, 1, 8, 8)], [Boxes(torch.zeros(0, 4))])
    with pytest.raises(ValueError, match="2 lists of boxes for a batch of 1"):
        Pooler(level_pool=POOLERS.get("ROIAlign")(PoolSettings(2, 0), [1.0]), scales=[1.0])(
            [torch.zeros(1, 1, 8, 8)], [torch.zeros(0, 4), torch.zeros(0, 4)]
        )


def test_mask_head_config_builds_too() -> None:
    cfg = get_cfg()
    head = cfg.MODEL.ROI_MASK_HEAD
    head.POOLER_SCALES = FPN_SCALES
    head.POOLER_TYPE = "DeformRoIPool"
    head.DEFORM_GAMMA = 0.2
    pooler = build_pooler(head, in_channels=8)
    assert pooler.output_size == 14 and pooler.level_pool.gamma == 0.2
