"""ONNX export of Faster / Mask R-CNN, and a torch.export program of the inference model.

Our compiled operators are mapped to standard ONNX operators by custom symbolic functions of the
TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`):

    detector::roi_align (avg)            RoiAlign (opset 16; aligned -> half_pixel, else
                                         output_half_pixel)
    detector::multi_scale_roi_align      one RoiAlign per FPN level, merged with Where on the
                                         RoIs' levels
    detector::roi_pool                   MaxRoiPool
    detector::nms / batched_nms          NonMaxSuppression (batched: boxes offset per class)
    detector::deform_conv2d              DeformConv (opset 19)

Operators without an ONNX equivalent (deformable RoI pooling, position-sensitive RoI pooling,
RoIAlign's "max" mode) stop the export with an error naming the op and the config key.

The exported graph takes one image, uint8 Tensor[3, h, w] (float32 0..255 with
INPUT.RESIZE_MODE torchvision), already resized by the test transform (INPUT.MIN_SIZE_TEST /
MAX_SIZE_TEST), and returns boxes (N, 4) in that image's pixels, scores (N,), labels (N,) int64
and, for Mask R-CNN, mask probabilities (N, 1, M, M) in box coordinates (map them to the
original image with detector.modeling.postprocessing.detector_postprocess, or run the whole
pipeline with tools/onnx_infer.py), and for Keypoint R-CNN keypoint heatmap logits (N, K, S, S)
in box coordinates
(output "keypoint_heatmaps"; decode them with
detector.modeling.roi_heads.keypoint_head.heatmaps_to_keypoints(heatmaps, boxes), which resizes
each detection's maps to its box: a per-detection loop kept out of the graph).

Dynamic: the image's height and width and the number of detections N (zero included). The graph
is recorded by torch.jit.trace, which follows sizes read from tensor shapes (`as_size` keeps them
as traced tensors), so counts after thresholds, NMS and top-k stay data-dependent in the graph.
`check_dynamic_outputs` runs ONNX shape inference on the written file and fails the export when
an output's detection dimension is a fixed number; `check_onnx` compares onnxruntime with
PyTorch on the sample image and on the sample transposed (another height and width).
The TorchScript-based exporter is deprecated in recent PyTorch.

torch.export (`export_program`, tools/export.py --format torch-export): the same inference model
as a program saved with torch.export.save (`torch.export.load(path).module()(image)`), with the
same inputs and outputs as the ONNX graph. The inference code has no data-dependent Python:
detection counts after score thresholds, NMS and top-k are unbacked symbolic sizes (our NMS ops
declare them), never read back with `int()` / `len()` / `.item()`, so the program is correct for
any number of detections, zero included. The image's height and width are dynamic: any h, w in
`input_side_range(cfg)`, from the largest anchor stride + 1 (65 with FPN's P6 at stride 64;
a smaller side makes a feature map 1 cell wide, a size torch.export specializes) to
INPUT.MAX_SIZE_TEST; the program refuses other sizes (a guard error naming the bound). Images
whose resized shorter side falls under the bound (very elongated ones) need `dynamic=False`
(a program for the sample's size only) or padding. Exported and checked: the tiny test models,
random-weight Faster / Mask R-CNN R-50-FPN (configs/torchvision) and the shapes R-18-FPN Mask
R-CNN, and the tiny model with modulated DCN and ROIPool; the loaded program matched PyTorch
exactly (difference 0) on every image tried. R-FCN and the deformable RoI poolers have fake
kernels for all their ops but were not checked. The program, like the ONNX graph, returns
M x M mask probabilities (paste them in PyTorch).

Shapes: N detections, h x w the network input, M the mask side, K keypoints, S the heatmap
side.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detector.config import Config
from detector.layers.conv import winograd
from detector.structures import ImageList, as_size

__all__ = [
    "ONNX_OPSET",
    "InferenceModel",
    "FixedShapeError",
    "UnsupportedOpError",
    "check_dynamic_outputs",
    "check_onnx",
    "check_exportable",
    "check_program",
    "compare_outputs",
    "export_onnx",
    "export_program",
    "input_side_range",
    "other_size",
    "prepare_image",
    "quiet_tracing",
    "register_onnx_symbolics",
    "trace_program",
]

logger = logging.getLogger(__name__)

ONNX_OPSET = 19  # DeformConv needs 19; RoiAlign's coordinate_transformation_mode needs 16


class UnsupportedOpError(NotImplementedError):
    """A model uses an operator that has no ONNX equivalent."""


class FixedShapeError(NotImplementedError):
    """An output dimension that depends on the detections or the image size is a constant of
    the exported graph (a size read as a Python int while tracing)."""


# --------------------------------------------------------------------------------------------
# What cannot be exported, and where the config chooses it
# --------------------------------------------------------------------------------------------
_UNSUPPORTED_POOLERS = {
    "DeformRoIPool": "deformable RoI pooling (detector::deform_roi_pool)",
    "ModulatedDeformRoIPool": "modulated deformable RoI pooling (detector::deform_roi_pool)",
    "DeformPSRoIPool": "deformable position-sensitive RoI pooling (detector::deform_ps_roi_pool)",
    "PSRoIPool": "position-sensitive RoI pooling (detector::ps_roi_pool)",
    "PSRoIAlign": "position-sensitive RoI align (detector::ps_roi_align)",
    "ROIAlignMax": "RoIAlign's max mode (detector::roi_align mode='max'; ONNX RoiAlign's max "
    "mode is not the maximum over the bin)",
}


def check_exportable(cfg: Config) -> None:
    """Raises UnsupportedOpError when the config selects an op without an ONNX equivalent."""
    heads = [("MODEL.ROI_BOX_HEAD", cfg.MODEL.ROI_BOX_HEAD)]
    if cfg.MODEL.MASK_ON:
        heads.append(("MODEL.ROI_MASK_HEAD", cfg.MODEL.ROI_MASK_HEAD))
    if cfg.MODEL.KEYPOINT_ON:
        heads.append(("MODEL.ROI_KEYPOINT_HEAD", cfg.MODEL.ROI_KEYPOINT_HEAD))
    for key, head in heads:
        pooler = str(head.POOLER_TYPE)
        if pooler in _UNSUPPORTED_POOLERS:
            raise UnsupportedOpError(
                f"{key}.POOLER_TYPE {pooler}: {_UNSUPPORTED_POOLERS[pooler]} has no ONNX "
                "operator, so this model cannot be exported to ONNX; use ROIAlign, ROIAlignV2 or "
                "ROIPool, or deploy with PyTorch (detector.Predictor)"
            )
    if str(cfg.MODEL.ROI_BOX_HEAD.PREDICTOR) == "RFCNPredictor":
        raise UnsupportedOpError(
            "MODEL.ROI_BOX_HEAD.PREDICTOR RFCNPredictor: R-FCN's position-sensitive pooling "
            "(detector::ps_roi_align / ps_roi_pool) has no ONNX operator"
        )


# --------------------------------------------------------------------------------------------
# Symbolic functions (TorchScript-based exporter)
# --------------------------------------------------------------------------------------------
def _split_rois(g: Any, rois: Any) -> tuple[Any, Any]:
    """rois (K, 5) (batch_index, x1, y1, x2, y2) -> (boxes (K, 4), batch_indices (K,) int64)."""

    def const(values: list[int]) -> Any:
        return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

    first = g.op("Slice", rois, const([0]), const([1]), const([1]))  # (K, 1)
    indices = g.op("Cast", g.op("Squeeze", first, const([1])), to_i=7)  # INT64
    boxes = g.op("Slice", rois, const([1]), const([5]), const([1]))  # (K, 4)
    return boxes, indices


def _roi_align_node(
    g: Any, feature: Any, boxes: Any, indices: Any, scale: float, ph: int, pw: int, sr: int,
    aligned: bool,
) -> Any:  # fmt: skip
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


def _dummy_argmax(g: Any) -> Any:
    return g.op("Constant", value_t=torch.zeros(0, dtype=torch.int64))


def _sym_roi_align(g, input, rois, spatial_scale, ph, pw, sampling_ratio, aligned, mode):  # noqa: ANN001
    from torch.onnx import symbolic_helper as sh

    _check_avg(sh._parse_arg(mode, "s"), "detector::roi_align")
    boxes, indices = _split_rois(g, rois)
    out = _roi_align_node(
        g, input, boxes, indices, sh._parse_arg(spatial_scale, "f"), sh._parse_arg(ph, "i"),
        sh._parse_arg(pw, "i"), sh._parse_arg(sampling_ratio, "i"), sh._parse_arg(aligned, "b"),
    )  # fmt: skip
    return out, _dummy_argmax(g)


def _sym_multi_scale_roi_align(
    g,
    features,
    rois,
    levels,
    scales,
    ph,
    pw,
    sampling_ratio,
    aligned,
    mode,  # noqa: ANN001
):
    """One RoiAlign per level on every RoI, then each RoI takes its own level's result."""
    from torch.onnx import symbolic_helper as sh

    _check_avg(sh._parse_arg(mode, "s"), "detector::multi_scale_roi_align")
    maps = sh._unpack_list(features)
    scale_values = sh._parse_arg(scales, "fs")
    boxes, indices = _split_rois(g, rois)
    args = (sh._parse_arg(ph, "i"), sh._parse_arg(pw, "i"), sh._parse_arg(sampling_ratio, "i"))
    aligned_value = sh._parse_arg(aligned, "b")
    axes = g.op("Constant", value_t=torch.tensor([1, 2, 3], dtype=torch.int64))
    result = None
    for level, (feature, scale) in enumerate(zip(maps, scale_values, strict=True)):
        pooled = _roi_align_node(g, feature, boxes, indices, scale, *args, aligned_value)
        if result is None:
            result = pooled
            continue
        level_value = g.op("Constant", value_t=torch.tensor(level, dtype=torch.int64))
        here = g.op("Unsqueeze", g.op("Equal", levels, level_value), axes)  # (K, 1, 1, 1)
        result = g.op("Where", here, pooled, result)
    return result, _dummy_argmax(g)


