"""Exported models run elsewhere: each format (ONNX, TorchScript, torch.export) of each model kind
(Faster R-CNN, Mask R-CNN, DCN, Keypoint R-CNN) is exported once by tools/export.py, then run in
a fresh process (ONNX: tools/onnx_infer.py with onnxruntime alone, torch and detector never
imported) on real images of several sizes and aspect ratios, one without detections and some
with many more than the sample; the results equal eager PyTorch's on the same network input.
Keypoint models hand their heatmap logits out of the graph: the ONNX runner's heatmaps equal
eager's, and the programs' heatmaps decode to eager's keypoints (within 1e-3 px in the original
image).

The random-weight tiny model is made decisive: its class scores and mask logits are scaled so
that detections pass a 0.7 score threshold on some images and not on others, and mask pixels
are far from the 0.5 binarization threshold.
"""

from __future__ import annotations

import io
import subprocess
import sys
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from detector import Predictor
from detector.config import load_config
from detector.data import read_image
from detector.engine.checkpoint import Checkpointer
from detector.export.inference_model import InferenceModel, prepare_image
from detector.layers.conv import winograd
from detector.modeling.detector import GeneralizedRCNN
from detector.modeling.roi_heads.keypoint_head import heatmaps_to_keypoints
from detector.structures import Boxes, Instances
from tests.export.tiny_model import TINY_KEYPOINT_YAML, TINY_YAML, load_tool

REPO = Path(__file__).resolve().parents[2]
BOX_ATOL, SCORE_ATOL, MASK_PIXELS, KEYPOINT_ATOL = 1e-3, 1e-4, 1e-3, 1e-3
OPTS = [
    "MODEL.ROI_HEADS.SCORE_THRESH", "0.7", "MODEL.ROI_HEADS.DETECTIONS_PER_IMG", "100",
    "MODEL.RPN.POST_NMS_TOP_N_TEST", "100", "MODEL.RPN.FPN_POST_NMS_TOP_N_TEST", "100",
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160",
]  # fmt: skip
SAMPLE = "bccd/BCCD/JPEGImages/BloodImage_00000.jpg"  # 480 x 640 -> 96 x 128, the traced one
IMAGES = [
    SAMPLE,
    "coco-val2017-sample6/images/000000194216.jpg",  # 294 x 640 -> 74 x 160: none (Faster, Mask)
    "coco-val2017-sample6/images/000000000089.jpg",  # many detections
    "coco-val2017-sample6/images/000000404249.jpg",  # portrait -> 144 x 96
    "coco-val2017-sample6/images/000000464689.jpg",  # -> 105 x 96
    "bccd/BCCD/JPEGImages/BloodImage_00010.jpg",  # none (DCN)
    "dsb2018-nuclei/stage1_train/01d44a26f6680c42ba94c9bc6339228579a95d0e2695b149b7cc0c9592b21baf"
    "/images/01d44a26f6680c42ba94c9bc6339228579a95d0e2695b149b7cc0c9592b21baf.png",  # -> 96 x 120
]
DCN = "    NORM: GN\n    STAGE_WITH_DCN: (False, True, False, True)\n    WITH_MODULATED_DCN: True\n"


@dataclass
class Model:
    """A decisive tiny model saved as a checkpoint, its config and its eager predictor."""

    kind: str
    cfg: Any
    config_file: Path
    checkpoint: Path
    predictor: Predictor


def _yaml(kind: str) -> str:
    if kind == "keypoint":
        return TINY_KEYPOINT_YAML  # on top of tiny.yaml (boxes only)
    text = TINY_YAML.format(mask_on=kind == "mask")
    return text.replace("    NORM: GN\n", DCN) if kind == "dcn" else text


# Class-logit scale per kind: the DCN trunk's spread offsets give larger features, so a smaller
# scale keeps its scores spread around the 0.7 threshold (zero detections on some images).
CLASS_SCALE = {"faster": 60.0, "mask": 60.0, "dcn": 13.0, "keypoint": 60.0}


