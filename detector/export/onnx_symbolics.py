"""Custom symbolic functions of the TorchScript-based ONNX exporter for torch.ops.detector.*:
each compiled op is mapped to standard ONNX operators (see detector.export.onnx)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NoReturn, Protocol, cast

import torch
from torch import _C

__all__ = ["ONNX_OPSET", "UnsupportedOpError", "register_onnx_symbolics"]

ONNX_OPSET = 19  # DeformConv needs 19; RoiAlign's coordinate_transformation_mode needs 16

Value = _C.Value  # a value of the TorchScript graph being converted


class UnsupportedOpError(NotImplementedError):
    """A model uses an operator that has no ONNX equivalent."""


class _Graph(Protocol):
    """What a symbolic function uses of the exporter's graph context: adding one ONNX node."""

    def op(self, opname: str, *args: Value, **attributes: object) -> Value: ...


# --------------------------------------------------------------------------------------------
# Constant arguments (torch.onnx's parser, which pyright sees as partly untyped)
# --------------------------------------------------------------------------------------------
_Desc = Literal["i", "f", "fs", "b", "s"]


def _parse(value: Value, desc: _Desc) -> object:
    from torch.onnx import symbolic_helper as sh

    return sh._parse_arg(value, desc)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]


def _int(value: Value) -> int:
    return cast(int, _parse(value, "i"))


def _float(value: Value) -> float:
    return cast(float, _parse(value, "f"))


def _floats(value: Value) -> list[float]:
    return cast(list[float], _parse(value, "fs"))


def _bool(value: Value) -> bool:
    return cast(bool, _parse(value, "b"))


def _str(value: Value) -> str:
    return cast(str, _parse(value, "s"))


def _is_none(value: Value) -> bool:
    from torch.onnx import symbolic_helper as sh

    return sh._is_none(value)


def _unpack_list(value: Value) -> list[Value]:
    from torch.onnx import symbolic_helper as sh

    return sh._unpack_list(value)


# --------------------------------------------------------------------------------------------
# Symbolic functions (TorchScript-based exporter)
# --------------------------------------------------------------------------------------------
def _split_rois(g: _Graph, rois: Value) -> tuple[Value, Value]:
    """rois (K, 5) (batch_index, x1, y1, x2, y2) -> (boxes (K, 4), batch_indices (K,) int64)."""

    def const(values: list[int]) -> Value:
        return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

    first = g.op("Slice", rois, const([0]), const([1]), const([1]))  # (K, 1)
    indices = g.op("Cast", g.op("Squeeze", first, const([1])), to_i=7)  # INT64
    boxes = g.op("Slice", rois, const([1]), const([5]), const([1]))  # (K, 4)
    return boxes, indices


def _roi_align_node(
    g: _Graph, feature: Value, boxes: Value, indices: Value, scale: float, ph: int, pw: int,
    sr: int, aligned: bool,
) -> Value:  # fmt: skip
    return g.op(
        "RoiAlign",
        feature,
        boxes,
        indices,
        mode_s="avg",
        output_height_i=ph,
        output_width_i=pw,
        sampling_ratio_i=max(sr, 0),
        spatial_scale_f=scale,
        coordinate_transformation_mode_s="half_pixel" if aligned else "output_half_pixel",
    )


def _check_avg(mode: str, op: str) -> None:
    if mode != "avg":
        raise UnsupportedOpError(
            f"{op} with mode='{mode}' (POOLER_TYPE ROIAlignMax) has no ONNX equivalent: ONNX "
            "RoiAlign's max mode is not the maximum over the bin"
        )


def _dummy_argmax(g: _Graph) -> Value:
    return g.op("Constant", value_t=torch.zeros(0, dtype=torch.int64))


def _sym_roi_align(
    g: _Graph, input: Value, rois: Value, spatial_scale: Value, ph: Value, pw: Value,
    sampling_ratio: Value, aligned: Value, mode: Value,
) -> tuple[Value, Value]:  # fmt: skip
    _check_avg(_str(mode), "detector::roi_align")
    boxes, indices = _split_rois(g, rois)
    out = _roi_align_node(
        g, input, boxes, indices, _float(spatial_scale), _int(ph), _int(pw),
        _int(sampling_ratio), _bool(aligned),
    )  # fmt: skip
    return out, _dummy_argmax(g)


def _sym_multi_scale_roi_align(
    g: _Graph, features: Value, rois: Value, levels: Value, scales: Value, ph: Value, pw: Value,
    sampling_ratio: Value, aligned: Value, mode: Value,
) -> tuple[Value | None, Value]:  # fmt: skip
    """One RoiAlign per level on every RoI, then each RoI takes its own level's result."""
    _check_avg(_str(mode), "detector::multi_scale_roi_align")
    maps = _unpack_list(features)
    scale_values = _floats(scales)
    boxes, indices = _split_rois(g, rois)
    args = (_int(ph), _int(pw), _int(sampling_ratio))
    aligned_value = _bool(aligned)
    axes = g.op("Constant", value_t=torch.tensor([1, 2, 3], dtype=torch.int64))
    result: Value | None = None
    for level, (feature, scale) in enumerate(zip(maps, scale_values, strict=True)):
        pooled = _roi_align_node(g, feature, boxes, indices, scale, *args, aligned_value)
        if result is None:
            result = pooled
            continue
        level_value = g.op("Constant", value_t=torch.tensor(level, dtype=torch.int64))
        here = g.op("Unsqueeze", g.op("Equal", levels, level_value), axes)  # (K, 1, 1, 1)
        result = g.op("Where", here, pooled, result)
    return result, _dummy_argmax(g)