def _sym_roi_pool(g, input, rois, spatial_scale, ph, pw):  # noqa: ANN001
    from torch.onnx import symbolic_helper as sh

    out = g.op(
        "MaxRoiPool",
        input,
        rois,
        pooled_shape_i=[sh._parse_arg(ph, "i"), sh._parse_arg(pw, "i")],
        spatial_scale_f=sh._parse_arg(spatial_scale, "f"),
    )
    return out, _dummy_argmax(g)


def _nms_node(g: Any, boxes: Any, scores: Any, iou_threshold: Any) -> Any:
    """NonMaxSuppression on (K, 4) boxes and (K,) scores -> kept indices (descending score)."""
    from torch.onnx import symbolic_helper as sh

    zero = g.op("Constant", value_t=torch.tensor([0], dtype=torch.int64))
    boxes3 = g.op("Unsqueeze", boxes, zero)  # (K, 4) -> (1, K, 4)
    scores3 = g.op("Unsqueeze", g.op("Unsqueeze", scores, zero), zero)  # (K,) -> (1, 1, K)
    max_out = g.op("Constant", value_t=torch.tensor([2**31 - 1], dtype=torch.int64))
    iou = g.op("Constant", value_t=torch.tensor([sh._parse_arg(iou_threshold, "f")]))
    selected = g.op("NonMaxSuppression", boxes3, scores3, max_out, iou)  # (S, 3)
    column = g.op("Constant", value_t=torch.tensor([2], dtype=torch.int64))
    one = g.op("Constant", value_t=torch.tensor([1], dtype=torch.int64))
    return g.op("Squeeze", g.op("Gather", selected, column, axis_i=1), one)  # (S,)


