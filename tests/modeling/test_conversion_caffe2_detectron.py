"""Detectron (Caffe2) detection models, as catalog://Caffe2Detectron/COCO/... names them: a .pkl
of numpy blobs in Detectron's names. The blobs here are made from our own random model by
Detectron's naming (written out below: trunk res<k>_<i>_branch2<a|b|c>, folded batch norm
`_bn_s`/`_bn_b`, FPN `fpn_inner_res<k>_<last>_sum[_lateral]` / `fpn_res<k>_<last>_sum`, RPN
`*_fpn2`, heads fc6/fc7, cls_score, bbox_pred, `_[mask]_fcn<n>`, conv5_mask, mask_fcn_logits,
keypoints conv_fcn<n>, kps_score_lowres),
with training-state blobs around; MODEL.WEIGHT on that file must give back the same model."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import torch

from detector.config import load_config
from detector.engine.checkpoint import Checkpointer
from detector.modeling.conversion import convert_caffe2_detectron, is_caffe2_detectron
from detector.modeling.detector import GeneralizedRCNN

REPO = Path(__file__).resolve().parents[2]
LAST_BLOCK = {2: 2, 3: 3, 4: 5, 5: 2}  # the last block of res2..res5


def _model(config: str, seed: int) -> GeneralizedRCNN:
    torch.manual_seed(seed)
    return GeneralizedRCNN.from_config(load_config(REPO / "configs" / config, ["MODEL.WEIGHT", ""]))


def _trunk_name(key: str) -> str | None:
    """Our trunk key (after its body's prefix) -> Detectron's blob, None for running stats."""
    if key.endswith(("running_mean", "running_var")):
        return None
    suffix = {"weight": "w", "bias": "b"}[key.rsplit(".", 1)[1]]
    if key.startswith("stem.conv1."):
        return "conv1_w"
    if key.startswith("stem.bn1."):
        return f"res_conv1_bn_{'s' if suffix == 'w' else 'b'}"
    k, i, part = re.fullmatch(r"layer(\d)\.(\d+)\.(.*)\.\w+", key).groups()  # type: ignore[union-attr]
    stem = f"res{int(k) + 1}_{i}_"
    affine = "s" if suffix == "w" else "b"
    names = {"conv1": "branch2a_w", "conv2": "branch2b_w", "conv3": "branch2c_w",
             "bn1": f"branch2a_bn_{affine}", "bn2": f"branch2b_bn_{affine}",
             "bn3": f"branch2c_bn_{affine}", "downsample.0": "branch1_w",
             "downsample.1": f"branch1_bn_{affine}"}  # fmt: skip
    return stem + names[part]


def _head_name(key: str) -> str:
    suffix = {"weight": "w", "bias": "b"}[key.rsplit(".", 1)[1]]
    if m := re.fullmatch(r"backbone\.(inner|layer)_blocks\.(\d)\.0\.\w+", key):
        stage = int(m.group(2)) + 2
        if m.group(1) == "layer":
            return f"fpn_res{stage}_{LAST_BLOCK[stage]}_sum_{suffix}"
        lateral = "" if stage == 5 else "_lateral"
        return f"fpn_inner_res{stage}_{LAST_BLOCK[stage]}_sum{lateral}_{suffix}"
    module = key.rsplit(".", 2)[-2]
    if key.startswith("rpn.head."):
        rpn = {"conv": "conv_rpn", "cls_logits": "rpn_cls_logits", "bbox_pred": "rpn_bbox_pred"}
        return f"{rpn[module]}_fpn2_{suffix}"
    if module.startswith("mask_fcn") and module != "mask_fcn_logits":
        return f"_[mask]_fcn{module[-1]}_{suffix}"
    return f"{module}_{suffix}"  # fc6, fc7, cls_score, bbox_pred, conv5_mask, mask_fcn_logits


def to_detectron(model: GeneralizedRCNN) -> dict[str, np.ndarray]:
    blobs: dict[str, np.ndarray] = {}
    for key, value in model.state_dict().items():
        trunk = re.match(
            r"backbone\.body\.|backbone\.(?=stem\.|layer\d)|roi_heads\.box_feature_extractor\.head\.",
            key,
        )
        name = _trunk_name(key[trunk.end() :]) if trunk else _head_name(key)
        if name is not None:
            blobs[name] = value.numpy().copy()
            blobs[name + "_momentum"] = np.zeros_like(blobs[name])  # training state
    blobs["rpn_cls_logits_fpn3_w"] = blobs["rpn_cls_logits_fpn2_w"]  # a shared copy
    return blobs


def _check_loaded(model: GeneralizedRCNN, expected: GeneralizedRCNN) -> None:
    got, want = model.state_dict(), expected.state_dict()
    for key, value in want.items():
        if key.endswith("running_mean"):
            assert torch.equal(got[key], torch.zeros_like(value)), key
        elif key.endswith("running_var"):
            assert torch.equal(got[key], torch.ones_like(value)), key
        else:
            assert torch.equal(got[key], value), key


def test_fpn_mask_rcnn_pkl_loads_through_model_weight(tmp_path: Path) -> None:
    source = _model("e2e_mask_rcnn_R_50_FPN_1x.yaml", seed=1)
    blobs = to_detectron(source)
    assert is_caffe2_detectron(blobs)
    file = tmp_path / "model_final.pkl"
    file.write_bytes(pickle.dumps({"blobs": blobs}))
    target = _model("e2e_mask_rcnn_R_50_FPN_1x.yaml", seed=2)
    Checkpointer(tmp_path / "out", model=target).load_weights(file)
    _check_loaded(target, source)


def test_fpn_keypoint_rcnn() -> None:
    source = _model("e2e_keypoint_rcnn_R_50_FPN_1x.yaml", seed=7)
    target = _model("e2e_keypoint_rcnn_R_50_FPN_1x.yaml", seed=8)
    converted, report = convert_caffe2_detectron(to_detectron(source), target)
    assert report.missing == [] and report.unmatched == [], report.summary()
    assert "roi_heads.keypoint_head.predictor.kps_score_lowres.weight" in converted
    target.load_state_dict(converted, strict=False)
    _check_loaded(target, source)


def test_c4_faster_rcnn_res5_goes_to_the_box_head() -> None:
    source = _model("e2e_faster_rcnn_R_50_C4_1x.yaml", seed=3)
    blobs = {k.replace("_fpn2", ""): v for k, v in to_detectron(source).items()}  # C4: no FPN
    target = _model("e2e_faster_rcnn_R_50_C4_1x.yaml", seed=4)
    converted, report = convert_caffe2_detectron(blobs, target)
    assert report.missing == [] and report.shape_mismatch == [], report.summary()
    assert any(k.startswith("roi_heads.box_feature_extractor.head.layer4.") for k in converted)
    target.load_state_dict(converted, strict=False)
    _check_loaded(target, source)


def test_unknown_blobs_are_reported_and_training_state_ignored() -> None:
    source = _model("e2e_mask_rcnn_R_50_FPN_1x.yaml", seed=5)
    blobs = to_detectron(source) | {"keypoint_fcn1_w": np.zeros((4, 4), np.float32)}
    _, report = convert_caffe2_detectron(blobs, _model("e2e_mask_rcnn_R_50_FPN_1x.yaml", 6))
    assert report.unmatched == ["keypoint_fcn1.weight"]
    assert "rpn_cls_logits_fpn3_w" in report.ignored  # named as in the file
    assert sum(name.endswith("_momentum") for name in report.ignored) > 100
    assert report.missing == []
