"""tools/run_main_job.py (`make train`): the recipe config, and the whole job (train, evaluate,
export, draw) end to end on a few iterations."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from detector.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "shapes" / "mask_rcnn_R_18_FPN_shapes.yaml"


def _load_job_module():
    spec = importlib.util.spec_from_file_location(
        "run_main_job", ROOT / "tools" / "run_main_job.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_main_job"] = module
    spec.loader.exec_module(module)
    return module


job = _load_job_module()


def test_recipe_schedule_is_consistent() -> None:
    cfg = load_config(RECIPE)
    assert cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.MASK_ON
    assert cfg.MODEL.WEIGHT == ""  # from scratch: nothing to download
    assert cfg.MODEL.RESNETS.NORM == "GN" and cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT == 0
    steps = list(cfg.SOLVER.STEPS)
    assert steps == sorted(steps) and steps[-1] < cfg.SOLVER.MAX_ITER
    assert cfg.SOLVER.WARMUP_ITERS < steps[0]
    assert cfg.MODEL.ROI_BOX_HEAD.NUM_CLASSES == 4
    assert list(cfg.DATASETS.TEST) == ["shapes_val"]
    spec = cfg.DATASETS.CUSTOM[cfg.DATASETS.TRAIN[0]]
    assert spec.FORMAT == "shapes" and spec.SEED != 1  # shapes_val is seed 1: no overlap


def test_eval_only_needs_weights(tmp_path: Path) -> None:
    args = job.parse_args(["--eval-only", "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--weights"):
        job.run(args)
    assert not (tmp_path / "main_job_summary.json").exists()


@pytest.mark.slow
def test_main_job_end_to_end_on_a_few_iterations(tmp_path: Path) -> None:
    """Not the accuracy goal (that takes the full schedule, see docs/benchmarks.md): every
    stage runs and leaves its files, and the numbers printed are the evaluator's."""
    opts = ["SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(2, 3)", "SOLVER.WARMUP_ITERS", "1"]
    opts += ["SOLVER.CHECKPOINT_PERIOD", "4", "DATALOADER.NUM_WORKERS", "0"]
    args = job.parse_args(["--output-dir", str(tmp_path), *opts])
    summary = job.run(args)
    assert {"bbox/AP50", "segm/AP50"} <= set(summary["metrics"])
    metrics = json.loads((tmp_path / "main_job_summary.json").read_text())["metrics"]
    assert metrics == summary["metrics"]
    assert all(v is None or 0.0 <= v <= 1.0 for v in metrics.values())
    slim = torch.load(tmp_path / "model_slim.pth", weights_only=True)
    assert slim["class_names"] == ["__background__", "square", "circle", "triangle"]
    assert len(summary["predictions"]) == 4
    assert all(Path(p).stat().st_size > 0 for p in summary["predictions"])
