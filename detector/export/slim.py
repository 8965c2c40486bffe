"""Slim checkpoints: the weights of a trained model, ready to ship.

A slim checkpoint is a dict saved with `torch.save` that `torch.load(weights_only=True)` reads
(only tensors, str, int, float, bool, dict and list inside):

    {"model": state_dict (floating tensors optionally float16),
     "config": the resolved config as YAML text (detector.config.dump_config),
     "class_names": ["__background__", "person", ...] ([] when unknown),
     "keypoints": {"names": ["nose", ...], "skeleton": [[0, 1], ...]}   (keypoint models only;
                  the skeleton as 0-based index pairs),
     "meta": {"format": "detector-slim", "format_version": 1, "framework_version": "0.1.0",
              "iteration": 90000, "dtype": "float32" | "float16", "source": "model_final.pth",
              "metrics": {"bbox/AP": 0.37, ...}}}

It drops what only training needs (optimizer, scheduler, scaler, RNG states), so it is smaller
than the training checkpoint by about twice the model's size with SGD momentum, and by half again
with `fp16=True`. `detector.Predictor` loads either kind.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from detector.config import Config
from detector.engine.checkpoint import atomic_write, load_checkpoint_file
from detector.engine.trained_model import (
    SLIM_FORMAT,
    SLIM_FORMAT_VERSION,
    class_names_from_config,
    is_slim,
    keypoint_info_from_config,
)

__all__ = [
    "SLIM_FORMAT",
    "SlimCheckpointError",
    "check_plain",
    "class_names_from_config",
    "export_slim",
    "is_slim",
    "make_slim",
    "metrics_from_log",
]

logger = logging.getLogger(__name__)


class SlimCheckpointError(ValueError):
    """A checkpoint that cannot be turned into (or read as) a slim checkpoint."""


def check_plain(value: Any, where: str = "checkpoint") -> None:
    """Raises SlimCheckpointError unless `value` holds only tensors, str, int, float, bool, dict
    (with str keys) and list: what `torch.load(weights_only=True)` reads in every version."""
    if isinstance(value, (Tensor, str, bool, int, float)):
        return
    if isinstance(value, Mapping):
        for key, item in cast(Mapping[object, object], value).items():
            if not isinstance(key, str):
                raise SlimCheckpointError(f"{where}: key {key!r} is not a string")
            check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, list):
        for i, item in enumerate(cast(list[object], value)):
            check_plain(item, f"{where}[{i}]")
        return
    raise SlimCheckpointError(
        f"{where} is a {type(value).__name__}; a slim checkpoint holds only tensors, str, int, "
        "float, bool, dict and list"
    )


def _plain_metrics(metrics: Any) -> dict[str, float]:
    """Nested metric dicts flattened to {"bbox/AP": float}; non-numbers and non-finite dropped."""
    from detector.utils.metrics import flatten_dict

    if not isinstance(metrics, Mapping):
        return {}
    flat = flatten_dict(cast(Mapping[str, Any], metrics))
    return {k: v for k, v in flat.items() if math.isfinite(v)}


def metrics_from_log(run_dir: str | Path, iteration: int | None) -> dict[str, float]:
    """The newest evaluation results in `run_dir`/metrics.jsonl at or before `iteration`: the
    entries whose names hold a "/" ("bbox/AP", "segm/AP50", "bbox/mAP"), as EvalHook writes
    them. {} without a log."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return {}
    found: dict[str, float] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if not isinstance(record, dict):
            continue
        record = cast(dict[str, object], record)  # a JSON object
        step = record.get("iteration")
        if iteration is not None and isinstance(step, int) and step > iteration:
            continue
        evaluation = {
            k: float(v)
            for k, v in record.items()
            if "/" in k and isinstance(v, (int, float)) and math.isfinite(v)
        }
        if evaluation:
            found = evaluation
    return found


