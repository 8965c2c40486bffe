"""The shapes Keypoint R-CNN recipe (configs/shapes/keypoint_rcnn_R_18_FPN_shapes.yaml): its
config, the whole path on a few iterations (train, evaluate OKS, slim export, demo pictures and
JSON with keypoints), and (slow) the accuracy goal: keypoint AP (OKS) >= 0.7 on shapes_kp_val
from scratch (docs/benchmarks.md has the measured figures and times)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from detector.config import load_config
from detector.data import get_dataset

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "shapes" / "keypoint_rcnn_R_18_FPN_shapes.yaml"


def test_keypoint_recipe_is_consistent() -> None:
    cfg = load_config(RECIPE)
    assert cfg.MODEL.KEYPOINT_ON and not cfg.MODEL.MASK_ON and cfg.MODEL.WEIGHT == ""
    steps = list(cfg.SOLVER.STEPS)
    assert steps == sorted(steps) and steps[-1] < cfg.SOLVER.MAX_ITER
    assert cfg.SOLVER.WARMUP_ITERS < steps[0]
    spec = cfg.DATASETS.CUSTOM[cfg.DATASETS.TRAIN[0]]
    assert spec.FORMAT == "shapes" and spec.KEYPOINTS and spec.SEED != 1  # val is seed 1
    val = get_dataset(cfg.DATASETS.TEST[0], cfg)
    assert val.keypoint_meta.num_keypoints == cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_CLASSES
    assert (
        cfg.MODEL.ROI_KEYPOINT_HEAD.RESOLUTION == 4 * cfg.MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION
    )


def _run(*args: str) -> str:
    """A tool of this checkout (PYTHONPATH: the venv may point at another checkout)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DETECTOR_DEBUG", None)
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=1500, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _last_evaluation(output: Path) -> dict[str, float]:
    lines = (output / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if "keypoints/AP" in line][-1]


@pytest.mark.slow
def test_keypoint_recipe_end_to_end_on_a_few_iterations(tmp_path: Path) -> None:
    """Not the accuracy goal: every stage runs and writes what it should."""
    out = tmp_path / "run"
    _run("tools/train.py", "--config-file", str(RECIPE), "SOLVER.MAX_ITER", "4",
         "SOLVER.STEPS", "(2, 3)", "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0",
         "OUTPUT_DIR", str(out), "--num-threads", "1")  # fmt: skip
    metrics = _last_evaluation(out)
    assert {"keypoints/AP", "keypoints/AP50", "keypoints/AR", "bbox/AP"} <= set(metrics)
    assert "keypoints/AP-square" in metrics  # per-category table
    slim = tmp_path / "slim.pth"
    _run("tools/export.py", "--config-file", str(out / "config.yaml"), "MODEL.WEIGHT",
         str(out / "model_final.pth"), "--output", str(slim))  # fmt: skip
    images = tmp_path / "images"
    images.mkdir()
    from torchvision.io import write_png

    dataset = get_dataset("shapes_kp_val", load_config(RECIPE))
    write_png(dataset[0][0], str(images / "a.png"))
    demo = tmp_path / "demo"
    _run("tools/demo.py", "--weights", str(slim), "--input", str(images), "--output", str(demo),
         "--score-thresh", "0", "MODEL.ROI_HEADS.SCORE_THRESH", "0")  # fmt: skip
    records = json.loads((demo / "predictions.json").read_text())
    detections = records[0]["detections"]
    assert detections and len(detections[0]["keypoints"]) == 6
    assert all(len(point) == 3 for point in detections[0]["keypoints"])
    assert (demo / "a.png").stat().st_size > 0


@pytest.mark.slow  # 5-11 minutes on a shared 2-core machine
def test_keypoint_recipe_reaches_keypoint_ap_07(tmp_path: Path) -> None:
    _run("tools/train.py", "--config-file", str(RECIPE), "OUTPUT_DIR", str(tmp_path),
         "--num-threads", "1")  # fmt: skip
    assert _last_evaluation(tmp_path)["keypoints/AP"] >= 0.7
