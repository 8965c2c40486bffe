"""Dataset problems reported before any training step, as one `error:` line that names the
dataset (training or test), the keys to change and the folders looked in (issue 19, items 1,
14, 16 and 17); and VOC XML datasets in the layout people publish them in (item 16)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.config import get_cfg, merge_opts
from detector.data import DatasetError, build_test_loader, get_dataset
from tests.tools.cli import assert_user_error, run_tool

SHAPES = "configs/shapes/mask_rcnn_R_18_FPN_shapes.yaml"
XML = """<annotation><filename>{file}</filename><size><width>40</width><height>30</height>
<depth>3</depth></size><object><name>cat</name><difficult>0</difficult>
<bndbox><xmin>5</xmin><ymin>6</ymin><xmax>25</xmax><ymax>20</ymax></bndbox></object></annotation>
"""


def _published_voc(root: Path) -> Path:
    """images/ (a.jpg, b.png), annotations/ (a.xml, b.xml) and train.csv listing both."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for stem, suffix in (("a", ".jpg"), ("b", ".png")):
        pixels = np.full((30, 40, 3), 90, dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{stem}{suffix}")
        (root / "annotations" / f"{stem}.xml").write_text(XML.format(file=f"{stem}{suffix}"))
    (root / "train.csv").write_text("filename,width,height\na.jpg,40,30\nb.png,40,30\n")
    (root / "val.txt").write_text("b\n")
    return root


def _custom(name: str, **keys: str) -> list[str]:
    fields = ", ".join(f"{k}: '{v}'" for k, v in {"FORMAT": "voc", **keys}.items())
    return ["DATASETS.CUSTOM", f"{{{name}: {{{fields}, CLASS_NAMES: [cat]}}}}"]


@pytest.mark.parametrize("role", ["TRAIN", "TEST"])
def test_class_count_mismatch_fails_before_training(shared_data: Path, tmp_path: Path, role):
    """Was: a 20 s forward pass, then `IndexError: Target 40 is out of bounds.`"""
    sets = {"TRAIN": "[coco_sample6]", "TEST": "[]"}
    if role == "TEST":
        sets = {"TRAIN": "[shapes_train_8k]", "TEST": "[coco_sample6]"}
    argv = ["--config-file", SHAPES, "MODEL.ROI_BOX_HEAD.NUM_CLASSES", "21", "OUTPUT_DIR", tmp_path]
    sample = shared_data / "coco-val2017-sample6"  # the tool's process: declared in the config
    argv += ["DATASETS.CUSTOM", f"{{coco_sample6: {{FORMAT: coco, ANN_FILE: '{sample}/"
             f"annotations.json', IMAGE_DIR: '{sample}/images'}}}}"]  # fmt: skip
    argv += ["DATASETS.TRAIN", sets["TRAIN"], "DATASETS.TEST", sets["TEST"]]
    which = {"TRAIN": "training", "TEST": "test"}[role]
    assert_user_error(
        run_tool("train", *argv),
        f"error: MODEL.ROI_BOX_HEAD.NUM_CLASSES = 21, but the {which} dataset 'coco_sample6' "
        f"(DATASETS.{role}) has 81 classes (80 and the background): set "
        "MODEL.ROI_BOX_HEAD.NUM_CLASSES 81, or use a config made for this dataset",
    )
    metrics = tmp_path / "metrics.jsonl"
    assert not metrics.exists() or not metrics.read_text().strip()  # no iteration ran


@pytest.mark.parametrize("how", ["key", "env"])
def test_missing_shared_data_names_the_settings(tmp_path: Path, how: str, monkeypatch) -> None:
    """Was: `VOC root not found: ../shared/data/bccd/BCCD`, nothing said how to move it."""
    nowhere = tmp_path / "nowhere"
    cfg = get_cfg()
    if how == "key":
        cfg = merge_opts(cfg, ["DATASETS.SHARED_ROOT", str(nowhere)])
    else:
        monkeypatch.setenv("DETECTOR_SHARED_DATA", str(nowhere))
    message = (
        f"test dataset 'bccd_test' (DATASETS.TEST): {nowhere}/bccd/BCCD not found: dataset "
        f"'bccd_test' is read from {nowhere}; set DATASETS.SHARED_ROOT (or the environment "
        "variable DETECTOR_SHARED_DATA) to the folder that holds bccd/"
    )
    with pytest.raises(DatasetError) as error:
        get_dataset("bccd_test", cfg, "test")  # registered by tests/shared_datasets.py
    assert str(error.value) == message


def test_split_errors_name_the_dataset(tmp_path: Path) -> None:
    """Was: `VOC split file not found: .../test.txt` while the user asked about the training
    set, without saying that the test set was meant."""
    root = _published_voc(tmp_path / "voc")
    split_dir = root / "ImageSets" / "Main"
    split_dir.mkdir(parents=True)
    (split_dir / "train.txt").write_text("a\n")
    argv = ["--config-file", SHAPES, "OUTPUT_DIR", tmp_path / "out", "DATASETS.TRAIN", "[mine]"]
    argv += ["DATASETS.TEST", "[mine_test]", "MODEL.ROI_BOX_HEAD.NUM_CLASSES", "2"]
    argv += ["DATASETS.CUSTOM", f"{{mine: {{FORMAT: voc, ROOT: '{root}', SPLIT: train}}, "]
    argv[-1] += f"mine_test: {{FORMAT: voc, ROOT: '{root}', SPLIT: test}}}}"
    assert_user_error(
        run_tool("train", *argv),
        f"error: test dataset 'mine_test' (DATASETS.TEST): VOC split file not found: "
        f"{split_dir}/test.txt (splits in that folder: train)",
    )


def test_voc_without_a_devkit_names_the_folders(tmp_path: Path) -> None:
    """Was: 'the training datasets [...] hold no image with a box' (and an empty test set)."""
    root = _published_voc(tmp_path / "signs")
    argv = ["--config-file", SHAPES, "OUTPUT_DIR", tmp_path / "out", "DATASETS.TRAIN", "[mine]"]
    argv += ["DATASETS.TEST", "[]", "MODEL.ROI_BOX_HEAD.NUM_CLASSES", "2"]
    argv += _custom("mine", ROOT=str(root), SPLIT="")
    assert_user_error(
        run_tool("train", *argv),
        f"error: training dataset 'mine' (DATASETS.TRAIN): no annotation: {root}/Annotations "
        f"holds no .xml file (folders in {root}: annotations/, images/); name the XML folder "
        "with ANN_DIR and the images' with IMAGE_DIR",
    )


@pytest.mark.parametrize(("split_file", "ids"), [("train.csv", ["a", "b"]), ("val.txt", ["b"])])
def test_voc_as_published_loads(tmp_path: Path, split_file: str, ids: list[str]) -> None:
    root = _published_voc(tmp_path / "signs")
    keys = {"ROOT": str(root), "IMAGE_DIR": "images", "ANN_DIR": "annotations"}
    cfg = merge_opts(get_cfg(), _custom("mine", **keys, SPLIT_FILE=split_file))
    dataset = get_dataset("mine", cfg)
    assert [r.image_id for r in dataset.records] == ids
    for index, image_id in enumerate(ids):
        image, target, meta = dataset[index]
        assert image.shape == (3, 30, 40) and target.gt_boxes.tensor.tolist() == [[4, 5, 25, 20]]
        assert Path(meta["file_name"]).parent == root / "images"
        assert Path(meta["file_name"]).stem == image_id


def test_voc_empty_split_file_is_an_error(tmp_path: Path) -> None:
    root = _published_voc(tmp_path / "signs")
    (root / "empty.txt").write_text("\n")
    keys = {"ROOT": str(root), "ANN_DIR": "annotations", "SPLIT_FILE": "empty.txt"}
    with pytest.raises(DatasetError, match=f"^{root}/empty.txt lists no image$"):
        get_dataset("mine", merge_opts(get_cfg(), _custom("mine", **keys)))


def test_an_empty_test_set_is_an_error(tmp_path: Path) -> None:
    """Was: a test set of 0 images, silently (any format)."""
    ann = tmp_path / "empty.json"
    ann.write_text('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}')
    spec = f"{{empty: {{FORMAT: coco, ANN_FILE: '{ann}', IMAGE_DIR: '{tmp_path}'}}}}"
    cfg = merge_opts(get_cfg(), ["DATASETS.CUSTOM", spec, "MODEL.ROI_BOX_HEAD.NUM_CLASSES", "2"])
    message = "test dataset 'empty' (DATASETS.TEST): the dataset holds no image"
    with pytest.raises(DatasetError, match=f"^{re.escape(message)}$"):
        build_test_loader(cfg, "empty")