def _sym_nms(g, boxes, scores, iou_threshold):  # noqa: ANN001
    return _nms_node(g, boxes, scores, iou_threshold)


def _sym_batched_nms(g, boxes, scores, idxs, iou_threshold):  # noqa: ANN001
    """NMS per category: the boxes of each category are moved apart by (max coordinate + 1)."""
    largest = g.op("ReduceMax", boxes, keepdims_i=0)
    one_f = g.op("Constant", value_t=torch.tensor(1.0))
    step = g.op("Add", largest, one_f)
    offsets = g.op("Mul", g.op("Cast", idxs, to_i=1), step)  # (K,) float
    axis = g.op("Constant", value_t=torch.tensor([1], dtype=torch.int64))
    shifted = g.op("Add", boxes, g.op("Unsqueeze", offsets, axis))  # (K, 4)
    return _nms_node(g, shifted, scores, iou_threshold)


def _sym_deform_conv2d(
    g,
    input,
    offset,
    weight,
    mask,
    bias,
    sh_,
    sw,
    ph,
    pw,
    dh,
    dw,
    groups,
    offset_groups,  # noqa: ANN001
):
    from torch.onnx import symbolic_helper as sh

    inputs = [input, weight, offset]
    has_bias = not sh._is_none(bias)
    has_mask = not sh._is_none(mask)
    if has_bias or has_mask:
        if not has_bias:  # DeformConv's optional B must then be zeros of shape (C_out,)
            starts, ends = (g.op("Constant", value_t=torch.tensor([v])) for v in (0, 1))
            out_channels = g.op("Slice", g.op("Shape", weight), starts, ends)  # (1,) int64
            bias = g.op("ConstantOfShape", out_channels, value_t=torch.tensor([0.0]))
        inputs.append(bias)
    if has_mask:
        inputs.append(mask)
    ints = [sh._parse_arg(v, "i") for v in (sh_, sw, ph, pw, dh, dw, groups, offset_groups)]
    return g.op(
        "DeformConv",
        *inputs,
        strides_i=ints[0:2],
        pads_i=[ints[2], ints[3], ints[2], ints[3]],
        dilations_i=ints[4:6],
        group_i=ints[6],
        offset_group_i=ints[7],
    )


