"""Weight converters: other projects' checkpoints into our GeneralizedRCNN's state-dict layout.

The one place for format conversion: `to_our_layout` recognises a state dict's source and
converts it (used by `Checkpointer.load_weights` for MODEL.WEIGHT and by
tools/convert_weights.py); the Caffe2 ImageNet rules live beside the torchvision ImageNet loader
in `detector.modeling.backbone.weights`.

Each converter renames keys with a table of regular-expression rules, one rule per module, and
returns ``(our_state_dict, ConversionReport)``. The report names every source key it renamed, the
keys it ignored on purpose (BatchNorm's ``num_batches_tracked``, stored anchors), the source keys
no rule knows (``unmatched``) and, when the target model's state dict is given, our keys that
received nothing (``missing``) and keys whose shapes disagree (``shape_mismatch``).

Sources and the configs their weights need:

    torchvision     fasterrcnn_resnet50_fpn / maskrcnn_resnet50_fpn / keypointrcnn_resnet50_fpn
                    state dicts -> configs/torchvision/{faster,mask,keypoint}_rcnn_R_50_FPN.yaml
                    (91 classes; 2 for keypoints)
    torchvision-classification
                    ImageNet resnet*/resnext*/vgg16 -> our backbone bodies
                    (`load_torchvision_weights`); any config with that backbone
    maskrcnn_benchmark
                    its R-50-FPN Faster/Mask/Keypoint R-CNN .pth ({"model": ...}, "module.")
                    -> its settings: STRIDE_IN_1X1 True, TO_BGR255 True, Caffe2 pixel means
    detectron2      its R-50-FPN Faster/Mask/Keypoint R-CNN .pkl (numpy arrays) or .pth; the
                    background class moves from last to first (cls_score) and gets zero box
                    deltas / mask logits (bbox_pred, mask predictor)
                    -> its settings: ROIAlignV2 poolers, STRIDE_IN_1X1 True, BGR 0..255 input
    caffe2-detectron
                    Detectron's (Caffe2) Faster/Mask R-CNN .pkl ({"blobs": ...}, what
                    catalog://Caffe2Detectron/COCO/... names), FPN or C4: the trunk by the
                    Caffe2 ImageNet rules (needs the target model), FPN, RPN and heads by name
                    -> maskrcnn_benchmark's caffe2/ configs (their defaults: BGR 0..255 input)

Shapes: K classes with the background, D the box head's input dimension (fc7 width).
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from detector.modeling.backbone.weights import (
    caffe2_to_torchvision,
    is_caffe2_imagenet,
    is_caffe2_trunk_key,
    load_torchvision_weights,
)

logger = logging.getLogger(__name__)

__all__ = [
    "SOURCES",
    "ConversionReport",
    "convert_caffe2_detectron",
    "convert_detectron2",
    "convert_maskrcnn_benchmark",
    "convert_state_dict",
    "convert_torchvision_classification",
    "convert_torchvision_detection",
    "detection_source",
    "is_caffe2_detectron",
    "load_source_file",
    "to_our_layout",
]

Rule = tuple[str, str]
"""(regular expression matched against a whole source key, replacement with \\1 groups)."""


@dataclass
class ConversionReport:
    """What a converter did, by key name.

    renamed: source key -> our key. ignored: source keys dropped on purpose (their values are
    not weights of ours, e.g. ``num_batches_tracked``). unmatched: source keys no rule maps.
    missing: our keys (of the target state dict, when given) that received no tensor.
    shape_mismatch: "our_key: source shape vs our shape" for keys that cannot load.
    """

    source: str
    renamed: dict[str, str] = field(default_factory=dict[str, str])
    ignored: list[str] = field(default_factory=list[str])
    unmatched: list[str] = field(default_factory=list[str])
    missing: list[str] = field(default_factory=list[str])
    shape_mismatch: list[str] = field(default_factory=list[str])

    @property
    def complete(self) -> bool:
        """True when every source weight found a home and every target key was filled."""
        return not (self.unmatched or self.missing or self.shape_mismatch)

    def summary(self) -> str:
        """A multi-line human-readable account (the CLI prints it)."""
        lines = [
            f"{self.source}: {len(self.renamed)} tensors converted, {len(self.ignored)} ignored"
        ]
        for title, names in (
            ("source keys without a rule (unmatched)", self.unmatched),
            ("our keys without a source tensor (missing)", self.missing),
            ("shape mismatches", self.shape_mismatch),
        ):
            if names:
                lines.append(f"{title}: {len(names)}")
                lines += [f"  {name}" for name in names]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Rule tables
# --------------------------------------------------------------------------------------------
_IGNORED = (r".*num_batches_tracked", r".*anchor_generator\..*", r".*cell_anchors.*")

# torchvision.models.detection (0.13+: FPN and RPN conv wrapped in Conv2dNormActivation, hence
# ".0" levels; older releases stored plain convs: both are accepted).
_TORCHVISION_RULES: list[Rule] = [
    (r"backbone\.body\.(conv1|bn1)\.(.*)", r"backbone.body.stem.\1.\2"),
    (r"backbone\.body\.(layer\d\..*)", r"backbone.body.\1"),
    (
        r"backbone\.fpn\.(inner|layer)_blocks\.(\d)\.(?:0\.)?(weight|bias)",
        r"backbone.\1_blocks.\2.0.\3",
    ),
    (r"rpn\.head\.conv\.(?:0\.0\.)?(weight|bias)", r"rpn.head.conv.\1"),
    (r"rpn\.head\.(cls_logits|bbox_pred)\.(weight|bias)", r"rpn.head.\1.\2"),
    (r"roi_heads\.box_head\.(fc6|fc7)\.(weight|bias)", r"roi_heads.box_feature_extractor.\1.\2"),
    (r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(.*)", r"roi_heads.box_predictor.\1.\2"),
    (r"roi_heads\.mask_head\.(\d)\.0\.(weight|bias)", "MASK_FCN"),
    (
        r"roi_heads\.mask_head\.mask_fcn(\d)\.(weight|bias)",
        r"roi_heads.mask_head.feature_extractor.mask_fcn\1.\2",
    ),
    (
        r"roi_heads\.mask_predictor\.(conv5_mask|mask_fcn_logits)\.(weight|bias)",
        r"roi_heads.mask_head.predictor.\1.\2",
    ),
    (r"roi_heads\.keypoint_head\.(\d+)\.(weight|bias)", "KEYPOINT_FCN"),
    (
        r"roi_heads\.keypoint_predictor\.kps_score_lowres\.(weight|bias)",
        r"roi_heads.keypoint_head.predictor.kps_score_lowres.\1",
    ),
]

# maskrcnn_benchmark (its FPN convs are fpn_inner{1..4} / fpn_layer{1..4} for c2..c5).
_MASKRCNN_BENCHMARK_RULES: list[Rule] = [
    (r"backbone\.body\.(stem\..*)", r"backbone.body.\1"),
    (r"backbone\.body\.(layer\d\..*)", r"backbone.body.\1"),
    (r"backbone\.fpn\.fpn_(inner|layer)(\d)\.(weight|bias)", "FPN"),
    (r"rpn\.head\.(conv|cls_logits|bbox_pred)\.(weight|bias)", r"rpn.head.\1.\2"),
    (  # fc6.weight, or fc6.0.weight / fc6.1.{weight,bias} with GroupNorm (ROI_BOX_HEAD.USE_GN)
        r"roi_heads\.box\.feature_extractor\.(fc6|fc7)\.((?:[01]\.)?(?:weight|bias))",
        r"roi_heads.box_feature_extractor.\1.\2",
    ),
    (
        r"roi_heads\.box\.predictor\.(cls_score|bbox_pred)\.(weight|bias)",
        r"roi_heads.box_predictor.\1.\2",
    ),
    (
        r"roi_heads\.mask\.feature_extractor\.(mask_fcn\d)\.(weight|bias)",
        r"roi_heads.mask_head.feature_extractor.\1.\2",
    ),
    (
        r"roi_heads\.mask\.predictor\.(conv5_mask|mask_fcn_logits)\.(weight|bias)",
        r"roi_heads.mask_head.predictor.\1.\2",
    ),
    (
        r"roi_heads\.keypoint\.feature_extractor\.(conv_fcn\d+)\.(weight|bias)",
        r"roi_heads.keypoint_head.feature_extractor.\1.\2",
    ),
    (
        r"roi_heads\.keypoint\.predictor\.kps_score_lowres\.(weight|bias)",
        r"roi_heads.keypoint_head.predictor.kps_score_lowres.\1",
    ),
]

# detectron2 (res2..res5 are our layer1..layer4; a conv's norm is conv.norm; shortcut = downsample).
_DETECTRON2_RULES: list[Rule] = [
    (r"backbone\.bottom_up\.stem\.conv1\.weight", r"backbone.body.stem.conv1.weight"),
    (r"backbone\.bottom_up\.stem\.conv1\.norm\.(.*)", r"backbone.body.stem.bn1.\1"),
    (r"backbone\.bottom_up\.res(\d)\.(\d+)\.(conv\d)\.weight", "RES_CONV"),
    (r"backbone\.bottom_up\.res(\d)\.(\d+)\.(conv\d)\.norm\.(.*)", "RES_NORM"),
    (r"backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.weight", "RES_SHORTCUT"),
    (r"backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.norm\.(.*)", "RES_SHORTCUT_NORM"),
    (r"backbone\.fpn_(lateral|output)(\d)\.(weight|bias)", "FPN"),
    (r"proposal_generator\.rpn_head\.conv\.(weight|bias)", r"rpn.head.conv.\1"),
    (r"proposal_generator\.rpn_head\.objectness_logits\.(weight|bias)", r"rpn.head.cls_logits.\1"),
    (r"proposal_generator\.rpn_head\.anchor_deltas\.(weight|bias)", r"rpn.head.bbox_pred.\1"),
    (r"roi_heads\.box_head\.fc1\.(weight|bias)", r"roi_heads.box_feature_extractor.fc6.\1"),
    (r"roi_heads\.box_head\.fc2\.(weight|bias)", r"roi_heads.box_feature_extractor.fc7.\1"),
    (
        r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)",
        r"roi_heads.box_predictor.\1.\2",
    ),
    (
        r"roi_heads\.mask_head\.(mask_fcn\d)\.(weight|bias)",
        r"roi_heads.mask_head.feature_extractor.\1.\2",
    ),
    (
        r"roi_heads\.mask_head\.deconv\.(weight|bias)",
        r"roi_heads.mask_head.predictor.conv5_mask.\1",
    ),
    (
        r"roi_heads\.mask_head\.predictor\.(weight|bias)",
        r"roi_heads.mask_head.predictor.mask_fcn_logits.\1",
    ),
    (
        r"roi_heads\.keypoint_head\.(conv_fcn\d+)\.(weight|bias)",
        r"roi_heads.keypoint_head.feature_extractor.\1.\2",
    ),
    (
        r"roi_heads\.keypoint_head\.score_lowres\.(weight|bias)",
        r"roi_heads.keypoint_head.predictor.kps_score_lowres.\1",
    ),
]


# Detectron (Caffe2) detection blobs past the trunk, after `_w` / `_b` became `.weight` / `.bias`:
# fpn_inner_res5_2_sum (C5's lateral), fpn_inner_res{2,3,4}_*_sum_lateral, fpn_res{2..5}_*_sum
# (outputs); the RPN's FPN convs are shared by every level and stored once, under fpn2.
_CAFFE2_DETECTRON_RULES: list[Rule] = [
    (r"fpn_inner_res(\d)_\d+_sum(?:_lateral)?\.(weight|bias)", "C2_FPN_INNER"),
    (r"fpn_res(\d)_\d+_sum\.(weight|bias)", "C2_FPN_OUTPUT"),
    (r"conv_rpn(?:_fpn2)?\.(weight|bias)", r"rpn.head.conv.\1"),
    (r"rpn_cls_logits(?:_fpn2)?\.(weight|bias)", r"rpn.head.cls_logits.\1"),
    (r"rpn_bbox_pred(?:_fpn2)?\.(weight|bias)", r"rpn.head.bbox_pred.\1"),
    (r"(fc6|fc7)\.(weight|bias)", r"roi_heads.box_feature_extractor.\1.\2"),
    (r"(cls_score|bbox_pred)\.(weight|bias)", r"roi_heads.box_predictor.\1.\2"),
    (r"_\[mask\]_fcn(\d)\.(weight|bias)", r"roi_heads.mask_head.feature_extractor.mask_fcn\1.\2"),
    (r"(conv5_mask|mask_fcn_logits)\.(weight|bias)", r"roi_heads.mask_head.predictor.\1.\2"),
    (r"(conv_fcn\d+)\.(weight|bias)", r"roi_heads.keypoint_head.feature_extractor.\1.\2"),
    (r"kps_score_lowres\.(weight|bias)", r"roi_heads.keypoint_head.predictor.kps_score_lowres.\1"),
]
# Training state and the shared RPN convs' copies of the other levels, if a file has them.
_CAFFE2_DETECTRON_IGNORED = (
    r".*_momentum",
    r"(conv_rpn|rpn_cls_logits|rpn_bbox_pred)_fpn[3-6]_[wb]",
)


def _special_target(kind: str, match: re.Match[str]) -> str:
    """Targets that need arithmetic on the matched numbers."""
    groups = match.groups()
    if kind in ("C2_FPN_INNER", "C2_FPN_OUTPUT"):  # res2..res5 -> blocks 0..3
        block = "inner" if kind == "C2_FPN_INNER" else "layer"
        return f"backbone.{block}_blocks.{int(groups[0]) - 2}.0.{groups[1]}"
    if kind == "FPN" and groups[0] in ("inner", "layer"):  # maskrcnn_benchmark: 1..4 -> 0..3
        return f"backbone.{groups[0]}_blocks.{int(groups[1]) - 1}.0.{groups[2]}"
    if kind == "FPN":  # detectron2: fpn_lateral2..5 / fpn_output2..5 -> 0..3
        block = "inner" if groups[0] == "lateral" else "layer"
        return f"backbone.{block}_blocks.{int(groups[1]) - 2}.0.{groups[2]}"
    if kind == "MASK_FCN":  # torchvision 0.13+: mask_head.{0..3}.0 -> mask_fcn{1..4}
        return f"roi_heads.mask_head.feature_extractor.mask_fcn{int(groups[0]) + 1}.{groups[1]}"
    if kind == "KEYPOINT_FCN":  # torchvision: Sequential(conv, relu, ...) .0, .2, .. -> 1, 2, ..
        layer = int(groups[0]) // 2 + 1
        return f"roi_heads.keypoint_head.feature_extractor.conv_fcn{layer}.{groups[1]}"
    layer = f"backbone.body.layer{int(groups[0]) - 1}.{groups[1]}"
    if kind == "RES_CONV":
        return f"{layer}.{groups[2]}.weight"
    if kind == "RES_NORM":
        return f"{layer}.bn{groups[2][-1]}.{groups[3]}"
    if kind == "RES_SHORTCUT":
        return f"{layer}.downsample.0.weight"
    if kind == "RES_SHORTCUT_NORM":
        return f"{layer}.downsample.1.{groups[2]}"
    raise AssertionError(f"unknown special rule {kind}")


def _rename(key: str, rules: list[Rule]) -> str | None:
    """Our name of source `key` by the first matching rule, or None."""
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, key)
        if match is None:
            continue
        if replacement.isupper():
            return _special_target(replacement, match)
        return match.expand(replacement)
    return None


def _as_tensor(value: Any, key: str) -> Tensor:
    """A source value (Tensor or numpy array) as a Tensor."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(cast("np.ndarray[Any, Any]", value))
        return torch.from_numpy(array)  # pyright: ignore[reportUnknownMemberType] (untyped)
    raise ValueError(f"source key '{key}' holds a {type(value).__name__}, not a tensor or array")


