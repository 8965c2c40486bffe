"""The README's main job (`make train`): train Mask R-CNN on the built-in shapes on the CPU,
evaluate box and mask AP, export the final weights, draw a few predictions, print where it all is.

    python tools/run_main_job.py [--config-file configs/shapes/mask_rcnn_R_18_FPN_shapes.yaml]
        [--output-dir output/shapes] [--eval-only --weights model_final.pth] [KEY VALUE ...]

Outputs under OUTPUT_DIR: the training run (model_final.pth, log.txt, metrics.jsonl, config.yaml,
tensorboard/), eval/ (shapes_val_coco.json ground truth, COCO results and metrics.json),
model_slim.pth (weights-only export), predictions/*.png.

`evaluate_shapes` is a self-contained stand-in for the shared inference code
(detector.engine.inference / detector.evaluation.build): it runs the model over the test loader,
maps detections back to original pixels, pastes the masks and scores them with COCOEvaluator on
a COCO-format ground truth built from the dataset.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from omegaconf import DictConfig
from torch import nn

from detector.config import ConfigError, dump_config, load_config
from detector.data import build_test_loader, get_dataset
from detector.data.datasets import DetectionDataset
from detector.evaluation import COCOEvaluator
from detector.modeling.roi_heads.mask_head import paste_masks_in_image
from detector.structures import Boxes, Instances

DEFAULT_CONFIG = "configs/shapes/mask_rcnn_R_18_FPN_shapes.yaml"
NUM_PREDICTION_IMAGES = 4
DRAW_SCORE_THRESH = 0.5
DRAW_SCALE = 3  # the 128 px shapes are upscaled for the prediction images

logger = logging.getLogger("detector.run_main_job")


# ---------------------------------------------------------------------------------------------
# Ground truth as COCO JSON
# ---------------------------------------------------------------------------------------------
def dataset_to_coco_dict(dataset: DetectionDataset) -> dict[str, Any]:
    """A COCO instances dict of `dataset`'s ground truth: image ids from get_meta, category ids
    1..K (the contiguous labels), boxes [x, y, w, h], masks as RLE (when the dataset has masks,
    else the box as a polygon), area = mask area (box area without masks), iscrowd 0."""
    class_names = list(dataset.class_names)
    images, annotations = [], []
    for index in range(len(dataset)):
        _, target, meta = dataset[index]
        images.append(
            {
                "id": int(meta["image_id"]),
                "file_name": str(meta["file_name"]),
                "height": int(meta["height"]),
                "width": int(meta["width"]),
            }
        )
        annotations.extend(_annotations(target, int(meta["image_id"]), len(annotations) + 1))
    categories = [{"id": k, "name": name} for k, name in enumerate(class_names) if k > 0]
    return {"images": images, "annotations": annotations, "categories": categories}


def _annotations(target: Instances, image_id: int, first_id: int) -> list[dict[str, Any]]:
    """COCO annotations of one image's target (gt_boxes, gt_classes, optional gt_masks)."""
    boxes = target.gt_boxes.tensor.tolist()
    labels = target.gt_classes.tolist()
    rles: list[dict[str, Any]] | None = None
    if target.has("gt_masks"):
        height, width = target.image_size
        bitmasks = target.gt_masks
        if not hasattr(bitmasks, "tensor"):  # PolygonMasks -> bitmaps
            bitmasks = (
                bitmasks.to_bitmasks(height, width) if hasattr(bitmasks, "to_bitmasks") else None
            )
        if bitmasks is not None:
            array = bitmasks.tensor.to(torch.uint8).numpy()  # (N, H, W)
            # (N, H, W) -> (H, W, N) Fortran order, as pycocotools.mask.encode needs.
            rles = mask_util.encode(np.asfortranarray(array.transpose(1, 2, 0)))
    annotations = []
    for k, ((x1, y1, x2, y2), label) in enumerate(zip(boxes, labels, strict=True)):
        ann: dict[str, Any] = {
            "id": first_id + k,
            "image_id": image_id,
            "category_id": int(label),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "iscrowd": 0,
        }
        if rles is not None:
            rle = rles[k]
            ann["area"] = float(mask_util.area(rle))
            ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        else:
            ann["area"] = float((x2 - x1) * (y2 - y1))
            ann["segmentation"] = [[x1, y1, x2, y1, x2, y2, x1, y2]]
        annotations.append(ann)
    return annotations


