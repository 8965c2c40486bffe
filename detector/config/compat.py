"""maskrcnn_benchmark's config keys that are spelled differently here, or not supported.

Every file and command line is translated before it is merged (`translate`):
- renamed keys move to ours, values converted where the meaning needs it
  (SOLVER.TEST_PERIOD -> TEST.EVAL_PERIOD, DTYPE "float16" -> SOLVER.AMP, ...);
- MODEL.RESNETS.TRANS_FUNC / STEM_FUNC select the trunk's normalization (MODEL.RESNETS.NORM);
- keys whose job is done elsewhere here are dropped (`_DROPPED`);
- keys of features this project does not have are refused with the reason, unless their value
  leaves the feature off (maskrcnn_benchmark's own defaults, e.g. MODEL.RETINANET_ON False), which
  is what this project does anyway.
A renamed key and its new name given different values in the same file is an error.

Defaults: where this project's defaults differ from maskrcnn_benchmark's (because another value
measured better on real data, docs/accuracy.md), a file chain that sets no top-level VERSION
(maskrcnn_benchmark's files never do) is read with maskrcnn_benchmark's values
(`MASKRCNN_BENCHMARK_DEFAULTS`, merged before the files); this project's configs set VERSION: 2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from detector.utils.guards import is_dict

__all__ = [
    "CURRENT_VERSION",
    "MASKRCNN_BENCHMARK_DEFAULTS",
    "MASKRCNN_BENCHMARK_VERSION",
    "translate",
]

CURRENT_VERSION = 2  # this project's defaults (detector.config.defaults)
MASKRCNN_BENCHMARK_VERSION = 1
#: maskrcnn_benchmark's defaults where ours differ (ours, and why, in detector.config.defaults)
MASKRCNN_BENCHMARK_DEFAULTS: dict[str, Any] = {
    "MODEL": {
        "RPN": {"STRADDLE_THRESH": 0, "FPN_POST_NMS_PER_BATCH": True},
        "ROI_BOX_HEAD": {"SMOOTH_L1_BETA": 1.0},
    },
    # maskrcnn_benchmark's optimizer: biases at 2x the lr without decay; every other parameter,
    # GroupNorm weights included, with WEIGHT_DECAY (None).
    "SOLVER": {"BIAS_LR_FACTOR": 2.0, "WEIGHT_DECAY_BIAS": 0.0, "WEIGHT_DECAY_NORM": None},
}

_RENAMED: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "SOLVER.TEST_PERIOD": ("TEST.EVAL_PERIOD", lambda v: v),
    "MODEL.CLS_AGNOSTIC_BBOX_REG": ("MODEL.ROI_HEADS.CLS_AGNOSTIC_BBOX_REG", lambda v: v),
    "TEST.DETECTIONS_PER_IMG": ("MODEL.ROI_HEADS.DETECTIONS_PER_IMG", lambda v: v),
}

# Keys accepted and dropped: what they switch on always happens here.
_DROPPED = (
    # detector_postprocess always pastes the masks into the original image (mask-paste
    # threshold: MODEL.ROI_MASK_HEAD.POSTPROCESS_MASKS_THRESHOLD).
    "MODEL.ROI_MASK_HEAD.POSTPROCESS_MASKS",
)

_TRUNK_FUNCS = {
    "MODEL.RESNETS.TRANS_FUNC": {
        "BottleneckWithFixedBatchNorm": "FrozenBN",
        "BottleneckWithGN": "GN",
    },
    "MODEL.RESNETS.STEM_FUNC": {"StemWithFixedBatchNorm": "FrozenBN", "StemWithGN": "GN"},
}

# key (or group) -> (values that leave the feature off, why it is refused otherwise)
_UNSUPPORTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "MODEL.RETINANET_ON": ((False,), "RetinaNet is not supported: this project builds two-stage "
                           "detectors (Faster/Mask R-CNN); use an e2e_faster_rcnn config"),
    "MODEL.RETINANET": ((), "RetinaNet is not supported (see MODEL.RETINANET_ON)"),
    "MODEL.FBNET": ((), "FBNet backbones are not supported; use a ResNet, ResNeXt or VGG "
                    "MODEL.BACKBONE.CONV_BODY"),
    "PATHS_CATALOG": ((), "a Python paths catalog is not read: use the built-in dataset names "
                      "(maskrcnn_benchmark's included, datasets/README.md) or DATASETS.CUSTOM"),
}  # fmt: skip


class CompatError(ValueError):
    """A maskrcnn_benchmark key that cannot be honoured (the message says why)."""


def _pop(data: dict[str, Any], key: str) -> tuple[bool, Any]:
    """Removes a dotted key from nested dicts (and groups left empty); (found, value)."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            return False, None
        node = node[part]
    if parts[-1] not in node:
        return False, None
    value = node.pop(parts[-1])
    _prune(data, parts[:-1])
    return True, value