def _convert(
    state_dict: Mapping[str, Any],
    rules: list[Rule],
    source: str,
    target: Mapping[str, Tensor] | nn.Module | None,
    strip_prefix: str = "",
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Renames `state_dict` by `rules`; checks against `target` when given."""
    report = ConversionReport(source=source)
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        name = key[len(strip_prefix) :] if strip_prefix and key.startswith(strip_prefix) else key
        if any(re.fullmatch(p, name) for p in _IGNORED):
            report.ignored.append(key)
            continue
        ours = _rename(name, rules)
        if ours is None:
            report.unmatched.append(key)
            continue
        if ours in converted:
            first = _source_key(report, ours)
            raise ValueError(f"{source}: keys '{first}' and '{key}' both map to '{ours}'")
        converted[ours] = _as_tensor(value, key)
        report.renamed[key] = ours
    if target is not None:
        _check_against(converted, target, report)
    return converted, report


def _source_key(report: ConversionReport, ours: str) -> str:
    """The source key that was renamed to `ours` (for error messages)."""
    return next(k for k, v in report.renamed.items() if v == ours)


def _check_against(
    converted: dict[str, Tensor],
    target: Mapping[str, Tensor] | nn.Module,
    report: ConversionReport,
) -> None:
    """Fills `report.missing` and `report.shape_mismatch`; unknown names go to unmatched."""
    ours = target.state_dict() if isinstance(target, nn.Module) else target
    for name in list(converted):
        source_key = _source_key(report, name)
        if name not in ours:
            report.unmatched.append(f"{source_key} (-> {name}, not in the model)")
            del converted[name], report.renamed[source_key]
        elif tuple(converted[name].shape) != tuple(ours[name].shape):
            report.shape_mismatch.append(
                f"{name}: {tuple(converted[name].shape)} ({source_key}) vs "
                f"{tuple(ours[name].shape)}"
            )
    report.missing = [
        k for k in ours if k not in converted and not k.endswith("num_batches_tracked")
    ]


# --------------------------------------------------------------------------------------------
# Converters
# --------------------------------------------------------------------------------------------
def convert_torchvision_detection(
    state_dict: Mapping[str, Tensor], target: Mapping[str, Tensor] | nn.Module | None = None
) -> tuple[dict[str, Tensor], ConversionReport]:
    """torchvision's fasterrcnn_resnet50_fpn / maskrcnn_resnet50_fpn / keypointrcnn_resnet50_fpn
    weights in our layout.

    The converted model needs configs/torchvision/faster_rcnn_R_50_FPN.yaml (or
    mask_rcnn_R_50_FPN.yaml, keypoint_rcnn_R_50_FPN.yaml): torchvision's 91 COCO labels (2 for
    keypoints), its input normalization and RPN settings. Pass `target` (our model or its state
    dict) to get missing keys and shape checks.
    """
    return _convert(state_dict, _TORCHVISION_RULES, "torchvision", target)


def convert_maskrcnn_benchmark(
    state_dict: Mapping[str, Tensor], target: Mapping[str, Tensor] | nn.Module | None = None
) -> tuple[dict[str, Tensor], ConversionReport]:
    """maskrcnn_benchmark's R-50-FPN Faster/Mask/Keypoint R-CNN weights (its checkpoint's "model"
    entry, with or without DistributedDataParallel's "module." prefix) in our layout."""
    prefix = "module." if any(k.startswith("module.") for k in state_dict) else ""
    return _convert(state_dict, _MASKRCNN_BENCHMARK_RULES, "maskrcnn_benchmark", target, prefix)


