"""Keypoint data: COCO person keypoints, keypoint datasets declared by config, the shapes
keypoint variant, keypoints through resize and horizontal flip, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.config import get_cfg, merge_opts
from detector.data import get_dataset
from detector.data.build import check_num_classes
from detector.data.datasets import COCODataset
from detector.data.datasets.keypoints import COCO_PERSON_KEYPOINTS, KeypointMeta
from detector.data.datasets.shapes import ShapesDataset, draw_shapes
from detector.data.errors import DatasetError
from detector.data.transforms import RandomHorizontalFlip, ResizeShortestEdge
from detector.structures import Boxes, Instances, Keypoints, flip_indices_from_pairs

# Three keypoints, none symmetric: a "left" one, a "right" one and a middle one.
NAMES = ("left_hand", "right_hand", "head")


def _asymmetric_target() -> Instances:
    keypoints = torch.tensor(
        [[[2.0, 3.0, 2.0], [17.5, 4.0, 1.0], [9.0, 1.0, 2.0]],
         [[25.0, 12.0, 2.0], [29.0, 18.0, 0.0], [27.0, 10.5, 2.0]]]
    )  # fmt: skip
    flip = flip_indices_from_pairs(NAMES, [("left_hand", "right_hand")])
    return Instances(
        (20, 30),
        gt_boxes=Boxes(torch.tensor([[1.0, 0.0, 19.0, 6.0], [24.0, 9.0, 30.0, 19.0]])),
        gt_classes=torch.tensor([1, 1]),
        gt_keypoints=Keypoints(keypoints, flip),
    )


def test_flip_mirrors_and_swaps_left_and_right() -> None:
    target = _asymmetric_target()
    image = torch.arange(3 * 20 * 30, dtype=torch.uint8).reshape(3, 20, 30)
    flipped_image, flipped = RandomHorizontalFlip(1.0)(image, target)
    original = target.gt_keypoints.tensor
    expected = original[:, [1, 0, 2]].clone()  # left_hand <-> right_hand, head stays
    expected[..., 0] = 30 - expected[..., 0]
    assert torch.equal(flipped.gt_keypoints.tensor, expected)
    # the visibility flags travel with their keypoints
    assert flipped.gt_keypoints.tensor[1, 0, 2] == 0 and flipped.gt_keypoints.tensor[1, 1, 2] == 2
    assert torch.equal(flipped_image, image.flip(-1))
    # flipping twice gives the original back
    _, twice = RandomHorizontalFlip(1.0)(flipped_image, flipped)
    assert torch.equal(twice.gt_keypoints.tensor, original)


def test_flip_without_a_flip_map_is_refused() -> None:
    keypoints = Keypoints(torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="no flip map"):
        keypoints.flip(10)


def test_resize_scales_keypoints() -> None:
    target = _asymmetric_target()
    image = torch.zeros(3, 20, 30, dtype=torch.uint8)
    _, resized = ResizeShortestEdge([40], 1000)(image, target)
    expected = target.gt_keypoints.tensor.clone()
    expected[..., :2] *= 2
    assert resized.image_size == (40, 60)
    torch.testing.assert_close(resized.gt_keypoints.tensor, expected)


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("left_hand", "left_hand")], "not a pair of two different"),
        ([("left_hand", "right_hand", "head")], "not a pair of two different"),
        ([("left_hand", "nose")], "unknown keypoint 'nose'"),
        ([("left_hand", "right_hand"), ("head", "left_hand")], "in more than one pair"),
    ],
)
def test_flip_maps_that_do_not_pair_up(pairs, message) -> None:
    with pytest.raises(ValueError, match=message):
        flip_indices_from_pairs(NAMES, pairs, "DATASETS.CUSTOM.x.KEYPOINT_FLIP_MAP")


# --------------------------------------------------------------------------------------------
# COCO keypoint files
# --------------------------------------------------------------------------------------------
def _person(ann_id: int, keypoints: list | None, **extra) -> dict:
    ann = {"id": ann_id, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 40],
           "area": 1200, "iscrowd": 0, **extra}  # fmt: skip
    if keypoints is not None:
        ann["keypoints"] = keypoints
    return ann


def _write_coco(tmp_path: Path, annotations: list, names=COCO_PERSON_KEYPOINTS) -> Path:
    Image.new("RGB", (64, 48)).save(tmp_path / "a.jpg")
    category = {"id": 1, "name": "person", "keypoints": list(names),
                "skeleton": [[1, 2], [1, 3]]}  # fmt: skip
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 48, "width": 64}],
            "annotations": annotations, "categories": [category]}  # fmt: skip
    path = tmp_path / "person_keypoints.json"
    path.write_text(json.dumps(data))
    return path


def _coco_keypoints(seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    values = []
    for _ in COCO_PERSON_KEYPOINTS:
        values += [float(rng.uniform(10, 40)), float(rng.uniform(10, 50)), int(rng.integers(3))]
    return values


def test_coco_person_keypoints_load_with_coco_metadata(tmp_path) -> None:
    path = _write_coco(tmp_path, [_person(7, _coco_keypoints()), _person(8, None)])
    dataset = COCODataset(path, tmp_path)
    meta = dataset.keypoint_meta
    assert meta.names == COCO_PERSON_KEYPOINTS and len(meta.oks_sigmas) == 17
    assert meta.flip_indices[1:3] == (2, 1)  # left_eye <-> right_eye
    assert meta.skeleton == (("nose", "left_eye"), ("nose", "right_eye"))
    target = dataset.load_target(0)
    expected = torch.tensor(_coco_keypoints()).reshape(17, 3)
    assert torch.equal(target.gt_keypoints.tensor[0], expected)
    assert torch.equal(target.gt_keypoints.tensor[1], torch.zeros(17, 3))  # none annotated


@pytest.mark.parametrize(
    ("keypoints", "message"),
    [
        ([1.0, 2.0, 2], "'keypoints' must be 51 numbers .* got 3"),
        (_coco_keypoints()[:-1] + [float("nan")], "NaN or infinite"),
        (_coco_keypoints()[:-1] + ["2"], "must be numbers"),
        ("1 2 2", "'keypoints' must be 51 numbers .* got str"),
    ],
)
def test_bad_coco_keypoints_name_file_and_annotation(tmp_path, keypoints, message) -> None:
    path = _write_coco(tmp_path, [_person(1234, keypoints)])
    with pytest.raises(DatasetError, match=message) as error:
        COCODataset(path, tmp_path)
    assert str(path) in str(error.value) and "annotation id 1234" in str(error.value)


def _custom_cfg(tmp_path: Path, *opts: str):
    path = _write_coco(tmp_path, [_person(1, [5.0, 6.0, 2] * 3)], names=("a", "b", "c"))
    return merge_opts(
        get_cfg(),
        [
            "DATASETS.CUSTOM.hands.ANN_FILE", str(path),
            "DATASETS.CUSTOM.hands.IMAGE_DIR", str(tmp_path),
            *opts,
        ],
    )  # fmt: skip


def test_custom_keypoint_dataset_by_config(tmp_path) -> None:
    cfg = _custom_cfg(
        tmp_path,
        "DATASETS.CUSTOM.hands.KEYPOINT_NAMES", '["left_hand", "right_hand", "head"]',
        "DATASETS.CUSTOM.hands.KEYPOINT_FLIP_MAP", '[["left_hand", "right_hand"]]',
        "DATASETS.CUSTOM.hands.KEYPOINT_SKELETON", '[["head", "left_hand"]]',
        "DATASETS.CUSTOM.hands.KEYPOINT_OKS_SIGMAS", "[0.05, 0.05, 0.1]",
    )  # fmt: skip
    meta = get_dataset("hands", cfg).keypoint_meta
    assert meta == KeypointMeta(
        names=NAMES,
        flip_map=(("left_hand", "right_hand"),),
        skeleton=(("head", "left_hand"),),
        oks_sigmas=(0.05, 0.05, 0.1),
        where="DATASETS.CUSTOM.hands",
    )
    assert meta.flip_indices == (1, 0, 2)


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (["KEYPOINT_FLIP_MAP", '[["a", "a"]]'], r"DATASETS.CUSTOM.hands flip map: \['a', 'a'\]"),
        (["KEYPOINT_FLIP_MAP", '[["a", "b"], ["b", "c"]]'], "'b' is in more than one pair"),
        (["KEYPOINT_OKS_SIGMAS", "[0.1]"], "DATASETS.CUSTOM.hands: OKS sigmas must be 3"),
        (["KEYPOINT_SKELETON", '[["a", "z"]]'], "DATASETS.CUSTOM.hands: skeleton edge"),
        (["KEYPOINT_NAMES", '["a", "b"]'], "names 3 keypoints but DATASETS.CUSTOM.hands"),
    ],
)
def test_bad_keypoint_declarations_name_the_key(tmp_path, opts, message) -> None:
    cfg = _custom_cfg(tmp_path, f"DATASETS.CUSTOM.hands.{opts[0]}", opts[1])
    with pytest.raises(DatasetError, match=message):
        get_dataset("hands", cfg)


def test_keypoint_model_checks_its_datasets() -> None:
    cfg = merge_opts(
        get_cfg(), ["MODEL.KEYPOINT_ON", "True", "MODEL.ROI_BOX_HEAD.NUM_CLASSES", "4"]
    )
    with pytest.raises(DatasetError, match="MODEL.KEYPOINT_ON, but the training dataset"):
        check_num_classes(cfg, get_dataset("shapes_val", cfg), "shapes_val", "train")
    with pytest.raises(DatasetError, match="NUM_CLASSES = 17, but .* has 6 keypoints"):
        check_num_classes(cfg, get_dataset("shapes_kp_val", cfg), "shapes_kp_val", "train")
    cfg = merge_opts(
        cfg, ["MODEL.ROI_KEYPOINT_HEAD.NUM_CLASSES", "6", "INPUT.VERTICAL_FLIP_PROB_TRAIN", "0.5"]
    )
    with pytest.raises(DatasetError, match="VERTICAL_FLIP_PROB_TRAIN > 0"):
        check_num_classes(cfg, get_dataset("shapes_kp_val", cfg), "shapes_kp_val", "train")


# --------------------------------------------------------------------------------------------
# Shapes with keypoints
# --------------------------------------------------------------------------------------------
def test_shapes_keypoints_mark_corners_and_centres() -> None:
    dataset = ShapesDataset(16, seed=3, keypoints=True)
    for index in range(len(dataset)):
        _, masks, kinds = draw_shapes(3, index)
        target = dataset.load_target(index)
        points = target.gt_keypoints.tensor  # (N, 6, 3)
        labeled = (points[..., 2] > 0).sum(dim=1).tolist()
        assert labeled == [{0: 4, 1: 1, 2: 3}[int(k)] for k in kinds]
        for points_i, mask, box in zip(points, masks, target.gt_boxes.tensor, strict=True):
            for x, y, v in points_i.tolist():
                if v > 0:  # inside the shape's box, on the centre of a pixel or its mid-point
                    assert box[0] < x < box[2] and box[1] < y < box[3]
                    assert mask[int(y), int(x)] or mask[int(y) - 1 : int(y) + 1].any()


def test_shapes_keypoints_flip_like_the_image() -> None:
    """A flipped square's corners swap left and right: the top-left corner of the flipped image
    is the mirror of the top-right one."""
    dataset = ShapesDataset(8, seed=0, keypoints=True)
    image, target, _ = dataset[0]
    _, flipped = RandomHorizontalFlip(1.0)(image, target)
    squares = (target.gt_classes == 1).nonzero()[:, 0]
    if len(squares) == 0:
        pytest.skip("no square in this image")
    original, mirrored = target.gt_keypoints.tensor, flipped.gt_keypoints.tensor
    torch.testing.assert_close(mirrored[squares, 0, 0], 128 - original[squares, 1, 0])
    assert bool((mirrored[squares, 0, 0] < mirrored[squares, 1, 0]).all())  # left stays left


def test_keypoint_evaluation_needs_the_datasets_sigmas(tmp_path) -> None:
    """A custom keypoint dataset without KEYPOINT_OKS_SIGMAS trains, but is not evaluated on
    made-up sigmas: the evaluator says which key to set."""
    from detector.evaluation.build import build_evaluator

    cfg = _custom_cfg(
        tmp_path,
        "DATASETS.CUSTOM.hands.KEYPOINT_NAMES", '["left_hand", "right_hand", "head"]',
        "MODEL.KEYPOINT_ON", "True", "MODEL.ROI_KEYPOINT_HEAD.NUM_CLASSES", "3",
        "MODEL.ROI_BOX_HEAD.NUM_CLASSES", "2",
    )  # fmt: skip
    with pytest.raises(ValueError, match="DATASETS.CUSTOM.hands: evaluating keypoints needs"):
        build_evaluator(cfg, "hands")
    cfg = merge_opts(cfg, ["DATASETS.CUSTOM.hands.KEYPOINT_OKS_SIGMAS", "[0.1, 0.1, 0.1]"])
    assert build_evaluator(cfg, "hands").tasks == ("bbox", "keypoints")


def test_coco_2017_keypoint_names() -> None:
    from detector.data.catalog import get_dataset_spec

    spec = get_dataset_spec("keypoints_coco_2017_val", get_cfg())
    assert spec.ann_file == "coco/annotations/person_keypoints_val2017.json"
    assert spec.image_dir == "coco/val2017"
