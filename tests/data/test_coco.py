"""COCODataset on the real COCO val2017 sample and chess-pieces, and its errors on bad JSON."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from detector.data import COCODataset, DatasetError
from detector.structures import BitMasks, PolygonMasks


@pytest.fixture
def coco_sample(shared_data: Path) -> tuple[Path, Path]:
    root = shared_data / "coco-val2017-sample6"
    return root / "annotations.json", root / "images"


def test_sample_boxes_classes_and_masks_match_pycocotools(coco_sample):
    json_file, image_dir = coco_sample
    dataset = COCODataset(json_file, image_dir)
    coco = COCO(str(json_file))
    assert len(dataset) == 6
    assert dataset.num_classes == 81 and dataset.class_names[0] == "__background__"
    assert dataset.num_skipped == 0
    total = 0
    for i in range(len(dataset)):
        image, target, meta = dataset[i]
        info = coco.imgs[meta["image_id"]]
        assert image.dtype == torch.uint8 and image.shape == (3, info["height"], info["width"])
        assert (meta["height"], meta["width"]) == (info["height"], info["width"])
        assert dataset.get_image_size(i) == (info["height"], info["width"])
        anns = [a for a in coco.imgToAnns[meta["image_id"]] if not a["iscrowd"]]
        assert len(target) == len(anns)
        total += len(target)
        for k, ann in enumerate(anns):
            x, y, w, h = ann["bbox"]
            torch.testing.assert_close(
                target.gt_boxes.tensor[k], torch.tensor([x, y, x + w, y + h])
            )
            label = int(target.gt_classes[k])
            assert dataset.contiguous_to_category_id[label] == ann["category_id"]
            assert dataset.class_names[label] == coco.cats[ann["category_id"]]["name"]
        if len(target):
            assert isinstance(target.gt_masks, PolygonMasks)
            bitmaps = target.gt_masks.to_bitmasks(*target.image_size).tensor.numpy()
            for k, ann in enumerate(anns):
                np.testing.assert_array_equal(bitmaps[k], coco.annToMask(ann).astype(bool))
        assert not target.difficult.any()
    assert total == 35  # 36 annotations, the crowd one left out


def test_sample_contiguous_ids_round_trip(coco_sample):
    dataset = COCODataset(*coco_sample)
    ids = sorted(dataset.category_id_to_contiguous)
    assert len(ids) == 80 and ids[0] == 1 and ids[-1] == 90
    assert list(dataset.contiguous_to_category_id) == list(range(1, 81))
    for label, category_id in dataset.contiguous_to_category_id.items():
        assert dataset.category_id_to_contiguous[category_id] == label
    assert dataset.class_names[dataset.category_id_to_contiguous[44]] == "bottle"


def test_sample_keeps_the_image_without_annotations(coco_sample):
    dataset = COCODataset(*coco_sample)
    empty = [i for i in range(len(dataset)) if dataset.get_meta(i)["image_id"] == 89]
    assert len(empty) == 1
    _, target, _ = dataset[empty[0]]
    assert len(target) == 0 and target.gt_boxes.tensor.shape == (0, 4)


def test_chess_category_zero_and_no_masks(shared_data):
    split = shared_data / "chess-pieces" / "test"
    dataset = COCODataset(split / "_annotations.coco.json", split)
    assert dataset.class_names[1] == "pieces"
    assert dataset.contiguous_to_category_id[1] == 0
    assert not dataset.has_masks
    counts = [dataset.num_instances(i) for i in range(len(dataset))]
    assert sum(counts) == 376 and counts.count(0) == 1
    _, target, _ = dataset[int(np.argmax(counts))]
    assert target.gt_masks is None and len(target) == max(counts)


# --------------------------------------------------------------------------------------------
# Hand-made JSON files
# --------------------------------------------------------------------------------------------
def _write(tmp_path: Path, annotations: list, images: list | None = None) -> Path:
    data = {
        "images": images or [{"id": 7, "file_name": "a.jpg", "height": 20, "width": 30}],
        "categories": [{"id": 5, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": annotations,
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def _ann(ann_id: int = 11, **overrides) -> dict:
    ann = {"id": ann_id, "image_id": 7, "category_id": 5, "bbox": [1, 2, 10, 5], "iscrowd": 0}
    ann.update(overrides)
    return ann


def test_labels_follow_sorted_category_ids(tmp_path):
    dataset = COCODataset(_write(tmp_path, [_ann(), _ann(12, category_id=2)]), tmp_path)
    assert dataset.class_names == ["__background__", "dog", "cat"]
    target = dataset.load_target(0)
    assert target.gt_classes.tolist() == [2, 1]
    torch.testing.assert_close(target.gt_boxes.tensor[0], torch.tensor([1.0, 2.0, 11.0, 7.0]))


@pytest.mark.parametrize(
    ("ann", "words"),
    [
        ({"id": 11, "image_id": 7, "bbox": [1, 2, 3, 4]}, ["annotation id 11", "'category_id'"]),
        (_ann(category_id=99), ["annotation id 11", "category_id 99"]),
        (_ann(image_id=8), ["annotation id 11", "image_id 8"]),
        (_ann(bbox=[1, 2, 3]), ["annotation id 11", "4 numbers"]),
        (_ann(bbox="1 2 3 4"), ["annotation id 11", "'bbox' must be list"]),
        (_ann(category_id="5"), ["annotation id 11", "'category_id' must be int"]),
    ],
)
def test_malformed_annotations_name_the_file_and_id(tmp_path, ann, words):
    path = _write(tmp_path, [ann])
    with pytest.raises(DatasetError) as info:
        COCODataset(path, tmp_path)
    assert str(path) in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_missing_file_and_missing_top_level_key(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        COCODataset(tmp_path / "nope.json", tmp_path)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"annotations": []}))
    with pytest.raises(DatasetError, match="'images'"):
        COCODataset(path, tmp_path)


def test_degenerate_boxes_are_skipped_and_counted(tmp_path):
    anns = [_ann(11), _ann(12, bbox=[3, 3, 0, 4]), _ann(13, bbox=[40, 2, 5, 5]), _ann(14)]
    dataset = COCODataset(_write(tmp_path, anns), tmp_path)
    assert dataset.num_skipped == 2  # zero width; entirely right of the 30-px-wide image
    assert dataset.num_instances(0) == 2


def test_crowd_is_left_out_and_rle_gives_bitmasks(tmp_path):
    polygon = [[1, 2, 11, 2, 11, 7, 1, 7]]
    rle = {"size": [20, 30], "counts": [40, 5, 15, 5, 535]}  # uncompressed, column-major
    anns = [
        _ann(11, segmentation=polygon),
        _ann(12, segmentation=rle, bbox=[2, 0, 2, 5]),
        _ann(13, segmentation=rle, iscrowd=1),
    ]
    dataset = COCODataset(_write(tmp_path, anns), tmp_path)
    target = dataset.load_target(0)
    assert len(target) == 2 and isinstance(target.gt_masks, BitMasks)
    masks = target.gt_masks.tensor
    assert masks[0].sum() == 50 and masks[0, 2:7, 1:11].all()
    assert masks[1].sum() == 10 and masks[1, 0:5, 2:4].all()


def test_polygon_missing_when_others_have_masks_is_an_error(tmp_path):
    anns = [_ann(11, segmentation=[[1, 2, 11, 2, 11, 7]]), _ann(12, segmentation=[])]
    with pytest.raises(DatasetError, match="annotation id 12"):
        COCODataset(_write(tmp_path, anns), tmp_path)


def test_wrong_image_size_in_json_is_reported_on_load(coco_sample, tmp_path):
    json_file, image_dir = coco_sample
    data = json.loads(json_file.read_text())
    data["images"][0]["height"] += 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    dataset = COCODataset(bad, image_dir)
    with pytest.raises(DatasetError, match=data["images"][0]["file_name"]):
        dataset.load_image(0)


def test_image_entry_and_rle_size_errors_name_the_ids(tmp_path):
    images = [{"id": 7, "file_name": "a.jpg", "height": 20}]
    with pytest.raises(DatasetError, match=r"image id 7.*'width'"):
        COCODataset(_write(tmp_path, [], images), tmp_path)
    rle = {"size": [10, 30], "counts": [300]}
    with pytest.raises(DatasetError, match=r"annotation id 11.*RLE size"):
        COCODataset(_write(tmp_path, [_ann(11, segmentation=rle)]), tmp_path)


def test_duplicate_ids_name_the_id_and_both_entries(tmp_path):
    """A duplicated image id used to give a misleading "is not in 'images'" (or merge the two
    images' annotations); duplicated annotation ids were accepted silently."""
    image = {"id": 7, "file_name": "a.jpg", "height": 20, "width": 30}
    other = {**image, "file_name": "b.jpg"}
    path = _write(tmp_path, [_ann(11)], images=[image, other])
    with pytest.raises(DatasetError) as info:
        COCODataset(path, tmp_path)
    assert str(info.value) == (
        f"{path}: images[0] and images[1] have the same id 7; ids must be unique"
    )
    path = _write(tmp_path, [_ann(11), _ann(12), _ann(11)])
    with pytest.raises(
        DatasetError, match=r"annotations\[0\] and annotations\[2\] have the same id 11"
    ):
        COCODataset(path, tmp_path)
    data = json.loads(path.read_text())
    data["categories"].append({"id": 5, "name": "lion"})
    data["annotations"] = [_ann(11)]
    path.write_text(json.dumps(data))
    with pytest.raises(
        DatasetError, match=r"categories\[0\] and categories\[2\] have the same id 5"
    ):
        COCODataset(path, tmp_path)
