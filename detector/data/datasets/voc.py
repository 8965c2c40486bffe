"""Pascal VOC (VOC2007/VOC2012 devkit layout): Annotations/<id>.xml, JPEGImages/<id>.jpg and
ImageSets/Main/<split>.txt; or VOC XML files as datasets are often published: other folder names
(`images/`, `annotations/`), images of any type, and the split as a list of files (text or CSV).

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
from PIL import Image

from detector.data.datasets.base import BACKGROUND, ImageRecord, RecordDataset
from detector.data.errors import DatasetError
from detector.structures import BitMasks
from detector.utils.arrays import from_numpy

__all__ = ["VOC_CLASS_NAMES", "VOCDataset", "load_voc_xml"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".webp")

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
            masks); "" for every XML in the annotation folder.
        class_names: the object classes without the background (default: the 20 VOC classes).
        with_masks: read instance masks from SegmentationObject/<id>.png, whose value k + 1 is
            the k-th <object> of the XML (255, the void border, belongs to no instance).
        image_dir, ann_dir: the image and XML folders, relative to `root` (or absolute).
        split_file: a list of the split's images instead of `split` (relative to `root`): a
            text file (one per line) or a .csv file (its first column, after a header row),
            of image ids or file names (their extension is dropped).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: list[str] | None = None,
        max_pixels: int | None = None,
        with_masks: bool = False,
        *,
        image_dir: str | Path = "JPEGImages",
        ann_dir: str | Path = "Annotations",
        split_file: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.image_dir = self.root / image_dir
        self.ann_dir = self.root / ann_dir
        names = list(class_names) if class_names else list(VOC_CLASS_NAMES)
        label_of = {name: i + 1 for i, name in enumerate(names)}
        records: list[ImageRecord] = []
        skipped = 0
        if split_file:
            image_ids = _read_file_list(self.root / split_file)
        else:
            folder = "Segmentation" if with_masks else "Main"
            image_ids = _read_split(self.root, split, folder, self.ann_dir)
        if not image_ids:
            raise DatasetError(self._empty_message(split_file))
        for image_id in image_ids:
            record, n = load_voc_xml(
                self.root, image_id, label_of, ann_dir=self.ann_dir, image_dir=self.image_dir
            )
            records.append(record)
            skipped += n
        if skipped:
            logger.warning("%s (%s): skipped %d degenerate boxes", self.root, split, skipped)
        super().__init__(records, [BACKGROUND, *names], max_pixels)
        self.num_skipped = skipped
        self.has_masks = with_masks

    def _empty_message(self, split_file: str | Path | None) -> str:
        if split_file:
            return f"{self.root / split_file} lists no image"
        if self.split:
            return f"{self.root}: split '{self.split}' lists no image"
        found = ", ".join(sorted(p.name + "/" for p in self.root.iterdir() if p.is_dir()))
        return (
            f"no annotation: {self.ann_dir} holds no .xml file (folders in {self.root}: "
            f"{found or 'none'}); name the XML folder with ANN_DIR and the images' with IMAGE_DIR"
        )

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
        assert record.instance_ids is not None  # load_voc_xml sets them
        wanted = record.instance_ids[:, None, None]  # (N, 1, 1)
        return BitMasks(from_numpy(ids[None] == wanted))  # (N, H, W)


def _read_split(root: Path, split: str, folder: str, ann_dir: Path) -> list[str]:
    """Image ids of ImageSets/<folder>/<split>.txt, or of every `ann_dir`/*.xml if split is
    ""."""
    if not root.is_dir():
        raise DatasetError(f"VOC root not found: {root}")
    if not split:
        return sorted(p.stem for p in ann_dir.glob("*.xml"))
    split_file = root / "ImageSets" / folder / f"{split}.txt"
    if not split_file.is_file():
        available = sorted(p.stem for p in (root / "ImageSets" / folder).glob("*.txt"))
        raise DatasetError(
            f"VOC split file not found: {split_file} (splits in that folder: "
            f"{', '.join(available) or 'none'})"
        )
    return [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]


def _read_file_list(path: Path) -> list[str]:
    """The image ids a split file lists: one per line, or a CSV's first column after its header
    row; file names lose their folder and extension ('img/a.jpg' -> 'a')."""
    if not path.is_file():
        raise DatasetError(f"split file not found: {path} (SPLIT_FILE)")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix.lower() == ".csv":
        lines = [line.split(",")[0].strip().strip('"') for line in lines[1:]]
    names = [line.split()[0] for line in lines if line.strip()]
    return [Path(name).stem if Path(name).suffix else name for name in names]


def _image_file(image_dir: Path, image_id: str, xml_name: str | None) -> Path:
    """<image_dir>/<id>.jpg, else the XML's <filename>, else <id> with another image suffix
    (the first that exists); <id>.jpg when none does (reading it reports the missing file)."""
    default = image_dir / f"{image_id}.jpg"
    if default.is_file():
        return default
    candidates = [image_dir / xml_name] if xml_name else []
    candidates += [image_dir / f"{image_id}{suffix}" for suffix in IMAGE_SUFFIXES]
    return next((c for c in candidates if c.is_file()), default)


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


def load_voc_xml(
    root: Path,
    image_id: str,
    label_of: dict[str, int],
    *,
    ann_dir: Path | None = None,
    image_dir: Path | None = None,
) -> tuple[ImageRecord, int]:
    """Parses `ann_dir`/<image_id>.xml (default root/Annotations, images in root/JPEGImages);
    returns the record and the number of skipped boxes."""
    ann_dir = root / "Annotations" if ann_dir is None else ann_dir
    image_dir = root / "JPEGImages" if image_dir is None else image_dir
    xml_file = ann_dir / f"{image_id}.xml"
    if not xml_file.is_file():
        raise DatasetError(f"VOC annotation file not found: {xml_file} (listed in the split)")
    try:
        tree = ET.parse(xml_file).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"{xml_file}: not valid XML: {e}") from None
    width = int(_number(tree, "size/width", xml_file))
    height = int(_number(tree, "size/height", xml_file))
    boxes: list[list[float]] = []
    classes: list[int] = []
    difficult: list[bool] = []
    instance_ids: list[int] = []
    skipped = 0
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
        file_name=str(_image_file(image_dir, image_id, (tree.findtext("filename") or "").strip())),
        height=height,
        width=width,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        classes=np.asarray(classes, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
        instance_ids=np.asarray(instance_ids, dtype=np.int64),
    )
    return record, skipped
