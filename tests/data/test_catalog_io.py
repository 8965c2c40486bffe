"""The dataset catalog, datasets declared in the config, and image decoding."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.config import get_cfg, load_config, merge_opts
from detector.data import (
    COCODataset,
    DatasetError,
    DatasetSpec,
    ShapesDataset,
    VOCDataset,
    build_train_loader,
    catalog,
    get_dataset,
    list_datasets,
    read_image,
    read_image_size,
    register_dataset,
    shared_data_root,
)


def test_builtin_names_and_unknown_name_suggestion():
    names = list_datasets()
    expected = [
        "coco_2017_train", "coco_2017_val", "voc_2007_trainval", "voc_2007_test",
        "voc_2012_trainval", "voc_2012_seg_train", "shapes_train", "shapes_val", "coco_sample6",
        "bccd_train", "bccd_test", "dsb2018_train", "dsb2018_val", "chess_valid",
    ]  # fmt: skip
    for name in expected:
        assert name in names
    with pytest.raises(DatasetError, match="Did you mean 'bccd_train'"):
        get_dataset("bccd_trian", get_cfg())


def test_missing_public_dataset_names_the_expected_path(tmp_path):
    cfg = merge_opts(get_cfg(), ["DATASETS.ROOT", str(tmp_path)])
    with pytest.raises(
        DatasetError, match=str(tmp_path / "coco/annotations/instances_val2017.json")
    ):
        get_dataset("coco_2017_val", cfg)
    with pytest.raises(DatasetError, match=str(tmp_path / "voc/VOC2007")):
        get_dataset("voc_2007_test", cfg)


@pytest.mark.parametrize(
    ("name", "ann_file", "image_dir"),
    [
        ("coco_2014_train", "coco/annotations/instances_train2014.json", "coco/train2014"),
        ("coco_2014_minival", "coco/annotations/instances_minival2014.json", "coco/val2014"),
        ("coco_2014_valminusminival", "coco/annotations/instances_valminusminival2014.json",
         "coco/val2014"),
        ("keypoints_coco_2014_val", "coco/annotations/person_keypoints_val2014.json",
         "coco/val2014"),
        ("voc_2007_test_cocostyle", "voc/VOC2007/Annotations/pascal_test2007.json",
         "voc/VOC2007/JPEGImages"),
        ("voc_2012_train_cocostyle", "voc/VOC2012/Annotations/pascal_train2012.json",
         "voc/VOC2012/JPEGImages"),
        ("cityscapes_fine_instanceonly_seg_val_cocostyle",
         "cityscapes/annotations/instancesonly_filtered_gtFine_val.json", "cityscapes/images"),
    ],
)  # fmt: skip
def test_maskrcnn_benchmark_dataset_names(tmp_path, name, ann_file, image_dir):
    """maskrcnn_benchmark's catalog names, in its folder layout under DATASETS.ROOT: a missing
    file names the path it expects; a file there loads."""
    import json

    cfg = merge_opts(get_cfg(), ["DATASETS.ROOT", str(tmp_path)])
    with pytest.raises(DatasetError, match=str(tmp_path / ann_file)):
        get_dataset(name, cfg)
    (tmp_path / image_dir).mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(tmp_path / image_dir / "a.jpg")
    (tmp_path / ann_file).parent.mkdir(parents=True, exist_ok=True)
    coco = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 40, "height": 30}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [2, 3, 10, 12], "area": 120,
             "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "person"}],
    }  # fmt: skip
    (tmp_path / ann_file).write_text(json.dumps(coco))
    dataset = get_dataset(name, cfg)
    assert isinstance(dataset, COCODataset) and len(dataset) == 1
    assert dataset.class_names[1:] == ["person"]


def test_shared_root_from_key_then_environment(monkeypatch, shared_data):
    monkeypatch.delenv("DETECTOR_SHARED_DATA", raising=False)
    assert shared_data_root(get_cfg()) == Path("../shared/data")
    monkeypatch.setenv("DETECTOR_SHARED_DATA", str(shared_data))
    assert shared_data_root(get_cfg()) == shared_data
    dataset = get_dataset("bccd_test", get_cfg())
    assert isinstance(dataset, VOCDataset) and len(dataset) == 72
    assert dataset.class_names == ["__background__", "RBC", "WBC", "Platelets"]
    cfg = merge_opts(get_cfg(), ["DATASETS.SHARED_ROOT", "/nowhere"])
    assert shared_data_root(cfg) == Path("/nowhere")


def test_builtin_shared_datasets(shared_data):
    cfg = merge_opts(get_cfg(), ["DATASETS.SHARED_ROOT", str(shared_data)])
    assert len(get_dataset("coco_sample6", cfg)) == 6
    assert len(get_dataset("dsb2018_val", cfg)) == 74
    shapes = get_dataset("shapes_val", cfg)
    assert isinstance(shapes, ShapesDataset) and len(shapes) == 64 and shapes.seed == 1


def test_custom_datasets_from_a_yaml_file(tmp_path, shared_data):
    sample = shared_data / "coco-val2017-sample6"
    config = tmp_path / "custom.yaml"
    config.write_text(
        "DATASETS:\n"
        "  TRAIN: [my_coco]\n"
        "  CUSTOM:\n"
        f"    my_coco: {{FORMAT: coco, ANN_FILE: '{sample}/annotations.json',"
        f" IMAGE_DIR: '{sample}/images'}}\n"
        f"    my_voc: {{FORMAT: voc, ROOT: '{shared_data}/bccd/BCCD', SPLIT: val,"
        " CLASS_NAMES: [RBC, WBC, Platelets]}\n"
        "    my_shapes: {FORMAT: shapes, NUM_IMAGES: 5, SEED: 9, IMAGE_SIZE: 96}\n"
    )
    cfg = load_config(config)
    assert {"my_coco", "my_voc", "my_shapes"} <= set(list_datasets(cfg))
    coco = get_dataset("my_coco", cfg)
    assert isinstance(coco, COCODataset) and len(coco) == 6
    voc = get_dataset("my_voc", cfg)
    assert len(voc) == 87 and voc.class_names[1:] == ["RBC", "WBC", "Platelets"]
    shapes = get_dataset("my_shapes", cfg)
    assert len(shapes) == 5 and shapes[0][0].shape == (3, 96, 96)


def test_register_dataset_spec_and_factory(monkeypatch):
    monkeypatch.setattr(catalog, "_CATALOG", dict(catalog._CATALOG))  # restored after the test
    monkeypatch.setattr(catalog, "_FACTORIES", dict(catalog._FACTORIES))
    register_dataset("test_tiny_shapes", DatasetSpec("shapes", num_images=2, seed=4))
    register_dataset("test_factory", lambda cfg: ShapesDataset(3, seed=cfg.SEED))
    cfg = merge_opts(get_cfg(), ["SEED", "11"])
    assert len(get_dataset("test_tiny_shapes", cfg)) == 2
    made = get_dataset("test_factory", cfg)
    assert len(made) == 3 and made.seed == 11
    assert {"test_tiny_shapes", "test_factory"} <= set(list_datasets())
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("test_factory", lambda cfg: None)


def test_every_custom_dataset_key_reaches_the_spec():
    # DatasetSpec's fields are DATASETS.CUSTOM's keys in lower case (+ base): one list of fields
    from dataclasses import fields

    from detector.config.defaults import CustomDatasetConfig

    spec_fields = {f.name for f in fields(DatasetSpec)} - {"base"}
    assert spec_fields == {f.name.lower() for f in fields(CustomDatasetConfig)}
    declared = (
        "{kp: {FORMAT: voc, ANN_FILE: a.json, IMAGE_DIR: im, ANN_DIR: an, ROOT: r, SPLIT: s,"
        " SPLIT_FILE: f.txt, CLASS_NAMES: [x, y], MASKS: true, NUM_IMAGES: 7, SEED: 3,"
        " IMAGE_SIZE: 96, KEYPOINTS: true, KEYPOINT_NAMES: [l_eye, r_eye],"
        " KEYPOINT_FLIP_MAP: [[l_eye, r_eye]], KEYPOINT_SKELETON: [[l_eye, r_eye]],"
        " KEYPOINT_OKS_SIGMAS: [0.25, 0.5]}}"
    )
    cfg = merge_opts(get_cfg(), ["DATASETS.CUSTOM", declared])
    spec = catalog.get_dataset_spec("kp", cfg)
    assert spec == DatasetSpec(
        "voc", ann_file="a.json", image_dir="im", root="r", split="s", ann_dir="an",
        split_file="f.txt", class_names=("x", "y"), num_images=7, seed=3, image_size=96,
        masks=True, base="cwd", keypoints=True, keypoint_names=("l_eye", "r_eye"),
        keypoint_flip_map=(("l_eye", "r_eye"),), keypoint_skeleton=(("l_eye", "r_eye"),),
        keypoint_oks_sigmas=(0.25, 0.5),
    )  # fmt: skip
    hash(spec)  # frozen all the way down: the spec can key a cache


def test_custom_dataset_errors(tmp_path):
    cfg = merge_opts(get_cfg(), ["DATASETS.CUSTOM", "{mine: {FORMAT: coco, IMAGE_DIR: x}}"])
    with pytest.raises(DatasetError, match=r"DATASETS.CUSTOM.mine.ANN_FILE"):
        get_dataset("mine", cfg)
    with pytest.raises(Exception, match="FORMAT"):
        merge_opts(get_cfg(), ["DATASETS.CUSTOM", "{mine: {FORMAT: yolo}}"])
    cfg = merge_opts(get_cfg(), ["DATASETS.CUSTOM", "{s: {FORMAT: shapes}}"])
    with pytest.raises(DatasetError, match="NUM_IMAGES"):
        get_dataset("s", cfg)


def test_training_on_two_datasets_concatenates_them(shared_data):
    opts = ["DATASETS.CUSTOM", "{tiny: {FORMAT: shapes, NUM_IMAGES: 3, SEED: 5, IMAGE_SIZE: 64}}",
            "DATASETS.TRAIN", "[tiny, shapes_val]", "DATALOADER.NUM_WORKERS", "0",
            "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "1",
            "MODEL.ROI_BOX_HEAD.NUM_CLASSES", "4"]  # fmt: skip
    loader = build_train_loader(merge_opts(get_cfg(), opts))
    dataset = loader.dataset.dataset
    assert len(dataset) == 67 and dataset.class_names[1:] == ["square", "circle", "triangle"]
    assert dataset.get_image_size(2) == (64, 64) and dataset.get_image_size(3) == (128, 128)
    assert torch.equal(dataset[3][0], get_dataset("shapes_val", get_cfg())[0][0])
    mixed = merge_opts(get_cfg(), ["DATASETS.TRAIN", "[tiny, bccd_val]", "DATASETS.SHARED_ROOT",
                                   str(shared_data), *opts[:2]])  # fmt: skip
    with pytest.raises(DatasetError, match="different class names"):
        build_train_loader(mixed)


# --------------------------------------------------------------------------------------------
# Image decoding
# --------------------------------------------------------------------------------------------
def test_grayscale_and_rgba_become_rgb(tmp_path):
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    image = read_image(tmp_path / "gray.png")
    assert image.shape == (3, 12, 10)
    for c in range(3):
        assert torch.equal(image[c], torch.from_numpy(gray))
    rgba = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    image = read_image(tmp_path / "rgba.png")
    assert torch.equal(image, torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))
    assert read_image_size(tmp_path / "rgba.png") == (5, 7)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :10] = 255  # a white band on the left of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif, quality=95)
    (tmp_path / "rotated.jpg").write_bytes(buffer.getvalue())
    image = read_image(tmp_path / "rotated.jpg")
    assert image.shape == (3, 40, 20)
    assert read_image_size(tmp_path / "rotated.jpg") == (40, 20)
    assert image[:, :10].float().mean() > 200 and image[:, 30:].float().mean() < 50  # band on top


def test_missing_huge_and_corrupt_images(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_image(tmp_path / "nope.jpg")
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(DatasetError, match="MAX_IMAGE_PIXELS"):
        read_image(tmp_path / "big.png", max_pixels=899)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="bad.jpg"):
        read_image(tmp_path / "bad.jpg")
