"""VOCDataset on the real bccd and voc-sample2 folders, and on hand-made XML."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.data import DatasetError, VOCDataset
from detector.data.datasets import VOC_CLASS_NAMES
from detector.structures import BitMasks

BCCD_CLASSES = ["RBC", "WBC", "Platelets"]


@pytest.mark.parametrize(("split", "size"), [("train", 205), ("val", 87), ("test", 72)])
def test_bccd_split_sizes(shared_data, split, size):
    dataset = VOCDataset(shared_data / "bccd" / "BCCD", split, BCCD_CLASSES)
    assert len(dataset) == size
    assert dataset.class_names == ["__background__", *BCCD_CLASSES]


def test_bccd_objects_degenerate_boxes_and_coordinates(shared_data):
    root = shared_data / "bccd" / "BCCD"
    trainval = VOCDataset(root, "trainval", BCCD_CLASSES)
    test = VOCDataset(root, "test", BCCD_CLASSES)
    total = sum(d.num_instances(i) for d in (trainval, test) for i in range(len(d)))
    assert total == 4888 - 2 and trainval.num_skipped + test.num_skipped == 2
    index = [r.image_id for r in trainval.records + test.records].index("BloodImage_00338")
    dataset, index = (trainval, index) if index < len(trainval) else (test, index - len(trainval))
    image, target, meta = dataset[index]
    assert image.shape == (3, 480, 640) and meta["image_id"] == "BloodImage_00338"
    # First object: RBC, xmin 453 ymin 81 xmax 555 ymax 182 (1-based pixel indices).
    torch.testing.assert_close(target.gt_boxes.tensor[0], torch.tensor([452.0, 80.0, 555.0, 182.0]))
    assert target.gt_classes[0] == 1
    assert target.difficult.dtype == torch.bool and not target.difficult.any()
    assert target.gt_masks is None


def test_voc_sample_float_coordinates_and_no_split(shared_data):
    dataset = VOCDataset(shared_data / "voc-sample2", "")
    assert [r.image_id for r in dataset.records] == ["2007_000063", "2011_003353"]
    assert dataset.class_names[1:] == list(VOC_CLASS_NAMES)
    target = dataset.load_target(1)
    assert len(target) == 1 and dataset.class_names[int(target.gt_classes[0])] == "person"
    assert abs(float(target.gt_boxes.tensor[0, 1]) - 44.7) < 1e-4  # ymin 45.70000076293945 - 1
    image, target, _ = dataset[0]
    assert image.shape[1:] == (375, 500)
    assert [dataset.class_names[c] for c in target.gt_classes] == ["dog", "chair"]


def _voc_root(tmp_path: Path, objects: str, split: str = "trainval") -> Path:
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / f"{split}.txt").write_text("img1\n")
    xml = f"<annotation><size><width>50</width><height>40</height></size>{objects}</annotation>"
    (tmp_path / "Annotations" / "img1.xml").write_text(xml)
    return tmp_path


def _object(name: str, box: tuple, difficult: int | None = 0) -> str:
    flag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    coords = "".join(
        f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)
    )
    return f"<object><name>{name}</name>{flag}<bndbox>{coords}</bndbox></object>"


def test_difficult_flags_are_kept(tmp_path):
    objects = _object("a", (1, 1, 10, 10), 1) + _object("b", (5, 5, 20, 30), None)
    dataset = VOCDataset(_voc_root(tmp_path, objects), "trainval", ["a", "b"])
    target = dataset.load_target(0)
    assert target.difficult.tolist() == [True, False]
    assert target.gt_classes.tolist() == [1, 2]
    assert dataset.num_instances(0, include_difficult=False) == 1


def test_unknown_class_names_the_xml_file(tmp_path):
    root = _voc_root(tmp_path, _object("zebra", (1, 1, 10, 10)))
    with pytest.raises(DatasetError) as info:
        VOCDataset(root, "trainval", ["a"])
    assert "img1.xml" in str(info.value) and "zebra" in str(info.value)


def test_bad_coordinate_and_missing_split_are_clear(tmp_path):
    root = _voc_root(tmp_path, _object("a", (1, "x", 10, 10)))
    with pytest.raises(DatasetError, match=r"img1\.xml.*ymin"):
        VOCDataset(root, "trainval", ["a"])
    with pytest.raises(DatasetError, match="splits in that folder: trainval"):
        VOCDataset(root, "test", ["a"])


def _seg_root(tmp_path: Path, shared_data: Path, with_png: bool = True) -> Path:
    """A VOC root holding voc-sample2's 2007_000063 in ImageSets/Segmentation/train.txt."""
    source = shared_data / "voc-sample2"
    for folder, suffix in (
        ("Annotations", "xml"),
        ("JPEGImages", "jpg"),
        ("SegmentationObject", "png"),
    ):
        (tmp_path / folder).mkdir()
        if folder != "SegmentationObject" or with_png:
            data = (source / folder / f"2007_000063.{suffix}").read_bytes()
            (tmp_path / folder / f"2007_000063.{suffix}").write_bytes(data)
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000063\n")
    return tmp_path


def test_instance_masks_from_segmentation_object_png(tmp_path, shared_data):
    dataset = VOCDataset(_seg_root(tmp_path, shared_data), "train", with_masks=True)
    image, target, _ = dataset[0]
    with Image.open(shared_data / "voc-sample2" / "SegmentationObject" / "2007_000063.png") as png:
        ids = torch.from_numpy(np.array(png))
    masks = target.gt_masks.tensor
    assert masks.shape == (2, 375, 500)
    for k in range(2):
        assert torch.equal(masks[k], ids == k + 1)
    assert not masks.any(0)[ids == 255].any()  # the void border is no instance
    # Each mask lies inside its (VOC-annotated) box, give or take the 1-px border convention.
    mask_boxes = BitMasks(masks).get_bounding_boxes().tensor
    boxes = target.gt_boxes.tensor
    assert (mask_boxes[:, :2] >= boxes[:, :2] - 1).all() and (
        mask_boxes[:, 2:] <= boxes[:, 2:] + 1
    ).all()


def test_missing_instance_png_names_it(tmp_path, shared_data):
    dataset = VOCDataset(_seg_root(tmp_path, shared_data, with_png=False), "train", with_masks=True)
    with pytest.raises(DatasetError, match=r"SegmentationObject/2007_000063\.png"):
        dataset.load_target(0)
