"""Pascal VOC (VOC2007/VOC2012 devkit layout): Annotations/<id>.xml, JPEGImages/<id>.jpg and
ImageSets/Main/<split>.txt.

Boxes: VOC's 1-based pixel indices become continuous coordinates, [xmin - 1, ymin - 1, xmax,
ymax] (as in Detectron and detectron2). Coordinates are parsed as floats (some files have
`45.70000076293945`). A box with xmax <= xmin or ymax <= ymin as written in the XML is
degenerate: it is skipped and counted (`num_skipped`, logged). `difficult` objects are kept in the
targets (flagged) for evaluation; the training loader drops them unless
DATASETS.TRAIN_USE_DIFFICULT. An object whose class is not in `class_names` raises a DatasetError
naming the XML file.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detector.data.datasets.base import BACKGROUND, ImageRecord, RecordDataset
from detector.data.errors import DatasetError
from detector.structures import BitMasks

__all__ = ["VOC_CLASS_NAMES", "VOCDataset", "load_voc_xml"]

logger = logging.getLogger(__name__)

VOC_CLASS_NAMES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


class VOCDataset(RecordDataset):
    """The images of one split of a VOC root.

    Args:
        root: the folder holding Annotations/, JPEGImages/ and ImageSets/ (e.g.
            datasets/voc/VOC2007).
        split: the split file's name, ImageSets/Main/<split>.txt (ImageSets/Segmentation/ with
            masks); "" for every XML in Annotations/.
        class_names: the object classes without the background (default: the 20 VOC classes).
        with_masks: read instance masks from SegmentationObject/<id>.png, whose value k + 1 is
            the k-th <object> of the XML (255, the void border, belongs to no instance).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: list[str] | None = None,
        max_pixels: int | None = None,
        with_masks: bool = False,
    ) -> None:
        self.root = Path(root)
        self.split = split
        names = list(class_names) if class_names else list(VOC_CLASS_NAMES)
        label_of = {name: i + 1 for i, name in enumerate(names)}
        records, skipped = [], 0
        folder = "Segmentation" if with_masks else "Main"
        for image_id in _read_split(self.root, split, folder):
            record, n = load_voc_xml(self.root, image_id, label_of)
            records.append(record)
            skipped += n
        if skipped:
            logger.warning("%s (%s): skipped %d degenerate boxes", self.root, split, skipped)
        super().__init__(records, [BACKGROUND, *names], max_pixels)
        self.num_skipped = skipped
        self.has_masks = with_masks

    def load_masks(self, index: int) -> BitMasks:
        """BitMasks from SegmentationObject/<id>.png (a palette PNG of instance ids)."""
        record = self.records[index]
        png = self.root / "SegmentationObject" / f"{record.image_id}.png"
        if not png.is_file():
            raise DatasetError(f"VOC instance mask not found: {png} (image {record.image_id})")
        with Image.open(png) as image:
            ids = np.array(image)  # palette indices, not colours
        if ids.shape != (record.height, record.width):
            raise DatasetError(
                f"{png}: {ids.shape[1]}x{ids.shape[0]} differs from the image size "
                f"{record.width}x{record.height} in the XML"
            )
        wanted = record.instance_ids[:, None, None]  # (N, 1, 1)
        return BitMasks(torch.from_numpy(ids[None] == wanted))  # (N, H, W)


def _read_split(root: Path, split: str, folder: str = "Main") -> list[str]:
    """Image ids of ImageSets/<folder>/<split>.txt, or of every Annotations/*.xml if split is
    ""."""
    if not root.is_dir():
        raise DatasetError(f"VOC root not found: {root}")
    if not split:
        return sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    split_file = root / "ImageSets" / folder / f"{split}.txt"
    if not split_file.is_file():
        available = sorted(p.stem for p in (root / "ImageSets" / folder).glob("*.txt"))
        raise DatasetError(
            f"VOC split file not found: {split_file} (splits in that folder: "
            f"{', '.join(available) or 'none'})"
        )
    return [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]


def _text(node: ET.Element, path: str, xml_file: Path) -> str:
    child = node.find(path)
    if child is None or child.text is None:
        raise DatasetError(f"{xml_file}: missing <{path}>")
    return child.text.strip()


def _number(node: ET.Element, path: str, xml_file: Path) -> float:
    text = _text(node, path, xml_file)
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{xml_file}: <{path}> must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise DatasetError(f"{xml_file}: <{path}> must be a finite number, got {text!r}")
    return value


def load_voc_xml(root: Path, image_id: str, label_of: dict[str, int]) -> tuple[ImageRecord, int]:
    """Parses Annotations/<image_id>.xml; returns the record and the number of skipped boxes."""
    xml_file = root / "Annotations" / f"{image_id}.xml"
    if not xml_file.is_file():
        raise DatasetError(f"VOC annotation file not found: {xml_file} (listed in the split)")
    try:
        tree = ET.parse(xml_file).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"{xml_file}: not valid XML: {e}") from None
    width = int(_number(tree, "size/width", xml_file))
    height = int(_number(tree, "size/height", xml_file))
    boxes, classes, difficult, instance_ids, skipped = [], [], [], [], 0
    for position, obj in enumerate(tree.findall("object"), start=1):
        name = _text(obj, "name", xml_file)
        if name not in label_of:
            raise DatasetError(
                f"{xml_file}: object class '{name}' is not among the class names "
                f"{list(label_of)}; set DATASETS.CLASS_NAMES (or the dataset's CLASS_NAMES)"
            )
        x1, y1, x2, y2 = (
            _number(obj, f"bndbox/{k}", xml_file) for k in ("xmin", "ymin", "xmax", "ymax")
        )
        box = [max(x1 - 1.0, 0.0), max(y1 - 1.0, 0.0), min(x2, width), min(y2, height)]
        if x2 <= x1 or y2 <= y1 or box[2] <= box[0] or box[3] <= box[1]:
            # empty or inverted, or (after clipping) wholly outside the image
            skipped += 1
            continue
        flag = obj.find("difficult")
        difficult.append(flag is not None and (flag.text or "0").strip() not in ("0", ""))
        boxes.append(box)
        classes.append(label_of[name])
        instance_ids.append(position)
    record = ImageRecord(
        image_id=image_id,
        file_name=str(root / "JPEGImages" / f"{image_id}.jpg"),
        height=height,
        width=width,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        classes=np.asarray(classes, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
        instance_ids=np.asarray(instance_ids, dtype=np.int64),
    )
    return record, skipped