def _unsupported(op: str, key: str):  # noqa: ANN202
    def symbolic(g, *args):  # noqa: ANN001, ANN202
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
        torch.onnx.register_custom_op_symbolic(name, fn, ONNX_OPSET)
    _registered = True


# --------------------------------------------------------------------------------------------
# The exported module
# --------------------------------------------------------------------------------------------
class InferenceModel(nn.Module):
    """GeneralizedRCNN on one resized uint8 image (3, h, w), returning plain tensors:
    boxes (N, 4), scores (N,), labels (N,) int64 [, mask probabilities (N, 1, M, M)]
    [, keypoint heatmap logits (N, K, S, S) in box coordinates: decode them with
    detector.modeling.roi_heads.keypoint_head.heatmaps_to_keypoints(heatmaps, boxes)]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()
        self.mask_on = getattr(model.roi_heads, "mask_head", None) is not None
        keypoint_head = getattr(model.roi_heads, "keypoint_head", None)
        self.keypoint_on = keypoint_head is not None
        if keypoint_head is not None:  # decoding loops over detections: done outside
            keypoint_head.decode = False

    def preprocess(self, image: Tensor) -> Tensor:
        """GeneralizedRCNN.preprocess for one image, with the padding done by F.pad (a traced
        slice copy_ would cut the graph off its input): (3, h, w) uint8 -> (1, 3, H, W)."""
        model = self.model
        x = image.to(torch.float32)
        x = x.flip(0) if model.to_bgr255 else x / 255.0
        x = (x - model.pixel_mean) / model.pixel_std
        height, width = as_size(image.shape[-2]), as_size(image.shape[-1])
        d = int(model.size_divisibility)
        # d * ceil(size / d) - size: with a symbolic size, every feature map's size is then a
        # multiple of ceil(size / d), which keeps the traced shape formulas short
        pad_h = (height + d - 1) // d * d - height if d > 0 else 0
        pad_w = (width + d - 1) // d * d - width if d > 0 else 0
        return nn.functional.pad(x, (0, pad_w, 0, pad_h))[None]  # (1, 3, H, W)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:

        model = self.model
        sizes = [(as_size(image.shape[-2]), as_size(image.shape[-1]))]
        image_list = ImageList(self.preprocess(image), sizes)
        features = list(model.backbone(image_list.tensor).values())
        proposals, _ = model.rpn(image_list, features, None)
        (dets,), _ = model.roi_heads(features, proposals, image_list.image_sizes, None)
        outputs = (dets.pred_boxes.tensor, dets.scores, dets.pred_classes)
        if self.mask_on:
            outputs += (dets.pred_masks,)
        if self.keypoint_on:
            outputs += (dets.pred_keypoint_heatmaps,)
        return outputs

    @property
    def output_names(self) -> list[str]:
        names = ["boxes", "scores", "labels"] + (["mask_probs"] if self.mask_on else [])
        return names + (["keypoint_heatmaps"] if self.keypoint_on else [])


def prepare_image(cfg: Config, sample_image: str | Path | Tensor | None) -> Tensor:
    """The network input of an image (a file, a uint8 (3, H, W) tensor, or None for a random
    MIN_SIZE_TEST square): resized by the test transform, (3, h, w) uint8 (float32 with
    INPUT.RESIZE_MODE torchvision)."""
    from detector.data import build_transforms, read_image
    from detector.structures import Instances

    if sample_image is None:
        generator = torch.Generator().manual_seed(0)
        side = cfg.INPUT.MIN_SIZE_TEST
        image = torch.randint(0, 256, (3, side, side), dtype=torch.uint8, generator=generator)
    elif isinstance(sample_image, Tensor):
        image = sample_image
    else:
        image = read_image(sample_image, cfg.INPUT.MAX_IMAGE_PIXELS)
    resized, _ = build_transforms(cfg, is_train=False)(image, Instances(tuple(image.shape[-2:])))
    return resized


def _load(cfg: Config, weights: str | Path) -> tuple[nn.Module, Any]:
    """(model in eval mode, resolved config) of a config (or None) and a checkpoint."""
    from detector.engine.trained_model import load_trained

    model, cfg, _ = load_trained(cfg, weights)
    return model, cfg


@contextlib.contextmanager
def quiet_tracing() -> Iterator[None]:
    """torch.jit.trace without its TracerWarnings: the model's argument checks (shapes, NaN
    boxes) read tensors as Python values while tracing; they test the sample only, and the
    exported graph is checked on other sizes (`check_onnx`) and by `check_dynamic_outputs`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.trace. is deprecated")
        yield


