"""The README's main job (`make train`): train Mask R-CNN on the built-in shapes on the CPU,
evaluate box and mask AP, export a slim checkpoint, draw a few predictions, print where it all is.

    python tools/run_main_job.py [--config-file configs/shapes/mask_rcnn_R_18_FPN_shapes.yaml]
        [--output-dir output/shapes] [--eval-only --weights model_final.pth] [KEY VALUE ...]

Outputs under OUTPUT_DIR: the training run (model_final.pth, log.txt, metrics.jsonl, config.yaml,
tensorboard/), eval/ (ground truth as COCO JSON, COCO results, metrics), model_slim.pth
(tools/export.py's slim checkpoint), predictions/*.png and main_job_summary.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detector.config import Config, load_config
from detector.data import get_dataset
from detector.engine.launch import default_argument_parser, run_tool_main

DEFAULT_CONFIG = "configs/shapes/mask_rcnn_R_18_FPN_shapes.yaml"
NUM_PREDICTION_IMAGES = 4
DRAW_SCORE_THRESH = 0.5
DRAW_SCALE = 3  # the 128 px shapes are upscaled before prediction so the pictures are legible


def evaluate(model: nn.Module, cfg: Config, dataset_name: str, output_dir: Path) -> dict:
    """Box (and mask) AP of `model` on `dataset_name`, through the shared evaluation code."""
    from detector.engine.evaluate import build_dataset_evaluation, run_evaluation

    loader, evaluator = build_dataset_evaluation(cfg, dataset_name, output_dir)
    return run_evaluation(cfg, model, loader, evaluator)


def draw_predictions(cfg: Config, weights: Path, dataset_name: str, output_dir: Path) -> list[Path]:
    """PNGs of the first images of `dataset_name` with the slim checkpoint's detections."""
    from torchvision.io import write_png

    from detector import Predictor
    from detector.utils.visualization import draw, select

    dataset = get_dataset(dataset_name, cfg)
    count = min(NUM_PREDICTION_IMAGES, len(dataset))
    images = []
    for index in range(count):
        image = dataset[index][0]  # (3, H, W) uint8 -> (3, 3H, 3W)
        images.append(F.interpolate(image[None], scale_factor=DRAW_SCALE, mode="nearest")[0])
    predictor = Predictor(cfg, weights, device=str(cfg.MODEL.DEVICE))
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (image, result) in enumerate(zip(images, predictor(images), strict=True)):
        path = output_dir / f"{dataset_name}_{index:03d}.png"
        write_png(draw(image, select(result, DRAW_SCORE_THRESH)), str(path))
        paths.append(path)
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = default_argument_parser(
        __doc__.splitlines()[0], "SOLVER.MAX_ITER 200", config_required=False
    )
    parser.set_defaults(config_file=DEFAULT_CONFIG)
    parser.add_argument("--output-dir", default="", help="OUTPUT_DIR (default: the config's)")
    parser.add_argument("--eval-only", action="store_true", help="skip training; use --weights")
    parser.add_argument("--weights", default="", help="training checkpoint for --eval-only")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _trained_model(cfg: Config, args: argparse.Namespace) -> tuple[nn.Module, Path]:
    """Trains (or, with --eval-only, loads --weights); returns the model and its checkpoint."""
    if args.eval_only:
        from detector.engine.evaluate import load_test_weights
        from detector.modeling.detector import GeneralizedRCNN

        if not args.weights:
            raise ValueError("--eval-only needs --weights PATH")
        model = GeneralizedRCNN.from_config(cfg).to(torch.device(str(cfg.MODEL.DEVICE)))
        load_test_weights(model, args.weights)
        return model, Path(args.weights)
    from detector.engine.launch import train

    result = train(cfg)
    return result.model, Path(result.final_checkpoint)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Trains, evaluates on DATASETS.TEST[0], exports, draws; returns a summary of paths,
    metrics and timings (also written to OUTPUT_DIR/main_job_summary.json)."""
    from detector.export.slim import export_slim

    start = time.perf_counter()
    opts = list(args.opts) + (["OUTPUT_DIR", args.output_dir] if args.output_dir else [])
    cfg = load_config(args.config_file, opts)
    output_dir = Path(cfg.OUTPUT_DIR)
    test_name = str(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else "shapes_val"
    model, checkpoint = _trained_model(cfg, args)
    train_s = time.perf_counter() - start
    metrics = evaluate(model, cfg, test_name, output_dir / "eval")
    eval_s = time.perf_counter() - start - train_s
    slim = output_dir / "model_slim.pth"
    export_slim(checkpoint, slim, cfg, class_names=get_dataset(test_name, cfg).class_names)
    pngs = draw_predictions(cfg, slim, test_name, output_dir / "predictions")
    summary = {
        "config": args.config_file,
        "output_dir": str(output_dir),
        "checkpoint": str(checkpoint),
        "slim_checkpoint": str(slim),
        "metrics": {k: (None if v != v else v) for k, v in metrics.items()},  # NaN -> null
        "predictions": [str(p) for p in pngs],
        "train_s": train_s,
        "eval_s": eval_s,
        "total_s": time.perf_counter() - start,
    }
    (output_dir / "main_job_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    metrics = summary["metrics"]
    lines = [
        f"config:             {summary['config']}",
        f"outputs:            {summary['output_dir']}  (log.txt, metrics.jsonl, tensorboard/)",
        f"final checkpoint:   {summary['checkpoint']}",
        f"slim export:        {summary['slim_checkpoint']}  (Predictor, tools/demo.py)",
        f"evaluation:         {Path(summary['output_dir']) / 'eval'}",
        *(
            f"  {key:18s}{metrics[key]:.4f}"
            for key in ("bbox/AP50", "bbox/AP", "segm/AP50", "segm/AP")
            if metrics.get(key) is not None
        ),
        "predictions:        " + "\n                    ".join(summary["predictions"]),
        f"time:               train {summary['train_s']:.0f} s, eval {summary['eval_s']:.0f} s, "
        f"total {summary['total_s']:.0f} s",
    ]
    print("\n".join(["=" * 72, *lines, "=" * 72]))


def main_job(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO)
    print_summary(run(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool_main(build_parser(), main_job, argv)


if __name__ == "__main__":
    sys.exit(main())
