"""ONNX export of Faster / Mask / Keypoint R-CNN (the symbolic functions are in
onnx_symbolics.py, the exported module in inference_model.py, torch.export in program.py).

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
in box coordinates (output "keypoint_heatmaps"; decode them with
detector.modeling.roi_heads.keypoint_head.heatmaps_to_keypoints(heatmaps, boxes), which resizes
each detection's maps to its box: a per-detection loop kept out of the graph).

Dynamic: the image's height and width and the number of detections N (zero included). The graph
is recorded by torch.jit.trace, which follows sizes read from tensor shapes (`as_size` keeps them
as traced tensors), so counts after thresholds, NMS and top-k stay data-dependent in the graph.
`check_dynamic_outputs` runs ONNX shape inference on the written file and fails the export when
an output's detection dimension is a fixed number; `check_onnx` compares onnxruntime with
PyTorch on the sample image and on the sample transposed (another height and width).
The TorchScript-based exporter is deprecated in recent PyTorch.

Shapes: N detections, h x w the network input, M the mask side, K keypoints, S the heatmap
side.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from detector.config import Config
from detector.config.defaults import PooledHeadConfig
from detector.export.inference_model import (
    InferenceModel,
    check_against_eager,
    load_for_export,
    other_size,
    prepare_image,
    quiet_tracing,
)
from detector.export.onnx_symbolics import (
    ONNX_OPSET,
    UnsupportedOpError,
    register_onnx_symbolics,
)

if TYPE_CHECKING:
    from onnx import ModelProto

__all__ = [
    "FixedShapeError",
    "UnsupportedOpError",
    "check_dynamic_outputs",
    "check_exportable",
    "check_onnx",
    "export_onnx",
    "runner_metadata",
    "write_runner_metadata",
]

logger = logging.getLogger(__name__)


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
    heads: list[tuple[str, PooledHeadConfig]] = [("MODEL.ROI_BOX_HEAD", cfg.MODEL.ROI_BOX_HEAD)]
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
    model, cfg = load_for_export(cfg, weights)
    check_exportable(cfg)
    register_onnx_symbolics()
    wrapper = InferenceModel(model).eval()
    image = prepare_image(cfg, sample_image)
    _require_detections(wrapper, image)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), quiet_tracing():
        torch.onnx.export(  # pyright: ignore[reportUnknownMemberType] (untyped os.PathLike)
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

    model = _load(path)
    onnx.helper.set_model_props(model, runner_metadata(cfg))
    onnx.save(model, str(path))  # pyright: ignore[reportUnknownMemberType] (untyped os.PathLike)


def _load(path: str | Path) -> ModelProto:
    import onnx

    return onnx.load(str(path))  # pyright: ignore[reportUnknownMemberType] (untyped os.PathLike)


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

    model = _load(path)
    for value in model.graph.output:
        value.type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(model, data_prop=True).graph


def _fixed_meets_dynamic(graph: Any) -> list[str]:
    """Concat nodes joining a fixed size with an unknown one along a dimension that must agree
    (the RoIs' batch indices of the sample's count next to the dynamic boxes, issue 18): the
    graph then fails on any other count."""
    from onnx import helper

    dims = {v.name: _dims(v) for v in [*graph.value_info, *graph.input, *graph.output]}
    found: list[str] = []
    for node in graph.node:
        if node.op_type != "Concat":
            continue
        axis = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "axis")
        shapes = [dims.get(name) for name in node.input]
        known = [shape for shape in shapes if shape is not None]
        if len(known) != len(shapes) or len({len(x) for x in known}) != 1:
            continue
        for position in range(len(known[0])):
            values = {shape[position] for shape in known}
            if position != axis % len(known[0]) and "?" in values and len(values) > 1:
                found.append(f"{node.name} {shapes}")
    return found


def check_dynamic_outputs(path: str | Path) -> None:
    """Raises FixedShapeError when the graph fixes the detection count: every output's first
    dimension (N) must stay unknown to ONNX shape inference, and no Concat may join a fixed
    size with an unknown one. (The input's height and width are declared dynamic; `check_onnx`
    on another size tests them.)"""
    graph = _inferred_graph(path)
    problems: list[str] = []
    for value in graph.output:
        dims = _dims(value)
        if dims is not None and (not dims or isinstance(dims[0], int)):
            problems.append(f"output {value.name} {dims}")
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
        # onnxruntime's session.run and torch.from_numpy are partly untyped
        outputs = session.run(None, {"image": x.numpy()})  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
        return [torch.from_numpy(a) for a in outputs]  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]

    return check_against_eager(run, wrapper, image, atol, "ONNX")