def other_size(image: Tensor) -> Tensor:
    """The sample image with another height and width: transposed, or (square) cropped by a
    quarter of its width. Checks on it catch sizes that a trace fixed to the sample's."""
    if image.shape[-2] != image.shape[-1]:
        return image.transpose(-2, -1).contiguous()
    return image[..., : image.shape[-1] - image.shape[-1] // 4].contiguous()


def export_onnx(
    cfg: Config,
    weights: str | Path,
    output: str | Path,
    *,
    sample_image: str | Path | Tensor | None = None,
    check: bool = True,
    atol: float = 1e-3,
) -> str:
    """Exports the detector of `cfg` with `weights` to an ONNX file, traced on `sample_image`
    (resized by the test transform). The graph's image height and width and its detection count
    are dynamic (`check_dynamic_outputs` verifies the file). With `check`, runs it with
    onnxruntime on the sample image and on `other_size(sample)` and compares with PyTorch.
    Returns a line describing the check.

    Raises:
        UnsupportedOpError: an op without an ONNX equivalent (the message names the config key).
        FixedShapeError: an output's detection dimension is fixed in the graph (file removed).
        ValueError: no detection on the sample image (the exporter cannot trace that).
        AssertionError: onnxruntime's outputs differ from PyTorch's by more than `atol`.
    """
    model, cfg = _load(cfg, weights)
    check_exportable(cfg)
    register_onnx_symbolics()
    wrapper = InferenceModel(model).eval()
    image = prepare_image(cfg, sample_image)
    _require_detections(wrapper, image)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), quiet_tracing():
        torch.onnx.export(
            wrapper,
            (image,),
            str(output),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["image"],
            output_names=wrapper.output_names,
            dynamic_axes={
                "image": {1: "height", 2: "width"},
                **{name: {0: "detections"} for name in wrapper.output_names},
            },
        )
    try:
        check_dynamic_outputs(output)
    except FixedShapeError:
        output.unlink()
        raise
    write_runner_metadata(output, cfg)
    logger.info("wrote %s (traced on %s)", output, tuple(image.shape))
    described = f"input {image.dtype} (3, height, width), dynamic; detections dynamic"
    if not check:
        return described
    second = other_size(image)
    error = max(check_onnx(output, wrapper, x, atol=atol) for x in (image, second))
    return (
        f"{described}; onnxruntime matches PyTorch on the sample image {tuple(image.shape)} and "
        f"on {tuple(second.shape)} (max abs difference {error:.2e}, tolerance {atol})"
    )