def convert_detectron2(
    state_dict: Mapping[str, Any], target: Mapping[str, Tensor] | nn.Module | None = None
) -> tuple[dict[str, Tensor], ConversionReport]:
    """detectron2's R-50-FPN Faster/Mask/Keypoint R-CNN weights (tensors or numpy arrays) in our
    layout.

    detectron2 puts the background class last in cls_score and predicts no box deltas or mask
    for it; ours has it first (class 0). cls_score rows move the last to the front, bbox_pred
    gets 4 zero rows in front and the mask predictor one zero channel in front.
    """
    converted, report = _convert(state_dict, _DETECTRON2_RULES, "detectron2", None)
    _move_background_first(converted)
    if target is not None:
        _check_against(converted, target, report)
    return converted, report


def _move_background_first(state: dict[str, Tensor]) -> None:
    """detectron2's class layout (foreground 0..K-2, background K-1) -> ours (background 0)."""
    for suffix in ("weight", "bias"):
        key = f"roi_heads.box_predictor.cls_score.{suffix}"
        if key in state:  # (K, D): last row (background) first
            state[key] = torch.cat([state[key][-1:], state[key][:-1]])
        key = f"roi_heads.box_predictor.bbox_pred.{suffix}"
        if key in state and not _is_class_agnostic(state):  # (4(K-1), D) -> (4K, D)
            value = state[key]
            state[key] = torch.cat([value.new_zeros((4, *value.shape[1:])), value])
        key = f"roi_heads.mask_head.predictor.mask_fcn_logits.{suffix}"
        if key in state and state[key].shape[0] > 1:  # (K-1, C, 1, 1) -> (K, C, 1, 1)
            value = state[key]
            state[key] = torch.cat([value.new_zeros((1, *value.shape[1:])), value])