def write_coco_json(dataset: DetectionDataset, path: str | Path) -> Path:
    """Writes `dataset_to_coco_dict(dataset)` to `path`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataset_to_coco_dict(dataset)))
    return path


# ---------------------------------------------------------------------------------------------
# Inference and evaluation
# ---------------------------------------------------------------------------------------------
def to_original_size(pred: Instances, original_size: tuple[int, int]) -> Instances:
    """Detections in the network input's pixels -> original image pixels: boxes scaled by
    (W/w, H/h) and clipped; pred_masks (R, 1, M, M) probabilities pasted into (R, H, W) bool."""
    height, width = original_size
    in_h, in_w = pred.image_size
    boxes = pred.pred_boxes.tensor.clone()  # (R, 4)
    boxes[:, 0::2] *= width / in_w
    boxes[:, 1::2] *= height / in_h
    result = Instances(
        (height, width),
        pred_boxes=Boxes(boxes).clip((height, width)),
        scores=pred.scores,
        pred_classes=pred.pred_classes,
    )
    if pred.has("pred_masks"):
        masks = pred.pred_masks
        if masks.dim() == 4:  # (R, 1, M, M) probabilities -> (R, H, W) bool
            masks = paste_masks_in_image(masks[:, 0], result.pred_boxes, (height, width), 0.5)
        else:  # already pasted at the input size: resize the bool masks
            masks = (
                torch.nn.functional.interpolate(
                    masks[:, None].float(), size=(height, width), mode="nearest"
                )[:, 0]
                > 0.5
            )
        result.pred_masks = masks
    return result


def predict_dataset(
    model: nn.Module, cfg: DictConfig, dataset_name: str
) -> list[tuple[int, Instances]]:
    """(image_id, detections in original pixels) for every image of `dataset_name`."""
    return list(_iter_predictions(model, cfg, dataset_name))


def evaluate_shapes(
    model: nn.Module, cfg: DictConfig, dataset_name: str = "shapes_val", output_dir: str | Path = ""
) -> dict[str, float]:
    """Box and mask COCO AP of `model` on `dataset_name` (any dataset of the catalog whose
    targets carry gt_boxes/gt_masks): {"bbox/AP", "bbox/AP50", ..., "segm/AP50", ...}.

    Writes the ground truth JSON, the COCO results and metrics.json to `output_dir` ("":
    OUTPUT_DIR/eval).
    """
    out = Path(output_dir) if output_dir else Path(cfg.OUTPUT_DIR) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    dataset = get_dataset(dataset_name, cfg)
    gt_json = out / f"{dataset_name}_coco.json"
    if not gt_json.is_file():
        write_coco_json(dataset, gt_json)
    evaluator = COCOEvaluator(
        gt_json,
        output_dir=out,
        tasks=("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",),
        label_to_category_id={k: k for k in range(1, len(dataset.class_names))},
    )
    evaluator.reset()
    predictions = predict_dataset(model, cfg, dataset_name)
    for image_id, pred in predictions:
        evaluator.process([image_id], [pred])
    metrics = {k: float(v) for k, v in evaluator.evaluate().items()}
    (out / "metrics.json").write_text(json.dumps(_json_safe(metrics), indent=2))
    return metrics


# ---------------------------------------------------------------------------------------------
# Export and drawing
# ---------------------------------------------------------------------------------------------
def export_slim_checkpoint(
    model: nn.Module, cfg: DictConfig, class_names: list[str], path: str | Path
) -> Path:
    """Saves {"model": state_dict, "config": resolved YAML, "class_names": [...]} to `path`:
    no optimizer or schedule, loadable with torch.load(weights_only=True)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save({"model": state, "config": dump_config(cfg), "class_names": list(class_names)}, path)
    return path


def draw_predictions(
    model: nn.Module,
    cfg: DictConfig,
    dataset_name: str,
    output_dir: str | Path,
    num_images: int = NUM_PREDICTION_IMAGES,
    score_thresh: float = DRAW_SCORE_THRESH,
) -> list[Path]:
    """PNGs of the first `num_images` images of `dataset_name` with the detections scoring at
    least `score_thresh` (masks, boxes, "class score" labels), upscaled DRAW_SCALE times."""
    from torchvision.io import write_png
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    dataset = get_dataset(dataset_name, cfg)
    names = list(dataset.class_names)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    predictions = dict(predict_dataset_subset(model, cfg, dataset_name, num_images))
    for index in range(min(num_images, len(dataset))):
        image, _, meta = dataset[index]
        pred = predictions[int(meta["image_id"])]
        keep = pred.scores >= score_thresh
        height, width = image.shape[-2:]
        size = (height * DRAW_SCALE, width * DRAW_SCALE)
        canvas = torch.nn.functional.interpolate(image[None].float(), size=size, mode="nearest")
        canvas = canvas[0].to(torch.uint8)  # (1, 3, H', W') -> (3, H', W')
        if pred.has("pred_masks") and keep.any():
            masks = torch.nn.functional.interpolate(
                pred.pred_masks[keep][:, None].float(), size=size, mode="nearest"
            )[:, 0].bool()  # (R, 1, H', W') -> (R, H', W')
            canvas = draw_segmentation_masks(canvas, masks, alpha=0.45)
        if keep.any():
            labels = [
                f"{names[int(c)]} {float(s):.2f}"
                for c, s in zip(pred.pred_classes[keep], pred.scores[keep], strict=True)
            ]
            boxes = pred.pred_boxes.tensor[keep] * DRAW_SCALE
            canvas = draw_bounding_boxes(canvas, boxes, labels=labels, colors="yellow", width=2)
        path = out / f"{dataset_name}_{index:03d}.png"
        write_png(canvas, str(path))
        paths.append(path)
    return paths