def runner_metadata(cfg: Config) -> dict[str, str]:
    """What tools/onnx_infer.py needs besides the graph: the test resize and the mask
    binarization threshold (stored as the ONNX file's metadata_props)."""
    inp = cfg.INPUT
    return {
        "min_size_test": str(inp.MIN_SIZE_TEST),
        "max_size_test": str(inp.MAX_SIZE_TEST),
        "resize_mode": str(inp.RESIZE_MODE),
        "mask_threshold": str(cfg.MODEL.ROI_MASK_HEAD.POSTPROCESS_MASKS_THRESHOLD),
    }


def write_runner_metadata(path: str | Path, cfg: Config) -> None:
    """Stores `runner_metadata(cfg)` in the ONNX file."""
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, runner_metadata(cfg))
    onnx.save(model, str(path))


def _dims(value: Any) -> list[int | str] | None:
    """A value's dimensions from shape inference, a number or "?" each (None: rank unknown)."""
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else "?" for d in tensor_type.shape.dim]


def _inferred_graph(path: str | Path) -> Any:
    """The graph with every value's shape as ONNX shape inference derives it. The declared
    output shapes are dropped first: they name the first dimension 'detections' whatever the
    graph computes."""
    import onnx

    model = onnx.load(str(path))
    for value in model.graph.output:
        value.type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(model, data_prop=True).graph


def _fixed_meets_dynamic(graph: Any) -> list[str]:
    """Concat nodes joining a fixed size with an unknown one along a dimension that must agree
    (the RoIs' batch indices of the sample's count next to the dynamic boxes, issue 18): the
    graph then fails on any other count."""
    from onnx import helper

    dims = {v.name: _dims(v) for v in [*graph.value_info, *graph.input, *graph.output]}
    found = []
    for node in graph.node:
        if node.op_type != "Concat":
            continue
        axis = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "axis")
        shapes = [dims.get(name) for name in node.input]
        if any(shape is None for shape in shapes) or len({len(x) for x in shapes}) != 1:
            continue
        for position in range(len(shapes[0])):
            values = {shape[position] for shape in shapes}
            if position != axis % len(shapes[0]) and "?" in values and len(values) > 1:
                found.append(f"{node.name} {shapes}")
    return found


def check_dynamic_outputs(path: str | Path) -> None:
    """Raises FixedShapeError when the graph fixes the detection count: every output's first
    dimension (N) must stay unknown to ONNX shape inference, and no Concat may join a fixed
    size with an unknown one. (The input's height and width are declared dynamic; `check_onnx`
    on another size tests them.)"""
    graph = _inferred_graph(path)
    problems = [
        f"output {value.name} {_dims(value)}"
        for value in graph.output
        if _dims(value) is not None and (not _dims(value) or isinstance(_dims(value)[0], int))
    ]
    problems += _fixed_meets_dynamic(graph)
    if problems:
        raise FixedShapeError(
            f"{path}: the detection count is a fixed number in the ONNX graph "
            f"({'; '.join(problems)}): a size was read as a Python int while tracing (use "
            "detector.structures.as_size); the graph would fail on images with another number "
            "of detections"
        )