def _is_class_agnostic(state: Mapping[str, Tensor]) -> bool:
    """Whether detectron2's bbox_pred regresses one box for all classes (4 rows while there are
    several foreground classes; with one, e.g. Keypoint R-CNN's person, its 4 rows are that
    class's)."""
    rows = state["roi_heads.box_predictor.bbox_pred.weight"].shape[0]
    classes = state.get("roi_heads.box_predictor.cls_score.weight")
    return rows == 4 and (classes is None or classes.shape[0] != 2)


def convert_torchvision_classification(
    state_dict: Mapping[str, Tensor], model: nn.Module
) -> tuple[dict[str, Tensor], ConversionReport]:
    """An ImageNet classifier of torchvision (resnet*, resnext*, vgg16) in the layout of the
    backbone bodies inside `model` (built from the config the weights are meant for).

    Reuses `load_torchvision_weights` (which loads them into `model` as a side effect) and
    returns the loaded tensors under our full key names.
    """
    load_report = load_torchvision_weights(model, state_dict)
    ours = model.state_dict()
    converted = {name: ours[name].detach().clone() for name in load_report.loaded}
    report = ConversionReport(source="torchvision-classification")
    report.renamed = {name: name for name in load_report.loaded}
    report.unmatched = list(load_report.unmatched)
    report.missing = list(load_report.missing)
    report.ignored = [k for k in state_dict if k.endswith("num_batches_tracked")]
    return converted, report