def _prune(data: dict[str, Any], parts: list[str]) -> None:
    for depth in range(len(parts), 0, -1):
        node = data
        for part in parts[: depth - 1]:
            node = node[part]
        if node.get(parts[depth - 1]) == {}:
            del node[parts[depth - 1]]


def _get(data: dict[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = data
    for part in key.split("."):
        if not is_dict(node) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _put(data: dict[str, Any], key: str, value: Any, source: str, old_key: str) -> None:
    found, current = _get(data, key)
    if found and current != value:
        raise CompatError(
            f"{source}: {old_key} = {value!r} (maskrcnn_benchmark's name) and {key} = "
            f"{current!r} disagree; keep one of them"
        )
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _refuse_unsupported(data: dict[str, Any], source: str) -> None:
    for key, (neutral, why) in _UNSUPPORTED.items():
        found, value = _get(data, key)
        if not found:
            continue
        if not isinstance(value, dict) and value in neutral:
            _pop(data, key)
            continue
        raise CompatError(f"{source}: {key}: {why}")


def _trunk_norm(data: dict[str, Any], source: str) -> None:
    """TRANS_FUNC / STEM_FUNC -> MODEL.RESNETS.NORM. The FixedBatchNorm names are
    maskrcnn_benchmark's defaults (and what configs saved by older versions hold): they leave
    NORM as it is; the GN names set it to GN."""
    asked: dict[str, str] = {}
    for key, names in _TRUNK_FUNCS.items():
        found, value = _pop(data, key)
        if not found:
            continue
        if value not in names:
            raise CompatError(
                f"{source}: {key} = {value!r} is not a known function; known: "
                f"{', '.join(names)} (or set MODEL.RESNETS.NORM: FrozenBN, BN, SyncBN or GN)"
            )
        asked[key] = names[value]
    if len(set(asked.values())) > 1:
        raise CompatError(
            f"{source}: MODEL.RESNETS.TRANS_FUNC and STEM_FUNC ask for different normalizations "
            f"({asked}); this project normalizes the stem and the blocks alike"
        )
    for key, norm in asked.items():
        if norm == "GN":
            _put(data, "MODEL.RESNETS.NORM", "GN", source, key)


def translate(data: dict[str, Any], source: str) -> dict[str, Any]:
    """`data` (nested dicts of one file or the command line) with maskrcnn_benchmark's keys
    translated; raises CompatError for a feature that is not supported."""
    _refuse_unsupported(data, source)
    for key in _DROPPED:
        _pop(data, key)
    for old, (new, convert) in _RENAMED.items():
        found, value = _pop(data, old)
        if found:
            _put(data, new, convert(value), source, old)
    found, dtype = _pop(data, "DTYPE")
    if found:
        if dtype not in ("float32", "float16"):
            raise CompatError(f"{source}: DTYPE = {dtype!r}: expected float32 or float16")
        if dtype == "float16":
            _put(data, "SOLVER.AMP.ENABLED", True, source, "DTYPE")
            _put(data, "SOLVER.AMP.DTYPE", "float16", source, "DTYPE")
    _trunk_norm(data, source)
    return data