def _slim_state_dict(state_dict: Mapping[str, Any], fp16: bool) -> dict[str, Tensor]:
    """Detached, contiguous CPU copies of the tensors; floating ones as float16 with `fp16`."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise SlimCheckpointError(
                f"model state dict entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        tensor = value.detach().cpu()
        if fp16 and tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        out[key] = tensor.contiguous().clone()  # no storage shared with dropped tensors
    return out


def make_slim(
    state_dict: Mapping[str, Tensor],
    *,
    config_yaml: str,
    class_names: Sequence[str] = (),
    iteration: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    fp16: bool = False,
    source: str = "",
    keypoints: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The slim checkpoint dict (see the module docstring) of a model's `state_dict`.

    Args:
        state_dict: the model's weights (name -> tensor).
        config_yaml: the resolved config, `dump_config(cfg)`.
        class_names: index 0 the background, then the K - 1 object classes ([]: unknown).
        iteration: the training iteration the weights come from (-1 stored when unknown).
        metrics: evaluation results (nested dicts are flattened with "/").
        fp16: store floating tensors as float16 (the Predictor casts them back on load).
        source: the training checkpoint's file name, for the record.
        keypoints: {"names", "skeleton"} of a keypoint model (keypoint_info_from_config).
    """
    from detector import __version__

    data: dict[str, Any] = {
        "model": _slim_state_dict(state_dict, fp16),
        "config": str(config_yaml),
        "class_names": [str(name) for name in class_names],
        "meta": {
            "format": SLIM_FORMAT,
            "format_version": SLIM_FORMAT_VERSION,
            "framework_version": str(__version__),
            "iteration": -1 if iteration is None else int(iteration),
            "dtype": "float16" if fp16 else "float32",
            "source": str(source),
            "metrics": _plain_metrics(metrics or {}),
        },
    }
    if keypoints is not None:
        data["keypoints"] = {
            "names": [str(n) for n in keypoints["names"]],
            "skeleton": [[int(a), int(b)] for a, b in keypoints["skeleton"]],
        }
    check_plain(data)
    return data


def export_slim(
    checkpoint: str | Path,
    output: str | Path,
    cfg: Config,
    *,
    fp16: bool = False,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Writes the slim checkpoint of a training checkpoint (or a bare state dict file).

    The metrics stored are the checkpoint's "metrics" entry if it has one, else the newest
    evaluation results in the metrics.jsonl of its folder up to its iteration.

    Args:
        checkpoint: a file written by detector.engine.checkpoint.Checkpointer.
        output: the slim file to write (atomically).
        cfg: the config the model was trained with; embedded as YAML.
        fp16: store floating weights as float16.
        class_names: index 0 the background ([]: from the config's datasets, see
            `class_names_from_config`).

    Returns:
        The slim checkpoint dict that was written.

    Raises:
        FileNotFoundError, UnsafeCheckpointError, CorruptCheckpointError: see
            detector.engine.checkpoint.load_checkpoint_file.
        SlimCheckpointError: a file without model weights.
    """
    from detector.config import dump_config

    checkpoint, output = Path(checkpoint), Path(output)
    data = load_checkpoint_file(checkpoint)
    state_dict: Mapping[str, Any]
    if is_slim(data):
        state_dict = data["model"]
    elif "model" in data and isinstance(data["model"], Mapping):
        state_dict = cast(Mapping[str, Any], data["model"])
    elif data and all(isinstance(v, Tensor) for v in data.values()):
        state_dict = data  # a bare state dict
    else:
        raise SlimCheckpointError(
            f"{checkpoint} has no model weights: expected a 'model' entry (a detector training "
            f"checkpoint) or a state dict; found keys {', '.join(map(str, data))}"
        )
    if class_names is None:
        class_names = class_names_from_config(cfg)
    iteration = data.get("iteration")
    meta = data.get("meta")
    if isinstance(meta, Mapping):
        iteration = cast(Mapping[str, Any], meta).get("iteration", iteration)
    no_meta: dict[str, Any] = {}
    metrics = _plain_metrics(data.get("metrics") or (data.get("meta") or no_meta).get("metrics"))
    if not metrics:  # the run's log, next to the checkpoint
        metrics = metrics_from_log(
            checkpoint.parent, iteration if isinstance(iteration, int) else None
        )
    slim = make_slim(
        state_dict,
        config_yaml=dump_config(cfg),
        class_names=class_names,
        iteration=iteration if isinstance(iteration, int) else None,
        metrics=metrics,
        fp16=fp16,
        source=checkpoint.name,
        keypoints=keypoint_info_from_config(cfg),
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, lambda f: torch.save(slim, f))
    logger.info(
        "wrote %s (%.1f MB, from %s, %.1f MB)",
        output,
        output.stat().st_size / 2**20,
        checkpoint,
        checkpoint.stat().st_size / 2**20,
    )
    return slim
