"""A real one-class dataset of frame-filling objects: white blood cells cropped from BCCD.

The shared real datasets have small (bccd, dsb2018) or medium (chess) objects. Photos where one
object fills most of the frame are where border handling matters (anchors crossing the image
border, the largest FPN level), so the accuracy benchmark also trains on this: every WBC box of
BCCD (../shared/data/bccd) gives one crop whose side is 1.05-1.6x the box's (drawn per box from a
fixed seed) with the box placed at a random offset inside it, so that the cell covers 40-90% of
each side and often touches the border. Only the WBC class is kept (other cells are background);
crops that would leave the image are shifted back inside it.

The crops and a COCO JSON per split are written once under `root` (never into the repository):
    root/{train,test}/<image id>_<k>.jpg, root/{train,test}.json
BCCD's trainval split gives the training crops, its test split the test crops. Runs started
together (the benchmark's lanes) write them once: the first holds a lock file beside `root`
while it writes, the others wait on it and then find the JSONs.
"""

from __future__ import annotations

import fcntl
import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from PIL import Image

SPLITS = {"train": "trainval", "test": "test"}
SCALE_RANGE = (1.05, 1.6)


def _wbc_boxes(xml_file: Path) -> list[tuple[float, float, float, float]]:
    """WBC boxes (x0, y0, x1, y1) of one BCCD annotation, VOC's 1-based pixels made 0-based."""
    boxes = []
    for obj in ET.parse(xml_file).getroot().iter("object"):
        if obj.findtext("name") != "WBC":
            continue
        b = obj.find("bndbox")
        assert b is not None, f"{xml_file}: an object without bndbox"
        x0, y0, x1, y1 = (float(b.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
        if x1 > x0 and y1 > y0:
            boxes.append((x0 - 1, y0 - 1, x1, y1))
    return boxes


def _crop_window(
    box: tuple[float, float, float, float], size: tuple[int, int], rng: random.Random
) -> tuple[int, int, int, int]:
    """A square-ish window around `box` (side = box side x U(SCALE_RANGE)), inside the image."""
    width, height = size
    x0, y0, x1, y1 = box
    scale = rng.uniform(*SCALE_RANGE)
    cw, ch = min(width, round((x1 - x0) * scale)), min(height, round((y1 - y0) * scale))
    left = x0 - rng.uniform(0, max(0.0, cw - (x1 - x0)))
    top = y0 - rng.uniform(0, max(0.0, ch - (y1 - y0)))
    left = int(min(max(0, round(left)), width - cw))
    top = int(min(max(0, round(top)), height - ch))
    return left, top, left + cw, top + ch


def _clip_to(box: tuple[float, ...], window: tuple[int, int, int, int]) -> list[float]:
    """`box` in the window's pixels, clipped to it, as COCO's [x, y, w, h]."""
    left, top, right, bottom = window
    x0, y0 = max(box[0], left) - left, max(box[1], top) - top
    x1, y1 = min(box[2], right) - left, min(box[3], bottom) - top
    return [x0, y0, x1 - x0, y1 - y0]


def _split(bccd: Path, split: str, out: Path, rng: random.Random) -> dict[str, Any]:
    """Crops of one split written to out/<split>/; returns the COCO dictionary."""
    ids = (bccd / "ImageSets" / "Main" / f"{SPLITS[split]}.txt").read_text().split()
    (out / split).mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id in ids:
        boxes = _wbc_boxes(bccd / "Annotations" / f"{image_id}.xml")
        if not boxes:
            continue
        with Image.open(bccd / "JPEGImages" / f"{image_id}.jpg") as opened:
            image = opened.convert("RGB")
        for k, box in enumerate(boxes):
            window = _crop_window(box, image.size, rng)
            name = f"{image_id}_{k}.jpg"
            image.crop(window).save(out / split / name, quality=95)
            entry = {"id": len(images) + 1, "file_name": name}
            images.append(entry | {"width": window[2] - window[0], "height": window[3] - window[1]})
            for other in boxes:  # every WBC visible in the window is an object of the crop
                xywh = _clip_to(other, window)
                if xywh[2] >= 2 and xywh[3] >= 2:
                    annotations.append(
                        {"id": len(annotations) + 1, "image_id": entry["id"], "category_id": 1,
                         "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0}
                    )  # fmt: skip
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "WBC"}]}  # fmt: skip


def make_wbc_crops(bccd: Path, root: Path, seed: int = 0) -> dict[str, Path]:
    """Writes the crops once (kept if both JSONs exist); returns {split: its JSON file}.

    Safe to call from several processes at once: they take turns on `root`'s lock file, and
    the JSON of a split appears (by rename) only after all its images are written.
    """
    files = {split: root / f"{split}.json" for split in SPLITS}
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if all(f.is_file() for f in files.values()):
            return files
        rng = random.Random(seed)
        for split, file in files.items():
            data = _split(bccd, split, root, rng)
            tmp = file.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(file)
    return files