def _make_decisive(model: GeneralizedRCNN, kind: str) -> None:
    """Scales class logits (CLASS_SCALE) and mask logits (x50), gives DCN offsets a spread."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("cls_score.weight"):
                p.mul_(CLASS_SCALE[kind])
            elif "mask" in name and name.endswith("logits.weight"):
                p.mul_(50.0)
            elif "offset" in name:
                torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(1))


def make_model(kind: str, directory: Path) -> Model:
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / f"{kind}.yaml"
    config_file.write_text(_yaml(kind))
    (directory / "tiny.yaml").write_text(TINY_YAML.format(mask_on=False))  # the keypoint base
    cfg = load_config(config_file, OPTS)
    torch.manual_seed(0)
    model = GeneralizedRCNN.from_config(cfg).eval()
    _make_decisive(model, kind)
    checkpoint = Checkpointer(directory, model=model).save("model_final")
    return Model(kind, cfg, config_file, checkpoint, Predictor(cfg, checkpoint))


def _images(shared_data: Path) -> list[Path]:
    paths = [shared_data / name for name in IMAGES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"shared images missing: {missing[0]}")
    return paths


def export_with_tool(model: Model, fmt: str, output: Path, shared_data: Path) -> str:
    """tools/export.py --format fmt on the sample image; returns what it printed."""
    argv = ["--config-file", str(model.config_file), "MODEL.WEIGHT", str(model.checkpoint), *OPTS]
    argv += ["--format", fmt, "--output", str(output), "--sample-image", str(shared_data / SAMPLE)]
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert load_tool("export").main(argv) == 0
    return printed.getvalue()


def eager_result(model: Model, network_input: Tensor, image_size: tuple[int, int]) -> dict:
    """Eager PyTorch on a network input, post-processed as detector.Predictor does."""
    with torch.no_grad(), winograd(False):  # exported graphs have direct convolutions
        outputs = InferenceModel(model.predictor.model)(network_input)
    return _to_result(model, outputs, tuple(network_input.shape[-2:]), image_size)


def _to_result(model: Model, outputs: Any, input_size: tuple, image_size: tuple) -> dict:
    boxes = torch.as_tensor(outputs[0])
    fields = {"pred_boxes": Boxes(boxes), "scores": outputs[1], "pred_classes": outputs[2]}
    if model.kind == "keypoint":  # heatmap logits (N, K, S, S) -> keypoints (N, K, 3)
        fields["pred_keypoints"] = heatmaps_to_keypoints(torch.as_tensor(outputs[3]), boxes)
    elif len(outputs) > 3:
        fields["pred_masks"] = outputs[3]
    result = model.predictor._postprocess(Instances(input_size, **fields), image_size)
    if model.kind == "keypoint":
        result["keypoint_heatmaps"] = torch.as_tensor(outputs[3])
    return result


def assert_same(got: dict[str, Any], expected: dict[str, Any], where: str) -> int:
    """Asserts equal detections (boxes within BOX_ATOL px, scores within SCORE_ATOL, equal labels,
    masks differing on at most MASK_PIXELS of their pixels); returns the detection count."""
    count = len(expected["scores"])
    assert len(got["scores"]) == count, f"{where}: {len(got['scores'])} detections, eager {count}"
    assert torch.equal(torch.as_tensor(got["labels"]), expected["labels"]), where
    box_error = (torch.as_tensor(got["boxes"]) - expected["boxes"]).abs().max() if count else 0
    score_error = (torch.as_tensor(got["scores"]) - expected["scores"]).abs().max() if count else 0
    assert box_error <= BOX_ATOL and score_error <= SCORE_ATOL, (where, box_error, score_error)
    if "keypoint_heatmaps" in expected:  # the graph's logits (N, K, S, S)
        heatmaps = torch.as_tensor(got["keypoint_heatmaps"])
        torch.testing.assert_close(heatmaps, expected["keypoint_heatmaps"], rtol=1e-4, atol=1e-3)
    if "keypoints" in expected and "keypoints" in got:  # (N, K, 3) in the original image
        error = (torch.as_tensor(got["keypoints"]) - expected["keypoints"]).abs()
        assert count == 0 or error[..., :2].max() <= KEYPOINT_ATOL, (where, error.max())
    if "masks" in expected:
        masks = torch.as_tensor(got["masks"])
        assert masks.shape == expected["masks"].shape, where
        differing = (masks != expected["masks"]).float().mean() if count else 0.0
        assert differing <= MASK_PIXELS, (where, float(differing))
    return count


def _check_counts(counts: list[int]) -> None:
    """The images cover what the proof needs: none on one, many more than the sample on one."""
    assert 0 in counts, counts
    assert max(counts) >= counts[0] + 4, counts


KINDS = [
    "faster",
    "mask",
    pytest.param("dcn", marks=pytest.mark.slow),
    pytest.param("keypoint", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module", params=KINDS)
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Model:
    return make_model(request.param, tmp_path_factory.mktemp(f"deploy_{request.param}"))


RUNNER = """
import sys
sys.argv = ["onnx_infer.py", *sys.argv[1:]]
sys.path.insert(0, {tools!r})
import onnx_infer
code = onnx_infer.main()
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "detector"))
assert not leaked, leaked
sys.exit(code)
"""


def test_onnx_runner_matches_eager(model: Model, shared_data: Path, tmp_path: Path) -> None:
    """tools/onnx_infer.py in a fresh process (onnxruntime, numpy, Pillow) equals eager PyTorch
    given the same network input (the runner's own resize, saved in its .npz)."""
    images = _images(shared_data)
    onnx_path = tmp_path / f"{model.kind}.onnx"
    assert "onnxruntime matches PyTorch" in export_with_tool(model, "onnx", onnx_path, shared_data)
    saved = tmp_path / "results.npz"
    runner = RUNNER.format(tools=str(REPO / "tools"))
    argv = [sys.executable, "-c", runner, str(onnx_path), *map(str, images), "--save", str(saved)]
    subprocess.run(argv, check=True, cwd=tmp_path, capture_output=True)
    results = np.load(saved)
    counts = []
    for index, path in enumerate(images):
        got = {key.split("/")[1]: results[key] for key in results if key.startswith(f"{index}/")}
        network_input = torch.from_numpy(results[f"{index}/input"])
        expected = eager_result(model, network_input, tuple(read_image(path).shape[-2:]))
        counts.append(assert_same(got, expected, f"{model.kind} ONNX {path.name}"))
    _check_counts(counts)


PROGRAM_RUNNER = """
import sys
import torch
from detector.export import load
torch.set_num_threads(1)
module = load(sys.argv[1])
with torch.no_grad():
    outputs = [tuple(module(image)) for image in torch.load(sys.argv[2])]
torch.save(outputs, sys.argv[3])
"""


@pytest.mark.parametrize(
    ("fmt", "suffix"),
    [("torchscript", ".ts"), pytest.param("torch-export", ".pt2", marks=pytest.mark.slow)],
)
def test_program_in_a_fresh_process_matches_eager(
    model: Model, fmt: str, suffix: str, shared_data: Path, tmp_path: Path
) -> None:
    """A TorchScript / torch.export file, loaded by detector.export.load in a fresh process and
    run on the network inputs of the images, equals eager PyTorch after the same postprocess."""
    images = _images(shared_data)
    path = tmp_path / f"{model.kind}{suffix}"
    assert "matches PyTorch" in export_with_tool(model, fmt, path, shared_data)
    inputs = [prepare_image(model.cfg, read_image(p)) for p in images]
    torch.save(inputs, tmp_path / "inputs.pt")
    argv = [sys.executable, "-c", PROGRAM_RUNNER, str(path), str(tmp_path / "inputs.pt")]
    subprocess.run([*argv, str(tmp_path / "out.pt")], check=True, cwd=REPO, capture_output=True)
    outputs = torch.load(tmp_path / "out.pt")
    counts = []
    for file, network_input, output in zip(images, inputs, outputs, strict=True):
        size = tuple(read_image(file).shape[-2:])
        got = _to_result(model, output, tuple(network_input.shape[-2:]), size)
        expected = eager_result(model, network_input, size)
        counts.append(assert_same(got, expected, f"{model.kind} {fmt} {file.name}"))
    _check_counts(counts)


def test_runner_resize_is_within_one_gray_level(shared_data: Path, tmp_path: Path) -> None:
    """The runner's Pillow resize (antialias mode) against detector's test transform."""
    from PIL import Image

    runner = load_tool("onnx_infer")
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(_yaml("mask"))
    cfg = load_config(config_file, OPTS)
    meta = {"min_size_test": "96", "max_size_test": "160", "resize_mode": "antialias"}
    for file in _images(shared_data):
        with Image.open(file) as opened:
            ours = runner.network_input(opened.convert("RGB"), meta)
        expected = prepare_image(cfg, read_image(file)).numpy()
        assert ours.shape == expected.shape, file.name
        assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1, file.name
