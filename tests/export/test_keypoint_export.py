"""A Keypoint R-CNN exported like the others: ONNX (onnxruntime) and torch.export programs give
eager PyTorch's boxes, scores, labels and keypoint heatmaps on real COCO images; decoding the
exported heatmaps gives the eager model's keypoints; slim checkpoints carry the keypoint names
and skeleton, and the Predictor returns keypoints (N, K, 3) in the original image's pixels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detector import Predictor
from detector.config import merge_opts
from detector.data import read_image
from detector.export.inference_model import InferenceModel, compare_outputs, prepare_image
from detector.export.onnx import check_onnx, export_onnx
from detector.export.program import export_program
from detector.export.slim import export_slim
from detector.layers.conv import winograd
from detector.modeling.roi_heads.keypoint_head import heatmaps_to_keypoints
from tests.export.tiny_model import TinyRun, load_tool, make_tiny_run

COCO_IMAGES = "coco-val2017-sample6/images"
K = 5  # the tiny model's keypoints


@pytest.fixture(scope="module")
def keypoint_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return make_tiny_run(tmp_path_factory.mktemp("tiny_keypoint"), mask_on=False, keypoint_on=True)


def _coco(shared_data: Path, name: str) -> Path:
    path = shared_data / COCO_IMAGES / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def _eager_keypoints(run: TinyRun, image: torch.Tensor) -> torch.Tensor:
    """The eager model's decoded keypoints (N, K, 3) in the network input's pixels."""
    head = run.model.roi_heads.keypoint_head
    decode, head.decode = head.decode, True
    try:
        with torch.no_grad(), winograd(False):
            return run.model([image])[0].pred_keypoints
    finally:
        head.decode = decode


def test_onnx_keypoint_model_matches_pytorch(
    keypoint_run: TinyRun, shared_data: Path, tmp_path: Path
) -> None:
    first = _coco(shared_data, "000000404249.jpg")
    path = tmp_path / "keypoint.onnx"
    report = export_onnx(keypoint_run.config_file, keypoint_run.checkpoint, path,
                         sample_image=first)  # fmt: skip
    assert "onnxruntime matches PyTorch" in report
    wrapper = InferenceModel(keypoint_run.model)
    assert wrapper.output_names[-1] == "keypoint_heatmaps"
    for name in ("000000404249.jpg", "000000343934.jpg"):  # portrait and landscape
        image = prepare_image(keypoint_run.cfg, read_image(_coco(shared_data, name)))
        assert check_onnx(path, wrapper, image, atol=1e-3) <= 1e-3
        with torch.no_grad():
            boxes, *_, heatmaps = wrapper(image)
        assert len(boxes) > 0 and heatmaps.shape == (len(boxes), K, 28, 28)
    # tools/onnx_infer.py hands the heatmaps on by name (no masks: this model has none)
    from PIL import Image

    tool = load_tool("onnx_infer")
    session, meta = tool.load_session(path)
    with Image.open(first) as opened:
        result = tool.predict(session, meta, opened.convert("RGB"))
    assert "masks" not in result
    assert result["keypoint_heatmaps"].shape == (len(result["boxes"]), K, 28, 28)


def test_program_keypoints_decode_to_the_eager_keypoints(
    keypoint_run: TinyRun, shared_data: Path, tmp_path: Path
) -> None:
    sizes = ["INPUT.MIN_SIZE_TEST", "80", "INPUT.MAX_SIZE_TEST", "192"]
    cfg = merge_opts(keypoint_run.cfg, sizes)
    output = tmp_path / "keypoint.pt2"
    first = _coco(shared_data, "000000128372.jpg")
    report = export_program(cfg, keypoint_run.checkpoint, output, sample_image=first)
    assert "matches PyTorch" in report
    program = torch.export.load(str(output)).module()
    wrapper = InferenceModel(keypoint_run.model).eval()
    for name in ("000000128372.jpg", "000000404249.jpg", "000000194216.jpg"):
        image = prepare_image(cfg, read_image(_coco(shared_data, name)))
        with torch.no_grad():
            got = list(program(image))
        with torch.no_grad(), winograd(False):
            expected = list(wrapper(image))
        assert compare_outputs(wrapper.output_names, got, expected, 1e-4, "program") <= 1e-4
        boxes, heatmaps = got[0], got[-1]
        assert len(boxes) > 0
        decoded = heatmaps_to_keypoints(heatmaps, boxes)
        torch.testing.assert_close(decoded, _eager_keypoints(keypoint_run, image), rtol=0,
                                   atol=1e-3)  # fmt: skip


def test_slim_checkpoint_and_predictor_keypoints(
    keypoint_run: TinyRun, shared_data: Path, tmp_path: Path
) -> None:
    cfg = merge_opts(
        keypoint_run.cfg,
        ["DATASETS.TEST", '("shapes_kp_val",)', "MODEL.ROI_KEYPOINT_HEAD.NUM_CLASSES", str(K)],
    )
    slim = export_slim(keypoint_run.checkpoint, tmp_path / "slim.pth", cfg)
    # shapes_kp_val has 6 keypoints and this tiny model 5: the names still come from the dataset
    assert slim["keypoints"]["names"][:2] == ["top_left", "top_right"]
    assert slim["keypoints"]["skeleton"][0] == [0, 1]
    predictor = Predictor(weights=tmp_path / "slim.pth")
    assert predictor.keypoint_skeleton[0] == (0, 1)
    path = _coco(shared_data, "000000404249.jpg")
    image = read_image(path)
    result = predictor(path)
    keypoints = result["keypoints"]
    assert keypoints.shape == (len(result["boxes"]), K, 3) and len(keypoints) > 0
    # the network input's keypoints, scaled to the original 640 x 427 image
    network_input = prepare_image(cfg, image)
    eager = _eager_keypoints(keypoint_run, network_input)
    scale = torch.tensor([427 / network_input.shape[-1], 640 / network_input.shape[-2], 1.0])
    torch.testing.assert_close(keypoints, eager * scale, rtol=1e-5, atol=1e-3)


def test_torchscript_keypoint_model_matches_pytorch(
    keypoint_run: TinyRun, shared_data: Path, tmp_path: Path
) -> None:
    """TorchScript too (traced on one image, checked on it and another size): the same heatmaps,
    which decode to the eager model's keypoints."""
    from detector.export.torchscript import export_torchscript, load

    first = _coco(shared_data, "000000404249.jpg")
    output = tmp_path / "keypoint.ts"
    report = export_torchscript(keypoint_run.cfg, keypoint_run.checkpoint, output,
                                sample_image=first)  # fmt: skip
    assert "matches PyTorch" in report
    image = prepare_image(keypoint_run.cfg, read_image(_coco(shared_data, "000000343934.jpg")))
    with torch.no_grad():
        boxes, *_, heatmaps = load(output)(image)
    assert len(boxes) > 0
    expected = _eager_keypoints(keypoint_run, image)
    torch.testing.assert_close(heatmaps_to_keypoints(heatmaps, boxes), expected, rtol=0, atol=1e-3)
