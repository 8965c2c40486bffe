"""A trained model back from its files: the config it was trained with, its weights, its class
names. `detector.Predictor` and `detector.export` both start here (and never import each other).

A weights file is a training checkpoint (detector.engine.checkpoint) or a slim checkpoint
(detector.export.slim writes it; `is_slim` recognises it): {"model", "config" (YAML text),
"class_names", "meta": {"format": SLIM_FORMAT, ...}}.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from torch import Tensor

from detector.config import Config, load_config
from detector.engine.checkpoint import load_checkpoint_file, load_model_weights
from detector.modeling.detector import GeneralizedRCNN

__all__ = [
    "SLIM_FORMAT",
    "SLIM_FORMAT_VERSION",
    "class_names_from_config",
    "is_slim",
    "keypoint_info_from_config",
    "load_model",
    "load_trained",
    "resolve_config",
]

logger = logging.getLogger(__name__)

SLIM_FORMAT = "detector-slim"
SLIM_FORMAT_VERSION = 1


def is_slim(data: Mapping[str, Any]) -> bool:
    """Whether a loaded checkpoint dict is a slim checkpoint."""
    meta: object = data.get("meta")
    return (
        isinstance(meta, Mapping)
        and cast("Mapping[str, object]", meta).get("format") == SLIM_FORMAT
    )


def _config_from_yaml_text(text: str, source: str) -> Config:
    """A config from YAML text (as embedded in a slim checkpoint), through `load_config`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text)
        try:
            return load_config(path)
        except ValueError as e:
            raise ValueError(f"the config embedded in {source} does not load: {e}") from None


def resolve_config(
    config: str | Path | Config | None, weights: Path, data: dict[str, Any]
) -> Config:
    """The config: a YAML path, a config object, or (None) the one the checkpoint embeds, else
    the config.yaml that training wrote next to the checkpoint."""
    if config is not None:
        return load_config(config) if isinstance(config, (str, Path)) else config
    if isinstance(data.get("config"), str):
        return _config_from_yaml_text(data["config"], str(weights))
    beside = weights.parent / "config.yaml"
    if beside.is_file():
        logger.info("using %s, written by the training run next to %s", beside, weights)
        return load_config(beside)
    raise ValueError(
        f"{weights} embeds no config and there is no config.yaml next to it; pass a config "
        "(a YAML file or a config object), or export a slim checkpoint with tools/export.py, "
        "which embeds it"
    )


def load_model(
    cfg: Config, weights: str | Path, data: dict[str, Any] | None = None
) -> GeneralizedRCNN:
    """Builds GeneralizedRCNN from `cfg` and loads `weights` strictly (float16 slim weights are
    cast to the model's dtype). Returns the model in eval mode on the CPU."""
    weights = Path(weights)
    if data is None:
        data = load_checkpoint_file(weights)
    state = _state_dict(data, weights)
    model = GeneralizedRCNN.from_config(cfg)
    name = (
        f"the model of this config (MODEL.BACKBONE.CONV_BODY {cfg.MODEL.BACKBONE.CONV_BODY}, "
        f"MODEL.MASK_ON {cfg.MODEL.MASK_ON})"
    )
    load_model_weights(model, state, strict=True, source=str(weights), model_name=name)
    return model.eval()


def _state_dict(data: dict[str, Any], weights: Path) -> dict[str, Tensor]:
    """The checkpoint's "model" entry (or the bare state dict it is)."""
    state: object = data.get("model", data)
    if isinstance(state, dict):
        entries = cast("dict[str, object]", state)
        if all(isinstance(v, Tensor) for v in entries.values()):
            return cast("dict[str, Tensor]", entries)
    raise ValueError(
        f"{weights} holds no model weights (expected a 'model' state dict; keys: "
        f"{', '.join(map(str, data))})"
    )


def load_trained(
    config: str | Path | Config | None, weights: str | Path
) -> tuple[GeneralizedRCNN, Config, dict[str, Any]]:
    """(model in eval mode on the CPU, its config, the checkpoint dict) of a weights file and
    a config (None: the one the file embeds or that training wrote beside it)."""
    weights = Path(weights)
    data = load_checkpoint_file(weights)
    cfg = resolve_config(config, weights, data)
    return load_model(cfg, weights, data), cfg, data


def class_names_from_config(cfg: Config) -> list[str]:
    """The class names (index 0 the background): DATASETS.CLASS_NAMES; else the built-in COCO
    names for a model of COCO categories (91 classes: torchvision's layout by category id; 81
    with a built-in coco_* dataset); else those of the first DATASETS.TEST or DATASETS.TRAIN
    dataset that can be opened; [] when none can (one warning)."""
    if len(cfg.DATASETS.CLASS_NAMES):
        return ["__background__", *map(str, cfg.DATASETS.CLASS_NAMES)]
    names = [str(n) for n in (*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN)]
    coco = _coco_names(cfg, names)
    if coco:
        return coco
    from detector.data import DatasetError, get_dataset

    failures: list[str] = []
    for name in names:
        try:
            return [str(c) for c in get_dataset(name, cfg).class_names]
        except (DatasetError, OSError) as e:
            failures.append(f"'{name}' ({e})")
    if failures:
        logger.warning("class names: cannot open dataset %s", "; ".join(failures))
    return []


def _coco_names(cfg: Config, dataset_names: list[str]) -> list[str] | None:
    """COCO's names when the model predicts COCO categories (see class_names_from_config)."""
    from detector.data.datasets.coco_categories import coco_class_names

    num_classes = cfg.MODEL.ROI_BOX_HEAD.NUM_CLASSES
    builtin_coco = any(
        n.startswith("coco_") and n not in cfg.DATASETS.CUSTOM for n in dataset_names
    )
    if num_classes == 91 or (num_classes == 81 and builtin_coco):
        return coco_class_names(num_classes)
    return None


def keypoint_info_from_config(cfg: Config) -> dict[str, Any] | None:
    """{"names", "skeleton" (0-based pairs)} of a keypoint model (MODEL.KEYPOINT_ON): those of
    the first DATASETS.TEST or DATASETS.TRAIN dataset that opens and has keypoints; else
    "keypoint_<k>" names and no skeleton. None for other models."""
    if not cfg.MODEL.KEYPOINT_ON:
        return None
    from detector.data import DatasetError, get_dataset

    for name in (*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN):
        try:
            meta = get_dataset(str(name), cfg).keypoint_meta
        except (DatasetError, OSError):
            continue
        if meta is not None:
            return {"names": list(meta.names), "skeleton": meta.skeleton_indices}
    count = int(cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_CLASSES)
    return {"names": [f"keypoint_{k}" for k in range(count)], "skeleton": []}
