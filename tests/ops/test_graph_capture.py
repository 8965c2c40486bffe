"""Every public op and RoI/deformable layer under TorchScript, torch.fx, torch.compile and
torch.export, as torchvision.ops supports them.

- `torch.jit.script` of each op function and each layer gives the eager result, and a scripted op
  keeps the argument checks (the eager message, raised as torch.jit.Error);
- `torch.fx.symbolic_trace` of each layer keeps the op as one leaf `call_function` node;
- `torch.compile(fullgraph=True)` and `torch.export.export` of each op give the eager result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from detector import layers, ops
from detector.ops import boxes as box_ops
from tests.ops.op_cases import OP_CASES, deform_conv_inputs, features, nms_inputs, per_bin, rois

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


@pytest.mark.parametrize("name", list(OP_CASES))
def test_scripted_op_gives_the_eager_result(name: str) -> None:
    case = OP_CASES[name]
    scripted = torch.jit.script(case.fn)
    torch.testing.assert_close(scripted(*case.args()), case.fn(*case.args()), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(OP_CASES))
def test_compiled_op_gives_the_eager_result(name: str) -> None:
    case = OP_CASES[name]
    torch._dynamo.reset()
    compiled = torch.compile(case.fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*case.args()), case.fn(*case.args()))


class _Call(nn.Module):
    """Wraps one op call with fixed non-tensor arguments, for torch.export."""

    def __init__(self, fn: Callable[..., Tensor], args: tuple) -> None:
        super().__init__()
        self.fn = fn
        self.tensor_positions = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        self.template = args

    def forward(self, *tensors: Tensor) -> Tensor:
        args = list(self.template)
        for position, tensor in zip(self.tensor_positions, tensors, strict=True):
            args[position] = tensor
        return self.fn(*args)


@pytest.mark.parametrize("name", [n for n in OP_CASES if n != "multi_scale_roi_align"])
def test_exported_op_gives_the_eager_result(name: str) -> None:
    case = OP_CASES[name]
    args = case.args()
    module = _Call(case.fn, args)
    tensors = tuple(a for a in args if isinstance(a, Tensor))
    program = torch.export.export(module, tensors)
    torch.testing.assert_close(program.module()(*tensors), module(*tensors))


def test_scripted_op_keeps_the_argument_checks() -> None:
    scripted = torch.jit.script(ops.roi_align)
    with pytest.raises(torch.jit.Error, match=r"roi_align: `input` must be 4-D .* \(8, 10, 11\)"):
        scripted(features()[0], rois(), 2)
    with pytest.raises(torch.jit.Error, match="roi_align: `mode` must be 'avg' or 'max', got 'x'"):
        scripted(features(), rois(), 2, 1.0, -1, False, "x")
    with pytest.raises(torch.jit.Error, match=r"roi_align: `output_size` must be an int or a pair"):
        scripted(features(), rois(), [1, 2, 3])
    scripted_nms = torch.jit.script(ops.nms)
    boxes, scores, _ = nms_inputs()
    with pytest.raises(torch.jit.Error, match=r"nms: `scores` contains NaN values"):
        scripted_nms(boxes, torch.full_like(scores, float("nan")), 0.5)


@pytest.mark.parametrize("name", list(OP_CASES))
def test_eager_errors_are_unchanged_by_scriptability(name: str) -> None:
    """Python-only misuse (a non-Tensor where a Tensor goes) still gets the eager message."""
    case = OP_CASES[name]
    args = list(case.args())
    args[0] = "not a tensor"
    with pytest.raises((TypeError, ValueError), match=rf"{case.fn.__name__}: `\w+` must be"):
        case.fn(*args)


# ---------------------------------------------------------------------------------------------
# Layers: TorchScript and FX.


@dataclass(frozen=True)
class LayerCase:
    layer: Callable[[], nn.Module]
    inputs: Callable[[], tuple]
    op: Callable[..., Tensor] | None  # the op that FX must keep as a leaf


LAYER_CASES = {
    "RoIAlign": LayerCase(
        lambda: layers.RoIAlign(3, 0.5, 2, aligned=True),
        lambda: (features(), rois()),
        ops.roi_align,
    ),
    "RoIAlign_max": LayerCase(
        lambda: layers.RoIAlign((2, 3), 0.5, -1, mode="max"),
        lambda: (features(), [rois()[:2, 1:], rois()[2:, 1:]]),
        ops.roi_align,
    ),
    "RoIPool": LayerCase(
        lambda: layers.RoIPool(2, 0.5), lambda: (features(), rois()), ops.roi_pool
    ),
    "PSRoIAlign": LayerCase(
        lambda: layers.PSRoIAlign(2, 0.5, 2), lambda: (features(), rois()), ops.ps_roi_align
    ),
    "PSRoIPool": LayerCase(
        lambda: layers.PSRoIPool(2, 0.5), lambda: (features(), rois()), ops.ps_roi_pool
    ),
    "DeformRoIPool": LayerCase(
        lambda: layers.DeformRoIPool(2, 0.5),
        lambda: (features(), rois(), per_bin(2, 1), per_bin(1, 2)),
        ops.deform_roi_pool,
    ),
    "DeformPSRoIPool": LayerCase(
        lambda: layers.DeformPSRoIPool(2, 0.5),
        lambda: (features(), rois(), per_bin(2, 1)),
        ops.deform_ps_roi_pool,
    ),
    "DeformConv2d": LayerCase(
        lambda: layers.DeformConv2d(4, 6, 3, padding=1),
        lambda: (deform_conv_inputs()[0], deform_conv_inputs()[1], deform_conv_inputs()[4]),
        ops.deform_conv2d,
    ),
    "FrozenBatchNorm2d": LayerCase(
        lambda: layers.FrozenBatchNorm2d(8), lambda: (features(),), None
    ),
    "Conv2d": LayerCase(lambda: layers.Conv2d(8, 8, 3, padding=1), lambda: (features(),), None),
}


def _seeded_layer(case: LayerCase) -> nn.Module:
    torch.manual_seed(0)
    return case.layer().eval()


@pytest.mark.parametrize("name", list(LAYER_CASES))
def test_scripted_layer_gives_the_eager_result(name: str) -> None:
    case = LAYER_CASES[name]
    layer = _seeded_layer(case)
    scripted = torch.jit.script(layer)
    torch.testing.assert_close(scripted(*case.inputs()), layer(*case.inputs()), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(LAYER_CASES))
def test_fx_traced_layer_keeps_the_op_as_a_leaf(name: str) -> None:
    case = LAYER_CASES[name]
    layer = _seeded_layer(case)
    traced = torch.fx.symbolic_trace(layer)
    if case.op is not None:
        targets = [node.target for node in traced.graph.nodes if node.op == "call_function"]
        assert targets == [case.op]
    torch.testing.assert_close(traced(*case.inputs()), layer(*case.inputs()), rtol=0, atol=0)


class _NmsUser(nn.Module):
    """Calls nms and batched_nms through the module that defines them, as user code may."""

    def forward(self, boxes: Tensor, scores: Tensor, idxs: Tensor) -> tuple[Tensor, Tensor]:
        return box_ops.nms(boxes, scores, 0.5), box_ops.batched_nms(boxes, scores, idxs, 0.5)


def test_fx_keeps_nms_and_batched_nms_as_leaves() -> None:
    traced = torch.fx.symbolic_trace(_NmsUser())
    targets = [node.target for node in traced.graph.nodes if node.op == "call_function"]
    assert targets == [box_ops.nms, box_ops.batched_nms]
    for actual, expected in zip(traced(*nms_inputs()), _NmsUser()(*nms_inputs()), strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