def _require_detections(wrapper: nn.Module, image: Tensor) -> None:
    """The TorchScript-based exporter cannot trace the heads on zero detections (it stops in
    its shape inference); refuse that sample image with the fix instead."""
    with torch.no_grad():
        boxes = wrapper(image)[0]
    if len(boxes) == 0:
        raise ValueError(
            "the model detects nothing on the sample image, and ONNX export needs a sample "
            "with detections: pass --sample-image with an image the model finds objects in "
            "(or lower MODEL.ROI_HEADS.SCORE_THRESH for the export)"
        )


def check_onnx(
    path: str | Path, wrapper: InferenceModel, image: Tensor, atol: float = 1e-3
) -> float:
    """Runs the ONNX file with onnxruntime (CPU) and PyTorch on `image`; asserts the same number
    of detections, equal labels, and boxes / scores (/ mask probabilities) within `atol`.
    Returns the largest absolute difference."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> list[Tensor]:
        return [torch.from_numpy(a) for a in session.run(None, {"image": x.numpy()})]

    return check_against_eager(run, wrapper, image, atol, "ONNX")


def check_against_eager(
    run: Callable[[Tensor], Sequence[Tensor]],
    wrapper: InferenceModel,
    image: Tensor,
    atol: float,
    what: str,
) -> float:
    """Runs an exported model (`run`) and PyTorch (`wrapper`, with direct convolutions as the
    exported graphs have) on `image`; see compare_outputs. Returns the largest absolute
    difference; `what` names the exported model in the error."""
    with torch.no_grad():
        got = list(run(image))
    with torch.no_grad(), winograd(False):
        expected = list(wrapper(image))
    return compare_outputs(wrapper.output_names, got, expected, atol, what)


def compare_outputs(
    names: list[str], got: list[Tensor], expected: list[Tensor], atol: float, what: str
) -> float:
    """Asserts that exported outputs `got` equal PyTorch's `expected`: the same shapes (the same
    number of detections), equal labels, the other outputs within `atol`. Returns the largest
    absolute difference; `what` names the exported model in the error."""
    worst = 0.0
    for name, a, b in zip(names, got, expected, strict=True):
        if a.shape != b.shape:
            raise AssertionError(
                f"{what} output {name} has shape {tuple(a.shape)}, PyTorch's {tuple(b.shape)}"
            )
        if name == "labels":
            if not torch.equal(a, b):
                raise AssertionError(f"{what} labels differ from PyTorch's")
            continue
        diff = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
        if diff > atol:
            raise AssertionError(f"{what} output {name} differs from PyTorch's by {diff} > {atol}")
        worst = max(worst, diff)
    return worst


def input_side_range(cfg: Config) -> tuple[int, int | None]:
    """(smallest, largest) height and width the dynamic program accepts.

    Smallest: the largest anchor stride (MODEL.RPN.ANCHOR_STRIDE, the coarsest feature map, P6
    of FPN) + 1, so that every feature map has at least 2 rows and columns (torch.export
    specializes a size of 1, so a range reaching it would not export). Largest:
    INPUT.MAX_SIZE_TEST, the test transform's bound (None, unbounded, when it is <= 0).
    """
    smallest = max(int(s) for s in cfg.MODEL.RPN.ANCHOR_STRIDE) + 1
    largest = cfg.INPUT.MAX_SIZE_TEST
    return smallest, (max(largest, smallest) if largest > 0 else None)


def _dynamic_shapes(cfg: Config) -> dict[str, dict[int, Any]]:
    """torch.export's dynamic_shapes of InferenceModel.forward: h and w in input_side_range."""
    from torch.export import Dim

    smallest, largest = input_side_range(cfg)
    bounds = {"min": smallest} if largest is None else {"min": smallest, "max": largest}
    return {"image": {1: Dim("height", **bounds), 2: Dim("width", **bounds)}}


