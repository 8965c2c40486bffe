"""Run a detector on images and draw its detections.

    python tools/demo.py --config-file X.yaml --weights model_final_slim.pth \
        --input street.jpg photos/ --output demo_out [--score-thresh 0.5] [KEY VALUE ...]

Writes one picture per input (boxes, class names, scores, translucent masks, keypoints and their
skeleton) and predictions.json into the output folder. --config-file may be left out when the
weights are a slim checkpoint (tools/export.py), which embeds its config; KEY VALUE overrides
then apply to that config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detector.engine.launch import check_device, default_argument_parser, run_tool_main
from detector.utils.visualization import draw, select

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


def build_parser() -> argparse.ArgumentParser:
    parser = default_argument_parser(
        __doc__.splitlines()[0],
        "MODEL.ROI_HEADS.NMS 0.4 (applied to the slim checkpoint's config without --config-file)",
        config_required=False,
    )
    parser.add_argument("--weights", required=True, metavar="FILE", help="slim/training checkpoint")
    parser.add_argument(
        "--input", required=True, nargs="+", metavar="PATH", help="image files and/or folders"
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the results")
    parser.add_argument(
        "--score-thresh", type=float, default=0.5, help="draw and save detections above this"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named or found (not recursively) in the named folders, in order."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"--input {item}: no such file or folder")
    if not found:
        raise FileNotFoundError(f"--input {' '.join(map(str, inputs))}: no image files found")
    return found


def to_json(file_name: str, result: dict[str, Any]) -> dict[str, Any]:
    """One image's record: size and detections (box xyxy, score, label, class name, mask RLE,
    keypoints [[x, y, score], ...])."""
    height, width = result["image_size"]
    detections = []
    rles = _encode_masks(result["masks"]) if "masks" in result else None
    for i, box in enumerate(result["boxes"].tolist()):
        detection: dict[str, Any] = {
            "bbox_xyxy": [round(v, 2) for v in box],
            "score": round(float(result["scores"][i]), 4),
            "label": int(result["labels"][i]),
            "class_name": result["class_names"][i],
        }
        if rles is not None:
            detection["segmentation"] = rles[i]
        if "keypoints" in result:
            detection["keypoints"] = [[round(v, 2) for v in point]
                                      for point in result["keypoints"][i].tolist()]  # fmt: skip
        detections.append(detection)
    return {"file_name": file_name, "height": height, "width": width, "detections": detections}


def _encode_masks(masks: Tensor) -> list[dict[str, Any]]:
    """COCO run-length encodings (counts as text) of (N, H, W) bool masks."""
    import numpy as np
    from pycocotools import mask as mask_util

    if len(masks) == 0:
        return []
    array = np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8))  # (H, W, N)
    rles = mask_util.encode(array)
    return [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in rles]


def _output_name(path: Path, used: set[str]) -> str:
    """`<stem>.jpg` (PNG inputs stay PNG), made unique among the outputs."""
    suffix = ".png" if path.suffix.lower() == ".png" else ".jpg"
    name, n = path.stem + suffix, 1
    while name in used:
        name, n = f"{path.stem}_{n}{suffix}", n + 1
    used.add(name)
    return name


def demo_config(args: argparse.Namespace) -> Any:
    """--config-file with the overrides; without it, the overrides applied to the checkpoint's
    own config (None when there are none: Predictor then reads that config itself)."""
    from detector.config import load_config, merge_opts

    if args.config_file:
        return load_config(args.config_file, args.opts)
    if not args.opts:
        return None
    from detector.engine.checkpoint import load_checkpoint_file
    from detector.engine.trained_model import resolve_config

    weights = Path(args.weights)
    return merge_opts(resolve_config(None, weights, load_checkpoint_file(weights)), args.opts)


def run_demo(args: argparse.Namespace) -> Path:
    """Predicts, draws and writes; returns the predictions.json path."""
    from torchvision.io import write_jpeg, write_png

    from detector import Predictor
    from detector.data import read_image

    check_device(args.device, "--device")
    config = demo_config(args)
    files = collect_images(args.input)
    predictor = Predictor(config, args.weights, args.device, batch_size=args.batch_size)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    records, used = [], set()
    for start in range(0, len(files), predictor.batch_size):
        batch = files[start : start + predictor.batch_size]
        images = [read_image(f, int(predictor.cfg.INPUT.MAX_IMAGE_PIXELS)) for f in batch]
        for path, image, result in zip(batch, images, predictor(images), strict=True):
            result = select(result, args.score_thresh)
            name = _output_name(path, used)
            picture = draw(image, result, predictor.keypoint_skeleton)
            if name.endswith(".png"):
                write_png(picture, str(output / name))
            else:
                write_jpeg(picture, str(output / name), quality=90)
            record = to_json(str(path), result)
            record["output"] = name
            records.append(record)
            logging.info("%s: %d detections -> %s", path, len(result["scores"]), output / name)
    json_path = output / "predictions.json"
    json_path.write_text(json.dumps(records, indent=1))
    return json_path


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    with torch.no_grad():  # scoped: tests call main() in-process
        json_path = run_demo(args)
    print(f"wrote {json_path} and the drawn images next to it")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