def _sym_roi_pool(
    g: _Graph, input: Value, rois: Value, spatial_scale: Value, ph: Value, pw: Value
) -> tuple[Value, Value]:
    out = g.op(
        "MaxRoiPool",
        input,
        rois,
        pooled_shape_i=[_int(ph), _int(pw)],
        spatial_scale_f=_float(spatial_scale),
    )
    return out, _dummy_argmax(g)


def _nms_node(g: _Graph, boxes: Value, scores: Value, iou_threshold: Value) -> Value:
    """NonMaxSuppression on (K, 4) boxes and (K,) scores -> kept indices (descending score)."""
    zero = g.op("Constant", value_t=torch.tensor([0], dtype=torch.int64))
    boxes3 = g.op("Unsqueeze", boxes, zero)  # (K, 4) -> (1, K, 4)
    scores3 = g.op("Unsqueeze", g.op("Unsqueeze", scores, zero), zero)  # (K,) -> (1, 1, K)
    max_out = g.op("Constant", value_t=torch.tensor([2**31 - 1], dtype=torch.int64))
    iou = g.op("Constant", value_t=torch.tensor([_float(iou_threshold)]))
    selected = g.op("NonMaxSuppression", boxes3, scores3, max_out, iou)  # (S, 3)
    column = g.op("Constant", value_t=torch.tensor([2], dtype=torch.int64))
    one = g.op("Constant", value_t=torch.tensor([1], dtype=torch.int64))
    return g.op("Squeeze", g.op("Gather", selected, column, axis_i=1), one)  # (S,)


def _sym_nms(g: _Graph, boxes: Value, scores: Value, iou_threshold: Value) -> Value:
    return _nms_node(g, boxes, scores, iou_threshold)


def _sym_batched_nms(
    g: _Graph, boxes: Value, scores: Value, idxs: Value, iou_threshold: Value
) -> Value:
    """NMS per category: the boxes of each category are moved apart by (max coordinate + 1)."""
    largest = g.op("ReduceMax", boxes, keepdims_i=0)
    one_f = g.op("Constant", value_t=torch.tensor(1.0))
    step = g.op("Add", largest, one_f)
    offsets = g.op("Mul", g.op("Cast", idxs, to_i=1), step)  # (K,) float
    axis = g.op("Constant", value_t=torch.tensor([1], dtype=torch.int64))
    shifted = g.op("Add", boxes, g.op("Unsqueeze", offsets, axis))  # (K, 4)
    return _nms_node(g, shifted, scores, iou_threshold)


def _sym_deform_conv2d(
    g: _Graph, input: Value, offset: Value, weight: Value, mask: Value, bias: Value,
    sh_: Value, sw: Value, ph: Value, pw: Value, dh: Value, dw: Value, groups: Value,
    offset_groups: Value,
) -> Value:  # fmt: skip
    inputs = [input, weight, offset]
    has_bias = not _is_none(bias)
    has_mask = not _is_none(mask)
    if has_bias or has_mask:
        if not has_bias:  # DeformConv's optional B must then be zeros of shape (C_out,)
            starts, ends = (g.op("Constant", value_t=torch.tensor([v])) for v in (0, 1))
            out_channels = g.op("Slice", g.op("Shape", weight), starts, ends)  # (1,) int64
            bias = g.op("ConstantOfShape", out_channels, value_t=torch.tensor([0.0]))
        inputs.append(bias)
    if has_mask:
        inputs.append(mask)
    ints = [_int(v) for v in (sh_, sw, ph, pw, dh, dw, groups, offset_groups)]
    return g.op(
        "DeformConv",
        *inputs,
        strides_i=ints[0:2],
        pads_i=[ints[2], ints[3], ints[2], ints[3]],
        dilations_i=ints[4:6],
        group_i=ints[6],
        offset_group_i=ints[7],
    )


def _unsupported(op: str, key: str) -> Callable[..., NoReturn]:
    def symbolic(g: _Graph, *args: Value) -> NoReturn:
        raise UnsupportedOpError(
            f"{op} has no ONNX operator ({key}); this model cannot be exported"
        )

    return symbolic


_registered = False


def register_onnx_symbolics() -> None:
    """Registers the symbolic functions of torch.ops.detector.* (once)."""
    global _registered
    if _registered:
        return
    table = {
        "detector::roi_align": _sym_roi_align,
        "detector::multi_scale_roi_align": _sym_multi_scale_roi_align,
        "detector::roi_pool": _sym_roi_pool,
        "detector::nms": _sym_nms,
        "detector::batched_nms": _sym_batched_nms,
        "detector::deform_conv2d": _sym_deform_conv2d,
        "detector::deform_roi_pool": _unsupported(
            "detector::deform_roi_pool", "POOLER_TYPE DeformRoIPool"
        ),
        "detector::deform_ps_roi_pool": _unsupported(
            "detector::deform_ps_roi_pool", "POOLER_TYPE DeformPSRoIPool"
        ),
        "detector::ps_roi_align": _unsupported("detector::ps_roi_align", "POOLER_TYPE PSRoIAlign"),
        "detector::ps_roi_pool": _unsupported("detector::ps_roi_pool", "POOLER_TYPE PSRoIPool"),
    }
    for name, fn in table.items():
        # a deprecated member of torch.onnx (the TorchScript-based exporter), typed `Callable`
        torch.onnx.register_custom_op_symbolic(name, fn, ONNX_OPSET)  # pyright: ignore[reportUnknownMemberType, reportPrivateImportUsage]
    _registered = True