def _traceable_sample(image: Tensor, smallest: int) -> Tensor:
    """The sample image, zero-padded (bottom, right) to at least `smallest` pixels a side: the
    program is traced with fake tensors, so only the sample's size matters, and a side under
    the dynamic range would be specialized."""
    pad_h = max(smallest - int(image.shape[-2]), 0)
    pad_w = max(smallest - int(image.shape[-1]), 0)
    return nn.functional.pad(image, (0, pad_w, 0, pad_h)) if pad_h or pad_w else image


def trace_program(
    cfg: Config, model: nn.Module, image: Tensor, *, dynamic: bool = True
) -> torch.export.ExportedProgram:
    """torch.export program of InferenceModel(model), traced on `image` (uint8 (3, h, w)).

    With `dynamic`, h and w are dynamic dimensions within `input_side_range(cfg)`; otherwise
    the program takes images of `image`'s size only.
    """
    wrapper = InferenceModel(model).eval()
    dynamic_shapes = None
    if dynamic:
        image = _traceable_sample(image, input_side_range(cfg)[0])
        dynamic_shapes = _dynamic_shapes(cfg)
    with torch.no_grad():
        return torch.export.export(wrapper, (image,), dynamic_shapes=dynamic_shapes, strict=False)


def check_program(
    program: torch.export.ExportedProgram, wrapper: InferenceModel, image: Tensor,
    atol: float = 1e-4,
) -> float:  # fmt: skip
    """Runs the program and PyTorch on `image`; asserts the same number of detections, equal
    labels, and boxes / scores (/ mask probabilities) within `atol`. Returns the largest
    absolute difference."""
    return check_against_eager(program.module(), wrapper, image, atol, "torch.export program")


def export_program(
    cfg: Config,
    weights: str | Path,
    output: str | Path,
    *,
    sample_image: str | Path | Tensor | None = None,
    dynamic: bool = True,
    check: bool = True,
    atol: float = 1e-4,
) -> str:
    """Exports the detector of `cfg` with `weights` as a torch.export program, saved with
    torch.export.save (load it with torch.export.load(path).module()). With `check`, loads the
    file back, runs it on the sample image (resized by the test transform) and compares it with
    PyTorch. Returns a line describing the input and the check.

    With `dynamic` (default) the program takes any uint8 (3, h, w) image with h and w in
    `input_side_range(cfg)`; without it, images of the sample's size only.

    Raises:
        NotImplementedError: torch.export failed (its first complaint and source line).
        AssertionError: the loaded program's outputs differ from PyTorch's by more than `atol`.
    """
    model, cfg = _load(cfg, weights)
    image = prepare_image(cfg, sample_image)
    try:
        program = trace_program(cfg, model, image, dynamic=dynamic)
    except Exception as e:  # torch.export raises many kinds of errors
        text = str(e).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        where = re.search(r"Caused by: \((.+?)\)", text)
        at = f" at {where.group(1)}" if where else ""
        raise NotImplementedError(
            f"torch.export cannot export this model: {type(e).__name__}{at}: {first}"
        ) from e
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(output))
    logger.info("wrote %s", output)
    if dynamic:
        smallest, largest = input_side_range(cfg)
        sizes = f"h, w in [{smallest}, {largest if largest is not None else 'any'}]"
    else:
        sizes = f"(h, w) = {tuple(image.shape[-2:])} only"
    described = f"input uint8 (3, h, w), {sizes}"
    if not check:
        return described
    loaded = torch.export.load(str(output))
    error = check_program(loaded, InferenceModel(model).eval(), image, atol=atol)
    return (
        f"{described}; the loaded program matches PyTorch on the sample image "
        f"{tuple(image.shape)} (max abs difference {error:.2e}, tolerance {atol})"
    )
