"""Bad data files and annotations: each is a DatasetError naming the file (and image or
annotation id), or a counted skip; never a crash deep in a decoder or a NaN box in a target.

Cases already proven elsewhere are listed in docs/reliability.md with their tests.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from detector.data import DatasetError, read_image
from detector.data.datasets.coco import COCODataset
from detector.data.datasets.voc import VOCDataset

WIDTH, HEIGHT = 32, 24


def _jpeg_bytes() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _coco(tmp_path: Path, image_bytes: bytes | None, bbox: list | None = None) -> COCODataset:
    """A one-image COCO dataset whose image file holds `image_bytes` (None: no file)."""
    if image_bytes is not None:
        (tmp_path / "img.jpg").write_bytes(image_bytes)
    data = {
        "images": [{"id": 7, "file_name": "img.jpg", "height": HEIGHT, "width": WIDTH}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": 11, "image_id": 7, "category_id": 1, "bbox": bbox or [1, 2, 10, 5]}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return COCODataset(path, tmp_path, max_pixels=WIDTH * HEIGHT)


def test_good_image_loads(tmp_path):
    image, target, meta = _coco(tmp_path, _jpeg_bytes())[0]
    assert image.shape == (3, HEIGHT, WIDTH) and image.dtype == torch.uint8
    assert target.gt_boxes.tensor.tolist() == [[1.0, 2.0, 11.0, 7.0]]
    assert meta["image_id"] == 7


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (_jpeg_bytes()[: len(_jpeg_bytes()) // 2], "cannot"),  # truncated JPEG
        (_jpeg_bytes()[:20], "cannot"),  # truncated inside the header
        (b"", "cannot"),  # zero-byte file
        (b"name,x,y\n1,2,3\n", "cannot"),  # not an image at all
        (None, "image file not found"),  # missing file
    ],
    ids=["truncated-jpeg", "truncated-header", "zero-byte", "not-an-image", "missing"],
)
def test_unreadable_image_is_an_error_naming_the_file(tmp_path, content, words):
    dataset = _coco(tmp_path, content)
    with pytest.raises(DatasetError) as info:
        dataset[0]
    assert str(tmp_path / "img.jpg") in str(info.value)
    assert words in str(info.value)


def test_unreadable_image_stops_a_worker_loader_with_the_file_name(tmp_path):
    dataset = _coco(tmp_path, b"")
    loader = DataLoader(dataset, batch_size=1, num_workers=1, collate_fn=list)
    with pytest.raises(DatasetError, match=r"img\.jpg"):
        next(iter(loader))


def test_image_over_max_image_pixels_is_refused_before_decoding(tmp_path):
    Image.fromarray(np.zeros((HEIGHT, WIDTH + 1, 3), np.uint8)).save(tmp_path / "img.jpg")
    dataset = _coco(tmp_path, None)  # max_pixels = WIDTH * HEIGHT, one column fewer
    with pytest.raises(DatasetError, match=r"img\.jpg.*exceeds INPUT\.MAX_IMAGE_PIXELS"):
        dataset[0]


def test_max_image_pixels_from_the_config_reaches_the_dataset(tmp_path):
    from detector.config import load_config
    from detector.data import get_dataset

    _coco(tmp_path, _jpeg_bytes())  # writes img.jpg (32 x 24) and ann.json
    config = tmp_path / "custom.yaml"
    config.write_text(
        f"INPUT:\n  MAX_IMAGE_PIXELS: {WIDTH * HEIGHT - 1}\n"
        "DATASETS:\n  CUSTOM:\n"
        f"    tiny: {{FORMAT: coco, ANN_FILE: '{tmp_path}/ann.json', IMAGE_DIR: '{tmp_path}'}}\n"
    )
    dataset = get_dataset("tiny", load_config(config))
    with pytest.raises(
        DatasetError, match=rf"img\.jpg.*INPUT\.MAX_IMAGE_PIXELS = {WIDTH * HEIGHT - 1}"
    ):
        dataset[0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_coco_nan_or_infinite_bbox_names_file_and_annotation(tmp_path, bad):
    with pytest.raises(DatasetError) as info:
        _coco(tmp_path, None, bbox=[1, bad, 10, 5])
    message = str(info.value)
    assert "ann.json" in message and "annotation id 11" in message
    assert "NaN or infinite" in message


@pytest.mark.parametrize(
    "bbox",
    [[5, 5, -3, 4], [5, 5, 4, -3], [5, 5, 0, 4], [WIDTH + 1, 2, 5, 5], [-20, -20, 10, 10]],
    ids=["negative-width", "negative-height", "zero-width", "right-of-image", "above-left"],
)
def test_coco_degenerate_or_outside_box_is_skipped_and_counted(tmp_path, bbox):
    dataset = _coco(tmp_path, None, bbox=bbox)
    assert dataset.num_skipped == 1
    assert dataset.num_instances(0) == 0


def test_coco_box_partly_outside_is_clipped(tmp_path):
    dataset = _coco(tmp_path, None, bbox=[-4, 20, 10, 10])
    assert dataset.num_skipped == 0
    boxes = dataset.load_target(0).gt_boxes.tensor
    assert boxes.tolist() == [[0.0, 20.0, 6.0, float(HEIGHT)]]


def _voc(tmp_path: Path, xml: str) -> Path:
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("img1\n")
    (tmp_path / "Annotations" / "img1.xml").write_text(xml)
    return tmp_path


def _voc_xml(box: tuple) -> str:
    tags = ("xmin", "ymin", "xmax", "ymax")
    coords = "".join(f"<{k}>{v}</{k}>" for k, v in zip(tags, box, strict=True))
    return (
        f"<annotation><size><width>{WIDTH}</width><height>{HEIGHT}</height></size>"
        f"<object><name>a</name><bndbox>{coords}</bndbox></object></annotation>"
    )


def test_voc_xml_that_does_not_parse_names_the_file(tmp_path):
    root = _voc(tmp_path, "<annotation><size><width>3</width></annotation")
    with pytest.raises(DatasetError, match=r"img1\.xml: not valid XML"):
        VOCDataset(root, "train", ["a"])


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_voc_nan_coordinate_names_the_file_and_tag(tmp_path, bad):
    root = _voc(tmp_path, _voc_xml((1, bad, 10, 10)))
    with pytest.raises(DatasetError, match=r"img1\.xml: <bndbox/ymin> must be a finite number"):
        VOCDataset(root, "train", ["a"])


@pytest.mark.parametrize(
    "box",
    [
        (10, 5, 4, 9),
        (5, 9, 9, 3),
        (5, 5, 5, 9),
        (WIDTH + 5, 2, WIDTH + 9, 9),
        (2, HEIGHT + 3, 9, HEIGHT + 8),
    ],
    ids=["inverted-x", "inverted-y", "xmin-equals-xmax", "right-of-image", "below-image"],
)
def test_voc_degenerate_or_outside_box_is_skipped_and_counted(tmp_path, box):
    dataset = VOCDataset(_voc(tmp_path, _voc_xml(box)), "train", ["a"])
    assert dataset.num_skipped == 1
    assert dataset.num_instances(0) == 0


def test_worker_error_keeps_the_one_line_message(tmp_path):
    """torch re-raises a worker's error with its traceback in the message; DatasetError keeps
    the one line (tools print it as their `error:` line) and the traceback aside."""
    dataset = _coco(tmp_path, b"")
    loader = DataLoader(dataset, batch_size=1, num_workers=1, collate_fn=list)
    with pytest.raises(DatasetError) as info:
        next(iter(loader))
    message = str(info.value)
    assert "\n" not in message and "img.jpg" in message and "Caught" not in message
    assert "Traceback" in info.value.worker_traceback


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header announces width x height (8-bit gray) and whose pixels are 1 row: what
    a decompression bomb looks like to a header reader."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * (width + 1))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels))


def test_bomb_past_pil_limit_names_the_file_and_key(tmp_path):
    """16000 x 16000 used to raise PIL's DecompressionBombError naming neither file nor key."""
    _png_header_only(tmp_path / "bomb.png", 16000, 16000)
    with pytest.raises(DatasetError, match=r"bomb\.png: refused before decoding.*MAX_IMAGE_PIX"):
        read_image(tmp_path / "bomb.png", max_pixels=10**12)


