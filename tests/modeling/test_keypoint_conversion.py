"""Keypoint R-CNN weight conversion: torchvision's keypointrcnn_resnet50_fpn (and the command
line), maskrcnn_benchmark's and detectron2's keypoint layouts (written here by hand from our
state dict, following their module names: roi_heads.keypoint.{feature_extractor,predictor} /
roi_heads.keypoint_head.{conv_fcnN,score_lowres}) land on our keys with the same values."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch
import torchvision

from detector.config import load_config
from detector.modeling.conversion import (
    convert_maskrcnn_benchmark,
    convert_state_dict,
    convert_torchvision_detection,
    load_source_file,
)
from detector.modeling.detector import GeneralizedRCNN
from tests.modeling.test_conversion import _to_detectron2, _to_maskrcnn_benchmark

TV_KEYPOINT_CONFIG = "configs/torchvision/keypoint_rcnn_R_50_FPN.yaml"


@pytest.fixture(scope="module")
def keypoint_model() -> GeneralizedRCNN:
    torch.manual_seed(0)
    return GeneralizedRCNN.from_config(load_config(TV_KEYPOINT_CONFIG))


@pytest.fixture(scope="module")
def tv_keypoint_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    model = torchvision.models.detection.keypointrcnn_resnet50_fpn(
        weights=None, weights_backbone=None
    )
    return model.state_dict()


def test_torchvision_keypoint_rcnn_converts_completely(keypoint_model, tv_keypoint_state):
    converted, report = convert_torchvision_detection(tv_keypoint_state, keypoint_model)
    assert report.complete, report.summary()
    assert set(converted) == set(keypoint_model.state_dict())
    pairs = {  # torchvision's Sequential(conv, relu, ...): conv k is at index 2 (k - 1)
        "roi_heads.keypoint_head.0.weight": "conv_fcn1.weight",
        "roi_heads.keypoint_head.14.bias": "conv_fcn8.bias",
    }
    for theirs, ours in pairs.items():
        key = f"roi_heads.keypoint_head.feature_extractor.{ours}"
        assert torch.equal(converted[key], tv_keypoint_state[theirs])
    key = "roi_heads.keypoint_head.predictor.kps_score_lowres.weight"
    expected = tv_keypoint_state["roi_heads.keypoint_predictor.kps_score_lowres.weight"]
    assert torch.equal(converted[key], expected)


def test_cli_picks_the_keypoint_config(tmp_path: Path, tv_keypoint_state, capsys):
    from tools.convert_weights import main

    source, output = tmp_path / "tv.pth", tmp_path / "ours.pth"
    torch.save(tv_keypoint_state, source)
    assert main(["--source", "torchvision", str(source), str(output)]) == 0
    assert "wrote" in capsys.readouterr().out
    model = GeneralizedRCNN.from_config(load_config(TV_KEYPOINT_CONFIG))
    model.load_state_dict(torch.load(output, weights_only=True)["model"], strict=True)


def _keypoint_keys_to(ours: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict:
    """Our keypoint head's keys renamed by `rules` (regex, replacement); the others as they are."""
    out = {}
    for key, value in ours.items():
        for pattern, replacement in rules:
            key = re.sub(f"^{pattern}$", replacement, key)
        out[key] = value
    return out


def test_maskrcnn_benchmark_keypoint_layout(keypoint_model):
    ours = keypoint_model.state_dict()
    renamed = _keypoint_keys_to(
        ours, [(r"roi_heads\.keypoint_head\.(feature_extractor|predictor)\.(.*)",
                r"roi_heads.keypoint.\1.\2")],
    )  # fmt: skip
    theirs = _to_maskrcnn_benchmark(renamed)
    assert "module.roi_heads.keypoint.feature_extractor.conv_fcn8.weight" in theirs
    assert "module.roi_heads.keypoint.predictor.kps_score_lowres.bias" in theirs
    converted, report = convert_maskrcnn_benchmark(theirs, keypoint_model)
    assert report.complete, report.summary()
    assert all(torch.equal(converted[k], ours[k]) for k in ours)


def test_detectron2_keypoint_layout_from_pkl(keypoint_model, tmp_path: Path):
    ours = {k: v.clone() for k, v in keypoint_model.state_dict().items()}
    # detectron2 has no background box deltas: ours must be zero there to round-trip
    ours["roi_heads.box_predictor.bbox_pred.weight"][:4] = 0
    ours["roi_heads.box_predictor.bbox_pred.bias"][:4] = 0
    renamed = _keypoint_keys_to(
        ours,
        [(r"roi_heads\.keypoint_head\.feature_extractor\.(.*)", r"roi_heads.keypoint_head.\1"),
         (r"roi_heads\.keypoint_head\.predictor\.kps_score_lowres\.(.*)",
          r"roi_heads.keypoint_head.score_lowres.\1")],
    )  # fmt: skip
    theirs = _to_detectron2(renamed)
    assert theirs["roi_heads.keypoint_head.score_lowres.weight"].shape == (512, 17, 4, 4)
    path = tmp_path / "keypoint_rcnn.pkl"
    with path.open("wb") as f:
        pickle.dump({"model": theirs}, f)
    converted, report = convert_state_dict("detectron2", load_source_file(path), keypoint_model)
    assert report.complete, report.summary()
    for key, value in ours.items():
        assert torch.equal(converted[key], value), key
