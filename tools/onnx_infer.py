"""Run an ONNX detector written by tools/export.py --format onnx on images, with onnxruntime,
numpy and Pillow only (no torch, no detector).

    python tools/onnx_infer.py model.onnx street.jpg [more.jpg ...] [--save results.npz]

For each image: resize as the model's test transform (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, read
from the file's metadata), run the graph (it normalizes and pads), then scale the boxes to the
original image and paste the masks into it. Prints one line per detection; --save writes an
.npz with, per image i, i/input (the network input), i/boxes (N, 4) float32 xyxy in original
pixels, i/scores (N,), i/labels (N,) int64, for Mask R-CNN i/masks (N, H, W) bool and, for
Keypoint R-CNN, i/keypoint_heatmaps (N, K, S, S): the graph's heatmap logits in box coordinates,
not decoded here (decoding resizes each detection's maps bicubically to its box: use
detector.modeling.roi_heads.keypoint_head.heatmaps_to_keypoints, or detector.Predictor).

The resize uses Pillow (INPUT.RESIZE_MODE antialias: antialiased bilinear, within 1 gray level
of detector's torchvision resize) or numpy (torchvision mode: plain bilinear on floats), so the
detections can differ slightly from detector.Predictor's on the same file; given the same
network input they are the same.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from PIL import Image

MASK_PADDING = 1  # zero pixels around each M x M mask before pasting (as torchvision)


def output_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The antialias mode's resized (height, width): shorter side to min_size, longer side
    within max_size (> 0), rounded to the nearest pixel."""
    scale = min_size / min(height, width)
    if max_size > 0 and max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def _linear_axis(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and the weight of i1 for bilinear sampling along one axis,
    align_corners=False, at the scale size_in / size_out (float32, as PyTorch)."""
    scale = np.float32(size_in / size_out)
    source = scale * (np.arange(size_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    source = np.maximum(source, np.float32(0.0))
    index0 = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
    index1 = np.minimum(index0 + 1, size_in - 1)
    return index0, index1, np.minimum(source - index0.astype(np.float32), np.float32(1.0))


def resize_torchvision(image: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """The torchvision mode's resize of an (H, W, 3) uint8 image: scale = min(min_size / short
    side, max_size / long side), floored sides, plain bilinear on floats -> (h, w, 3) float32."""
    height, width = image.shape[:2]
    scale = min(min_size / min(height, width), max_size / max(height, width))
    new_h, new_w = int(np.floor(height * scale)), int(np.floor(width * scale))
    pixels = image.astype(np.float32)
    if (new_h, new_w) == (height, width):
        return pixels
    r0, r1, rw = _linear_axis(height, new_h)
    c0, c1, cw = _linear_axis(width, new_w)
    rows = pixels[r0] * (1 - rw)[:, None, None] + pixels[r1] * rw[:, None, None]
    return rows[:, c0] * (1 - cw)[None, :, None] + rows[:, c1] * cw[None, :, None]


def network_input(image: Image.Image, meta: dict[str, str]) -> np.ndarray:
    """The graph's input of an RGB image: (3, h, w), uint8 (antialias) or float32 (torchvision)."""
    min_size, max_size = int(meta["min_size_test"]), int(meta["max_size_test"])
    if meta["resize_mode"] == "torchvision":
        resized = resize_torchvision(np.asarray(image), min_size, max_size)
    else:
        height, width = output_size(image.height, image.width, min_size, max_size)
        if (height, width) != (image.height, image.width):
            image = image.resize((width, height), Image.BILINEAR)
        resized = np.asarray(image)
    return np.ascontiguousarray(resized.transpose(2, 0, 1))


def _integer_boxes(boxes: np.ndarray, scale: float) -> np.ndarray:
    """Boxes (N, 4) float32 scaled about their centres by `scale`, truncated to int64."""
    half_w = (boxes[:, 2] - boxes[:, 0]) * np.float32(0.5) * np.float32(scale)
    half_h = (boxes[:, 3] - boxes[:, 1]) * np.float32(0.5) * np.float32(scale)
    center_x = (boxes[:, 2] + boxes[:, 0]) * np.float32(0.5)
    center_y = (boxes[:, 3] + boxes[:, 1]) * np.float32(0.5)
    corners = [center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h]
    return np.stack(corners, axis=1).astype(np.int64)


