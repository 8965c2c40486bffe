"""Every op under CPU autocast (bfloat16 and float16), with no casts by the caller: float16 and
bfloat16 arguments are computed in float32 and floating results come back in the dtype of the
first argument, as torchvision's autocast kernels (which exist on the CPU for roi_align and nms)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torchvision
from torch import Tensor

from detector import ops
from detector.layers import DeformConv2d
from detector.ops._autocast import NATIVE_CPU_OPS
from tests.ops.op_cases import OP_CASES, features, nms_inputs, rois
from tests.ops.utils import copies_of

REDUCED = [torch.bfloat16, torch.float16]


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors (also inside lists) cast to `dtype`; anything else unchanged."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, list):
        return [_cast(v, dtype) for v in value]
    return value


@pytest.mark.parametrize("name", list(OP_CASES))
@pytest.mark.parametrize("dtype", REDUCED)
def test_op_under_cpu_autocast_computes_in_float32(name: str, dtype: torch.dtype) -> None:
    case = OP_CASES[name]
    reduced_args = [_cast(a, dtype) for a in case.args()]
    with torch.autocast("cpu", dtype=dtype):
        actual = case.fn(*reduced_args)
    expected = case.fn(*[_cast(a, torch.float32) for a in reduced_args])
    expected = _cast(expected, dtype)
    assert actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", REDUCED)
def test_float32_inputs_are_unchanged_by_autocast(dtype: torch.dtype) -> None:
    with torch.autocast("cpu", dtype=dtype):
        actual = ops.roi_align(features(), rois(), 3, 0.5, 2)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, ops.roi_align(features(), rois(), 3, 0.5, 2), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_and_nms_match_torchvision_under_autocast(
    dtype: torch.dtype, aligned: bool
) -> None:
    x, boxes = features().to(dtype), rois()
    nms_boxes, scores, _ = nms_inputs()
    with torch.autocast("cpu", dtype=dtype):
        ours = ops.roi_align(x, boxes, 3, 0.5, 2, aligned)
        theirs = torchvision.ops.roi_align(x, boxes, 3, 0.5, 2, aligned)
        kept = ops.nms(nms_boxes.to(dtype), scores.to(dtype), 0.5)
        expected_kept = torchvision.ops.nms(nms_boxes.to(dtype), scores.to(dtype), 0.5)
    assert ours.dtype == theirs.dtype == dtype
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert torch.equal(kept, expected_kept)


@pytest.mark.parametrize("dtype", REDUCED)
def test_gradients_flow_back_through_the_casts(dtype: torch.dtype) -> None:
    reduced = features().to(dtype).requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        ops.roi_align(reduced, rois(), 3, 0.5, 2, True).float().square().sum().backward()
    full = reduced.detach().float().requires_grad_()
    ops.roi_align(full, rois(), 3, 0.5, 2, True).to(dtype).float().square().sum().backward()
    assert reduced.grad is not None and reduced.grad.dtype == dtype
    torch.testing.assert_close(reduced.grad, full.grad.to(dtype), rtol=0, atol=0)


def test_deform_conv2d_layer_under_autocast_takes_reduced_precision_activations() -> None:
    torch.manual_seed(0)
    layer = DeformConv2d(8, 4, 3, padding=1)
    x = features().bfloat16()
    offset = torch.zeros(2, 18, 10, 11, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, offset)
    assert out.dtype == torch.bfloat16
    expected = torch.nn.functional.conv2d(x.float(), layer.weight, layer.bias, padding=1)
    torch.testing.assert_close(out, expected.bfloat16())


#: OP_CASES whose op runs natively in the features' reduced dtype under CPU autocast: the RoI
#: pooling ops (detector.ops._autocast.NATIVE_CPU_OPS).
NATIVE_CASES = [
    "roi_align", "roi_align_max", "roi_align_list", "multi_scale_roi_align", "roi_pool",
    "ps_roi_align", "ps_roi_pool", "deform_roi_pool", "deform_ps_roi_pool",
]  # fmt: skip


def test_native_cases_cover_the_native_ops() -> None:
    assert {OP_CASES[name].fn.__name__ for name in NATIVE_CASES} == set(NATIVE_CPU_OPS)


def _reduced_features(args: tuple[Any, ...], dtype: torch.dtype) -> list[Tensor]:
    """The case's feature maps (its first argument, a map or a list) in `dtype`, as leaves."""
    first = args[0] if isinstance(args[0], list) else [args[0]]
    return [f.to(dtype).requires_grad_() for f in first]


@pytest.mark.parametrize("name", NATIVE_CASES)
@pytest.mark.parametrize("dtype", REDUCED)
def test_native_reduced_kernels_give_the_float32_bits_with_float32_rois(
    name: str, dtype: torch.dtype
) -> None:
    """Reduced features with float32 RoIs (what the pooler passes under autocast): the values
    and the features' gradients are the float32 computation's, rounded once to `dtype`, and no
    float32 copy of the features is made."""
    case = OP_CASES[name]
    args = case.args()
    maps = _reduced_features(args, dtype)
    full = [m.detach().float().requires_grad_() for m in maps]
    # deform_roi_pool's offset and mask in the features' dtype (as the pooler's fc layers give
    # them under autocast); the RoIs (args[1]) stay float32
    later = [
        a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args[2:]
    ]

    def call(features: list[Tensor]) -> Tensor:
        first = features if isinstance(args[0], list) else features[0]
        wide = features[0].dtype == torch.float32
        rest = [
            a.float() if wide and isinstance(a, Tensor) and a.is_floating_point() else a
            for a in later
        ]
        return case.fn(first, args[1], *rest)

    outputs: list[Tensor] = []

    def under_autocast() -> None:
        with torch.autocast("cpu", dtype=dtype):
            outputs.append(call(maps))

    assert copies_of(under_autocast, maps) == []
    actual, expected = outputs[0], call(full)
    assert actual.dtype == dtype
    torch.testing.assert_close(actual, expected.to(dtype), rtol=0, atol=0)
    grad = torch.rand(actual.shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    actual.backward(grad)
    expected.backward(grad.float())
    for reduced, wide in zip(maps, full, strict=True):
        assert reduced.grad is not None and wide.grad is not None
        assert reduced.grad.dtype == dtype
        torch.testing.assert_close(reduced.grad, wide.grad.to(dtype), rtol=0, atol=0)