def is_caffe2_detectron(state: Mapping[str, Any]) -> bool:
    """Whether a state dict is a Detectron (Caffe2) detection model: a Caffe2 trunk and RPN or
    box-head blobs."""
    heads = ("conv_rpn", "rpn_cls_logits", "fpn_inner_", "fc6_w", "cls_score_w")
    return "conv1_w" in state and any(k.startswith(heads) for k in state)


def _caffe2_param(key: str) -> str:
    """Caffe2 blob name -> a parameter-style name: `fc6_w` -> `fc6.weight`, `_b` -> `.bias`."""
    for suffix, name in (("_w", ".weight"), ("_b", ".bias")):
        if key.endswith(suffix):
            return key[: -len(suffix)] + name
    return key


def convert_caffe2_detectron(
    state_dict: Mapping[str, Any], model: nn.Module
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Detectron's Faster/Mask R-CNN blobs (numpy arrays) in the layout of `model`, built from
    the config they are meant for (an FPN or a C4 model: the trunk goes wherever `model` keeps
    it, res5 in a C4 box head included). Detectron's classes already have the background first.

    The trunk is converted as a Caffe2 ImageNet model (folded batch norm -> FrozenBN with mean 0
    and variance 1), the rest by `_CAFFE2_DETECTRON_RULES`; `model` receives the trunk as a side
    effect (as `convert_torchvision_classification`).
    """
    trunk = {k: v for k, v in state_dict.items() if is_caffe2_trunk_key(k)}
    converted, trunk_report = convert_torchvision_classification(
        caffe2_to_torchvision(trunk), model
    )
    blobs: dict[str, Any] = {
        k: v
        for k, v in state_dict.items()
        if not is_caffe2_trunk_key(k) and isinstance(v, (np.ndarray, Tensor))
    }
    ignored = [k for k in blobs if any(re.fullmatch(p, k) for p in _CAFFE2_DETECTRON_IGNORED)]
    rest = {_caffe2_param(k): v for k, v in blobs.items() if k not in ignored}
    heads, report = _convert(rest, _CAFFE2_DETECTRON_RULES, "caffe2-detectron", None)
    report.ignored += ignored
    report.renamed = {**trunk_report.renamed, **report.renamed}
    report.unmatched += [k for k in trunk_report.unmatched if not k.startswith("fc")]
    converted.update(heads)
    _check_against(converted, model, report)
    return converted, report


Converter = Callable[..., tuple[dict[str, Tensor], ConversionReport]]

SOURCES: dict[str, Converter] = {
    "torchvision": convert_torchvision_detection,
    "torchvision-classification": convert_torchvision_classification,
    "maskrcnn_benchmark": convert_maskrcnn_benchmark,
    "detectron2": convert_detectron2,
    "caffe2-detectron": convert_caffe2_detectron,
}


def convert_state_dict(
    source: str, state_dict: Mapping[str, Any], model: nn.Module | None = None
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Dispatches to the converter of `source` (a key of `SOURCES`); `model` is our target
    (required for "torchvision-classification", optional otherwise: it enables the checks)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source '{source}'; known: {', '.join(SOURCES)}")
    if source in ("torchvision-classification", "caffe2-detectron"):
        if model is None:
            raise ValueError(f"source '{source}' needs the target model")
        return SOURCES[source](state_dict, model)
    return SOURCES[source](state_dict, model)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays (detectron2's .pkl) and refuses any other class."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: a weights .pkl holds only numpy arrays"
            )
        return super().find_class(module, name)


def load_source_file(path: str | Path) -> dict[str, Any]:
    """The state dict inside a checkpoint file: a .pkl of numpy arrays (detectron2) or a .pth /
    .pt loaded with ``weights_only=True``; a "model" (or "state_dict") entry is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".pkl":
        with path.open("rb") as f:
            data = _ArrayUnpickler(f, encoding="latin1").load()
    else:
        data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a dict of weights, got {type(data).__name__}")
    for entry in ("model", "state_dict", "blobs"):  # "blobs": Caffe2 / Detectron .pkl
        if entry in data and isinstance(data[entry], Mapping):
            return dict(cast(Mapping[str, Any], data[entry]))
    return dict(cast(Mapping[str, Any], data))


# --------------------------------------------------------------------------------------------
# Recognising a source
# --------------------------------------------------------------------------------------------
def detection_source(state: Mapping[str, Any]) -> str | None:
    """ "detectron2" or "torchvision" when `state` is that project's detection model, else None."""
    if any(k.startswith("backbone.bottom_up.") for k in state):
        return "detectron2"
    if any(k.startswith(("roi_heads.box_head.fc6.", "rpn.head.conv.0.")) for k in state):
        return "torchvision"
    return None


def to_our_layout(state: dict[str, Any], model: nn.Module) -> tuple[dict[str, Any], str | None]:
    """`state` in our layout where its source is recognised: a Detectron (Caffe2) detection
    model -> ours (for `model`, which receives its trunk); a Caffe2 ImageNet ResNet ->
    torchvision's classifier layout (which `load_torchvision_weights` reads); torchvision or
    detectron2 detection models -> ours. Returns (state, the source converted or None)."""
    if is_caffe2_detectron(state):
        return convert_caffe2_detectron(state, model)[0], "caffe2-detectron"
    if is_caffe2_imagenet(state):
        return caffe2_to_torchvision(state), "caffe2-imagenet"
    source = detection_source(state)
    if source is None:
        return state, None
    converted, _ = convert_state_dict(source, state)
    return converted, source