def test_demo_refuses_a_bomb_naming_the_file_and_key(tmp_path, capsys):
    from tests.export.tiny_model import load_tool, make_tiny_run

    run = make_tiny_run(tmp_path / "tiny")
    _png_header_only(tmp_path / "big.png", 12000, 12000)  # under PIL's limit, over the config's
    argv = ["--config-file", str(run.config_file), "--weights", str(run.checkpoint)]
    argv += ["--input", str(tmp_path / "big.png"), "--output", str(tmp_path / "out")]
    argv += ["INPUT.MAX_IMAGE_PIXELS", "1000000"]  # bare KEY VALUE, as every tool
    assert load_tool("demo").main(argv) == 1
    err = capsys.readouterr().err
    assert "big.png: 12000x12000 = 144000000 pixels exceeds INPUT.MAX_IMAGE_PIXELS" in err


def _png16(path: Path, values: list[int]) -> None:
    """A 16-bit RGB PNG of one row of gray pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", len(values), 1, 16, 2, 0, 0, 0)
    row = b"\x00" + b"".join(struct.pack(">HHH", v, v, v) for v in values)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row))
        + chunk(b"IEND", b"")
    )  # fmt: skip


def test_16_bit_png_is_scaled_to_8_bits(tmp_path):
    """It used to come back as uint16 0..65535 (257 times too bright for the model); 1-bit
    images come back as 0 / 255."""
    _png16(tmp_path / "deep.png", [0, 128, 129, 257, 32768, 65535])
    image = read_image(tmp_path / "deep.png")
    assert image.dtype == torch.uint8 and image.shape == (3, 1, 6)
    assert image[0, 0].tolist() == [0, 0, 1, 1, 128, 255]
    gray = tmp_path / "gray16.png"
    Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(gray)
    assert read_image(gray)[:, 0].tolist() == [[0, 255]] * 3
    one_bit = tmp_path / "bits.png"
    Image.fromarray(np.array([[0, 1, 0, 1]], dtype=bool)).save(one_bit)  # mode "1": 1 bit/pixel
    assert read_image(one_bit)[:, 0].tolist() == [[0, 255, 0, 255]] * 3