def predict_dataset_subset(
    model: nn.Module, cfg: DictConfig, dataset_name: str, num_images: int
) -> list[tuple[int, Instances]]:
    """`predict_dataset` on the first `num_images` images only (the loader stops early)."""
    results: list[tuple[int, Instances]] = []
    for image_id, pred in _iter_predictions(model, cfg, dataset_name):
        results.append((image_id, pred))
        if len(results) >= num_images:
            break
    return results


@torch.no_grad()
def _iter_predictions(
    model: nn.Module, cfg: DictConfig, dataset_name: str
) -> Iterator[tuple[int, Instances]]:
    """Yields (image_id, detections in original pixels) over the test loader, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for images, _, metas in build_test_loader(cfg, dataset_name):
            preds = model([image.to(device) for image in images])
            for pred, meta in zip(preds, metas, strict=True):
                size = (int(meta["height"]), int(meta["width"]))
                yield int(meta["image_id"]), to_original_size(pred.to("cpu"), size)
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE")
    parser.add_argument("--output-dir", default="", help="OUTPUT_DIR (default: the config's)")
    parser.add_argument(
        "--eval-only", action="store_true", help="skip training; evaluate --weights"
    )
    parser.add_argument("--weights", default="", help="checkpoint for --eval-only")
    parser.add_argument(
        "--num-threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default; 1 is faster on a machine shared by jobs)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE")
    return parser.parse_args(argv)


def _load_model(cfg: DictConfig, weights: str) -> nn.Module:
    from detector.engine.checkpoint import load_checkpoint_file
    from detector.modeling.detector import GeneralizedRCNN

    model = GeneralizedRCNN.from_config(cfg)
    state = load_checkpoint_file(weights)
    state = state.get("model", state) if isinstance(state, dict) else state
    model.load_state_dict(state)
    return model.to(torch.device(str(cfg.MODEL.DEVICE)))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Trains (unless --eval-only), evaluates on DATASETS.TEST[0], exports, draws; returns a
    summary dict of paths, metrics and timings."""
    start = time.perf_counter()
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    opts = list(args.opts)
    if args.output_dir:
        opts += ["OUTPUT_DIR", args.output_dir]
    cfg = load_config(args.config_file, opts)
    output_dir = Path(cfg.OUTPUT_DIR)
    test_name = str(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else "shapes_val"
    summary: dict[str, Any] = {"output_dir": str(output_dir), "config": args.config_file}
    if args.eval_only:
        if not args.weights:
            raise ValueError("--eval-only needs --weights PATH")
        model = _load_model(cfg, args.weights)
        summary["checkpoint"] = args.weights
        train_s = 0.0
    else:
        from detector.engine.launch import train

        result = train(cfg)
        model = result.model
        summary["checkpoint"] = str(result.final_checkpoint)
        train_s = time.perf_counter() - start
    eval_start = time.perf_counter()
    metrics = evaluate_shapes(model, cfg, test_name, output_dir / "eval")
    summary["eval_s"] = time.perf_counter() - eval_start
    summary["metrics"] = metrics
    class_names = list(get_dataset(test_name, cfg).class_names)
    slim = export_slim_checkpoint(model, cfg, class_names, output_dir / "model_slim.pth")
    summary["slim_checkpoint"] = str(slim)
    pngs = draw_predictions(model, cfg, test_name, output_dir / "predictions")
    summary["predictions"] = [str(p) for p in pngs]
    summary["train_s"] = train_s
    summary["total_s"] = time.perf_counter() - start
    (output_dir / "main_job_summary.json").write_text(json.dumps(_json_safe(summary), indent=2))
    return summary


def _json_safe(value: Any) -> Any:
    """`value` with NaN floats (COCO's "no such object", e.g. APl) as None: strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


def print_summary(summary: dict[str, Any], test_name: str = "shapes_val") -> None:
    metrics = summary["metrics"]
    print("=" * 72)
    print(f"config:             {summary['config']}")
    print(f"outputs:            {summary['output_dir']}  (log.txt, metrics.jsonl, tensorboard/)")
    print(f"final checkpoint:   {summary['checkpoint']}")
    print(f"slim export:        {summary['slim_checkpoint']}  (torch.load(weights_only=True))")
    print(f"evaluation:         {Path(summary['output_dir']) / 'eval'}")
    for key in ("bbox/AP50", "bbox/AP", "segm/AP50", "segm/AP"):
        if key in metrics:
            print(f"  {test_name} {key:10s} {metrics[key]:.4f}")
    print("predictions:        " + ("\n                    ".join(summary["predictions"])))
    print(
        f"time:               train {summary['train_s']:.0f} s, eval {summary['eval_s']:.0f} s, "
        f"total {summary['total_s']:.0f} s"
    )
    print("=" * 72)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        summary = run(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