def _paste_axis(start: int, end: int, length: int, source_size: int) -> tuple[slice, tuple]:
    """The image pixels [start, end] inside [0, length) and, for each, the padded mask's two
    source indices and the second one's weight (bilinear, align_corners=False)."""
    first, last = max(start, 0), min(end, length - 1)
    pixels = np.arange(first, last + 1)
    scale = np.float32(source_size) / np.float32(max(end - start + 1, 1))
    source = scale * ((pixels - start).astype(np.float32) + np.float32(0.5)) - np.float32(0.5)
    source = np.clip(source, np.float32(0.0), np.float32(source_size - 1))
    index0 = np.floor(source).astype(np.int64)
    index1 = np.minimum(index0 + 1, source_size - 1)
    return slice(first, last + 1), (index0, index1, source - index0.astype(np.float32))


def paste_masks(
    probabilities: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int], threshold: float
) -> np.ndarray:
    """(N, 1, M, M) mask probabilities in box coordinates -> (N, H, W) bool masks of the image:
    each mask zero-padded by MASK_PADDING, resized bilinearly onto its box (scaled by
    (M + 2 * padding) / M, truncated to integers), then > threshold."""
    height, width = image_size
    masks = np.zeros((len(boxes), height, width), dtype=bool)
    if len(boxes) == 0:
        return masks
    padded = np.pad(probabilities[:, 0].astype(np.float32), ((0, 0), *[(MASK_PADDING,) * 2] * 2))
    size = padded.shape[-1]
    integer_boxes = _integer_boxes(boxes.astype(np.float32), size / probabilities.shape[-1])
    for k, (x0, y0, x1, y1) in enumerate(integer_boxes.tolist()):
        cols, (c0, c1, cw) = _paste_axis(x0, x1, width, size)
        rows, (r0, r1, rw) = _paste_axis(y0, y1, height, size)
        if cols.stop <= cols.start or rows.stop <= rows.start:
            continue
        across = padded[k][:, c0] * (1 - cw) + padded[k][:, c1] * cw  # (S, w)
        pasted = across[r0] * (1 - rw)[:, None] + across[r1] * rw[:, None]  # (h, w)
        masks[k, rows, cols] = pasted > threshold
    return masks


def postprocess(
    outputs: list[np.ndarray], input_size: tuple[int, int], image_size: tuple[int, int],
    meta: dict[str, str], names: list[str] | None = None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """The graph's outputs (boxes in the network input's pixels; `names` the graph's output
    names) -> boxes in the original image's pixels, clipped to it, scores, labels [, full-image
    bool masks] [, keypoint heatmaps as the graph gives them]."""
    names = names or ["boxes", "scores", "labels", "mask_probs"][: len(outputs)]
    by_name = dict(zip(names, outputs, strict=True))
    (height, width), (in_height, in_width) = image_size, input_size
    scale = np.array([width / in_width, height / in_height] * 2, dtype=np.float32)
    boxes = outputs[0].astype(np.float32) * scale
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    result = {"boxes": boxes, "scores": outputs[1], "labels": outputs[2]}
    if "mask_probs" in by_name:
        threshold = float(meta["mask_threshold"])
        result["masks"] = paste_masks(by_name["mask_probs"], boxes, image_size, threshold)
    if "keypoint_heatmaps" in by_name:
        result["keypoint_heatmaps"] = by_name["keypoint_heatmaps"]
    return result


def load_session(path: str | Path) -> tuple[onnxruntime.InferenceSession, dict[str, str]]:
    """An onnxruntime CPU session of the file and its metadata (the resize, the mask threshold)."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if "min_size_test" not in meta:
        raise ValueError(f"{path}: no resize metadata; export it with tools/export.py")
    return session, meta


def predict(
    session: onnxruntime.InferenceSession, meta: dict[str, str], image: Image.Image
) -> dict[str, np.ndarray]:
    """Detections of one RGB image (see the module docstring); "input" is the network input."""
    pixels = network_input(image, meta)
    outputs = session.run(None, {session.get_inputs()[0].name: pixels})
    names = [output.name for output in session.get_outputs()]
    result = postprocess(outputs, pixels.shape[-2:], (image.height, image.width), meta, names)
    return {"input": pixels, **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an .onnx file written by tools/export.py --format onnx")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--save", metavar="FILE", help="write every result to an .npz file")
    args = parser.parse_args(argv)
    try:
        session, meta = load_session(args.model)
        saved: dict[str, Any] = {}
        for index, path in enumerate(args.images):
            with Image.open(path) as opened:
                result = predict(session, meta, opened.convert("RGB"))
            print(f"{path}: {len(result['scores'])} detections")
            rows = zip(result["boxes"], result["scores"], result["labels"], strict=True)
            for box, score, label in rows:
                print(f"  label {int(label)} score {float(score):.3f} box {np.round(box, 1)}")
            saved.update({f"{index}/{key}": value for key, value in result.items()})
    except (OSError, ValueError, onnxruntime.capi.onnxruntime_pybind11_state.Fail) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.save:
        np.savez_compressed(args.save, **saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
