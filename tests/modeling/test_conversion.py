"""Weight converters: every source's keys land on our model's keys, with the right values.

torchvision's layouts come from torchvision's own models; maskrcnn_benchmark's and detectron2's
are written here by hand from our model's state dict (nothing downloads), following their module
names (maskrcnn_benchmark: fpn_inner1.., roi_heads.box.*; detectron2: bottom_up.res2..,
fpn_lateral2.., background class last).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch
import torchvision

from detector.config import load_config
from detector.modeling.conversion import (
    convert_detectron2,
    convert_maskrcnn_benchmark,
    convert_state_dict,
    convert_torchvision_classification,
    convert_torchvision_detection,
    load_source_file,
)
from detector.modeling.detector import GeneralizedRCNN

TV_MASK_CONFIG = "configs/torchvision/mask_rcnn_R_50_FPN.yaml"
TV_FASTER_CONFIG = "configs/torchvision/faster_rcnn_R_50_FPN.yaml"


def _model(config: str, *opts: str) -> GeneralizedRCNN:
    torch.manual_seed(0)
    return GeneralizedRCNN.from_config(load_config(config, list(opts)))


@pytest.fixture(scope="module")
def mask_model() -> GeneralizedRCNN:
    return _model(TV_MASK_CONFIG)


@pytest.fixture(scope="module")
def tv_mask_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    return model.state_dict()


# --------------------------------------------------------------------------------------------
# torchvision detection
# --------------------------------------------------------------------------------------------
def test_torchvision_mask_rcnn_converts_completely(mask_model, tv_mask_state):
    converted, report = convert_torchvision_detection(tv_mask_state, mask_model)
    assert report.complete, report.summary()
    assert set(converted) == set(mask_model.state_dict())
    assert len(report.ignored) == sum(k.endswith("num_batches_tracked") for k in tv_mask_state)
    # spot checks of the renaming, value for value
    pairs = {
        "backbone.body.conv1.weight": "backbone.body.stem.conv1.weight",
        "backbone.body.bn1.running_var": "backbone.body.stem.bn1.running_var",
        "backbone.body.layer3.4.conv2.weight": "backbone.body.layer3.4.conv2.weight",
        "backbone.fpn.inner_blocks.2.0.weight": "backbone.inner_blocks.2.0.weight",
        "backbone.fpn.layer_blocks.3.0.bias": "backbone.layer_blocks.3.0.bias",
        "rpn.head.conv.0.0.weight": "rpn.head.conv.weight",
        "roi_heads.box_head.fc6.weight": "roi_heads.box_feature_extractor.fc6.weight",
        "roi_heads.box_predictor.bbox_pred.bias": "roi_heads.box_predictor.bbox_pred.bias",
        "roi_heads.mask_head.0.0.weight": "roi_heads.mask_head.feature_extractor.mask_fcn1.weight",
        "roi_heads.mask_head.3.0.bias": "roi_heads.mask_head.feature_extractor.mask_fcn4.bias",
        "roi_heads.mask_predictor.conv5_mask.bias": "roi_heads.mask_head.predictor.conv5_mask.bias",
    }
    for theirs, ours in pairs.items():
        assert report.renamed[theirs] == ours
        assert torch.equal(converted[ours], tv_mask_state[theirs])
    mask_model.load_state_dict(converted, strict=True)


def test_torchvision_faster_rcnn_against_faster_config():
    torch.manual_seed(0)
    tv = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    ours = _model(TV_FASTER_CONFIG)
    converted, report = convert_torchvision_detection(tv.state_dict(), ours)
    assert report.complete, report.summary()
    ours.load_state_dict(converted, strict=True)


def test_torchvision_v2_is_reported_as_not_expressible():
    """fasterrcnn_resnet50_fpn_v2 has BatchNorm in the FPN, a 2-conv RPN head and a 4-conv +
    BatchNorm box head, which no config of ours builds: the conversion is incomplete and the
    report names the keys (tools/convert_weights.py then refuses to write a checkpoint)."""
    torch.manual_seed(0)
    tv = torchvision.models.detection.fasterrcnn_resnet50_fpn_v2(
        weights=None, weights_backbone=None
    )
    _, report = convert_torchvision_detection(tv.state_dict(), _model(TV_FASTER_CONFIG))
    assert not report.complete
    for key in ("backbone.fpn.layer_blocks.0.1.running_var", "rpn.head.conv.1.0.weight"):
        assert key in report.unmatched and key in report.summary()


def test_torchvision_pre_013_layout_converts_the_same(tv_mask_state):
    """torchvision < 0.13 stored the FPN, RPN and mask-head convs without the ".0" wrappers."""
    old = {}
    for key, value in tv_mask_state.items():
        key = re.sub(r"(inner_blocks|layer_blocks)\.(\d)\.0\.", r"\1.\2.", key)
        key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        key = re.sub(
            r"roi_heads\.mask_head\.(\d)\.0\.",
            lambda m: f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.",
            key,
        )
        old[key] = value
    new_converted, _ = convert_torchvision_detection(tv_mask_state)
    old_converted, report = convert_torchvision_detection(old)
    assert not report.unmatched
    assert old_converted.keys() == new_converted.keys()
    assert all(torch.equal(old_converted[k], new_converted[k]) for k in new_converted)


def test_unknown_and_missing_keys_are_reported_by_name(mask_model, tv_mask_state):
    state = dict(tv_mask_state)
    state["roi_heads.extra_head.weight"] = torch.zeros(1)
    del state["rpn.head.cls_logits.bias"]
    _, report = convert_torchvision_detection(state, mask_model)
    assert report.unmatched == ["roi_heads.extra_head.weight"]
    assert report.missing == ["rpn.head.cls_logits.bias"]
    assert not report.complete
    assert "roi_heads.extra_head.weight" in report.summary()


def test_shape_mismatch_is_reported(tv_mask_state):
    ours = _model(TV_MASK_CONFIG, "MODEL.ROI_BOX_HEAD.NUM_CLASSES", "81")
    _, report = convert_torchvision_detection(tv_mask_state, ours)
    assert any(
        m.startswith("roi_heads.box_predictor.cls_score.weight: (91, 1024)")
        for m in report.shape_mismatch
    )
    assert not report.missing


# --------------------------------------------------------------------------------------------
# maskrcnn_benchmark and detectron2, layouts written from our state dict
# --------------------------------------------------------------------------------------------
def _to_maskrcnn_benchmark(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in maskrcnn_benchmark's names, saved from DistributedDataParallel."""
    rules = [
        (
            r"backbone\.(inner|layer)_blocks\.(\d)\.0\.(.*)",
            lambda m: f"backbone.fpn.fpn_{m[1]}{int(m[2]) + 1}.{m[3]}",
        ),
        (
            r"roi_heads\.box_feature_extractor\.(.*)",
            lambda m: f"roi_heads.box.feature_extractor.{m[1]}",
        ),
        (r"roi_heads\.box_predictor\.(.*)", lambda m: f"roi_heads.box.predictor.{m[1]}"),
        (r"roi_heads\.mask_head\.(.*)", lambda m: f"roi_heads.mask.{m[1]}"),
    ]
    theirs = {"module.rpn.anchor_generator.cell_anchors.0": torch.zeros(3, 4)}
    for key, value in ours.items():
        for pattern, replace in rules:
            key = re.sub(f"^{pattern}$", replace, key)
        theirs[f"module.{key}"] = value.clone()
    return theirs


def test_maskrcnn_benchmark_layout(mask_model):
    ours = mask_model.state_dict()
    theirs = _to_maskrcnn_benchmark(ours)
    assert "module.backbone.fpn.fpn_inner1.weight" in theirs
    assert "module.roi_heads.mask.feature_extractor.mask_fcn1.weight" in theirs
    converted, report = convert_maskrcnn_benchmark(theirs, mask_model)
    assert report.complete, report.summary()
    assert report.ignored == ["module.rpn.anchor_generator.cell_anchors.0"]
    assert all(torch.equal(converted[k], ours[k]) for k in ours)


def _to_detectron2(ours: dict[str, torch.Tensor]) -> dict[str, object]:
    """Our state dict in detectron2's names and class layout, as numpy arrays (its .pkl)."""

    def body(m: re.Match[str]) -> str:
        layer, block, rest = int(m[1]), m[2], m[3]
        rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
        rest = rest.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
        return f"backbone.bottom_up.res{layer + 1}.{block}.{rest}"

    rules = [
        (r"backbone\.body\.stem\.conv1\.(.*)", lambda m: f"backbone.bottom_up.stem.conv1.{m[1]}"),
        (
            r"backbone\.body\.stem\.bn1\.(.*)",
            lambda m: f"backbone.bottom_up.stem.conv1.norm.{m[1]}",
        ),
        (r"backbone\.body\.layer(\d)\.(\d+)\.(.*)", body),
        (
            r"backbone\.inner_blocks\.(\d)\.0\.(.*)",
            lambda m: f"backbone.fpn_lateral{int(m[1]) + 2}.{m[2]}",
        ),
        (
            r"backbone\.layer_blocks\.(\d)\.0\.(.*)",
            lambda m: f"backbone.fpn_output{int(m[1]) + 2}.{m[2]}",
        ),
        (r"rpn\.head\.conv\.(.*)", lambda m: f"proposal_generator.rpn_head.conv.{m[1]}"),
        (
            r"rpn\.head\.cls_logits\.(.*)",
            lambda m: f"proposal_generator.rpn_head.objectness_logits.{m[1]}",
        ),
        (
            r"rpn\.head\.bbox_pred\.(.*)",
            lambda m: f"proposal_generator.rpn_head.anchor_deltas.{m[1]}",
        ),
        (
            r"roi_heads\.box_feature_extractor\.fc6\.(.*)",
            lambda m: f"roi_heads.box_head.fc1.{m[1]}",
        ),
        (
            r"roi_heads\.box_feature_extractor\.fc7\.(.*)",
            lambda m: f"roi_heads.box_head.fc2.{m[1]}",
        ),
        (r"roi_heads\.mask_head\.feature_extractor\.(.*)", lambda m: f"roi_heads.mask_head.{m[1]}"),
        (
            r"roi_heads\.mask_head\.predictor\.conv5_mask\.(.*)",
            lambda m: f"roi_heads.mask_head.deconv.{m[1]}",
        ),
        (
            r"roi_heads\.mask_head\.predictor\.mask_fcn_logits\.(.*)",
            lambda m: f"roi_heads.mask_head.predictor.{m[1]}",
        ),
    ]
    theirs: dict[str, object] = {}
    for key, value in ours.items():
        if key.startswith("roi_heads.box_predictor.cls_score"):  # background last
            value = torch.cat([value[1:], value[:1]])
        elif key.startswith("roi_heads.box_predictor.bbox_pred"):  # no background deltas
            value = value[4:]
        elif key.startswith("roi_heads.mask_head.predictor.mask_fcn_logits"):  # no bg mask
            value = value[1:]
        for pattern, replace in rules:
            key = re.sub(f"^{pattern}$", replace, key)
        theirs[key] = value.numpy().copy()
    return theirs


def test_detectron2_layout_from_pkl(mask_model, tmp_path: Path):
    ours = {k: v.clone() for k, v in mask_model.state_dict().items()}
    # detectron2 has no background deltas / mask logits: ours must be zero there to round-trip
    ours["roi_heads.box_predictor.bbox_pred.weight"][:4] = 0
    ours["roi_heads.box_predictor.bbox_pred.bias"][:4] = 0
    ours["roi_heads.mask_head.predictor.mask_fcn_logits.weight"][0] = 0
    ours["roi_heads.mask_head.predictor.mask_fcn_logits.bias"][0] = 0
    theirs = _to_detectron2(ours)
    assert "backbone.bottom_up.res5.2.conv3.norm.running_var" in theirs
    assert "backbone.bottom_up.res2.0.shortcut.norm.weight" in theirs
    path = tmp_path / "model_final.pkl"
    with path.open("wb") as f:
        pickle.dump({"model": theirs, "__author__": "test"}, f)
    converted, report = convert_state_dict("detectron2", load_source_file(path), mask_model)
    assert report.complete, report.summary()
    for key, value in ours.items():
        assert torch.equal(converted[key], value), key


def test_pkl_with_other_classes_is_refused(tmp_path: Path):
    path = tmp_path / "evil.pkl"
    with path.open("wb") as f:
        pickle.dump({"model": {"x": Path("/")}}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_source_file(path)


def test_detectron2_class_order():
    """cls_score: detectron2's last row (background) becomes our row 0; bbox_pred and the mask
    predictor get zero background rows in front."""
    cls_w = torch.arange(3 * 2, dtype=torch.float32).view(3, 2)  # 2 classes + background
    bbox_w = torch.ones(8, 2)
    mask_w = torch.ones(2, 4, 1, 1)
    converted, _ = convert_detectron2(
        {
            "roi_heads.box_predictor.cls_score.weight": cls_w.numpy(),
            "roi_heads.box_predictor.bbox_pred.weight": bbox_w,
            "roi_heads.mask_head.predictor.weight": mask_w,
        }
    )
    assert converted["roi_heads.box_predictor.cls_score.weight"].tolist() == [
        [4, 5],
        [0, 1],
        [2, 3],
    ]
    bbox = converted["roi_heads.box_predictor.bbox_pred.weight"]
    assert bbox.shape == (12, 2) and bbox[:4].abs().sum() == 0 and bbox[4:].eq(1).all()
    mask = converted["roi_heads.mask_head.predictor.mask_fcn_logits.weight"]
    assert mask.shape == (3, 4, 1, 1) and mask[0].abs().sum() == 0 and mask[1:].eq(1).all()


# --------------------------------------------------------------------------------------------
# torchvision classification
# --------------------------------------------------------------------------------------------
def test_torchvision_classification_resnet50():
    torch.manual_seed(2)
    resnet = torchvision.models.resnet50(weights=None).state_dict()
    ours = _model(TV_FASTER_CONFIG)
    converted, report = convert_torchvision_classification(resnet, ours)
    assert torch.equal(converted["backbone.body.stem.conv1.weight"], resnet["conv1.weight"])
    assert torch.equal(
        converted["backbone.body.layer4.2.bn3.running_mean"], resnet["layer4.2.bn3.running_mean"]
    )
    assert sorted(report.unmatched) == ["fc.bias", "fc.weight"]
    assert not report.missing
    assert all(k.startswith("backbone.body.") for k in converted)


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------
def test_cli_writes_a_checkpoint_our_model_loads(tmp_path: Path, capsys):
    from tools.convert_weights import main

    torch.manual_seed(3)
    tv = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    source, output = tmp_path / "tv.pth", tmp_path / "ours.pth"
    torch.save(tv.state_dict(), source)
    assert main(["--source", "torchvision", str(source), str(output)]) == 0
    assert "295 tensors converted" in capsys.readouterr().out
    ours = _model(TV_FASTER_CONFIG)
    ours.load_state_dict(torch.load(output, weights_only=True)["model"], strict=True)
    assert torch.equal(ours.rpn.head.conv.weight, tv.rpn.head.conv[0][0].weight)


def test_cli_torchvision_classification(tmp_path: Path, capsys):
    from tools.convert_weights import main

    torch.manual_seed(4)
    resnet = torchvision.models.resnet50(weights=None).state_dict()
    source, output = tmp_path / "resnet50.pth", tmp_path / "ours.pth"
    torch.save(resnet, source)
    args = ["--source", "torchvision-classification", str(source), str(output)]
    assert main([*args, "--config-file", TV_FASTER_CONFIG]) == 1  # fc.* has no home
    assert "fc.weight" in capsys.readouterr().out
    assert main([*args, "--config-file", TV_FASTER_CONFIG, "--allow-incomplete"]) == 0
    state = torch.load(output, weights_only=True)["model"]
    assert torch.equal(
        state["backbone.body.layer2.1.conv2.weight"], resnet["layer2.1.conv2.weight"]
    )
    assert len(state) == len(resnet) - 2 - sum(k.endswith("num_batches_tracked") for k in resnet)


def test_cli_refuses_incomplete_conversions(tmp_path: Path, capsys):
    from tools.convert_weights import main

    source, output = tmp_path / "tv.pth", tmp_path / "ours.pth"
    torch.save({"rpn.head.conv.0.0.weight": torch.zeros(256, 256, 3, 3)}, source)
    assert main(["--source", "torchvision", str(source), str(output)]) == 1
    assert "missing" in capsys.readouterr().out
    assert not output.exists()


def test_unknown_source_is_an_error():
    with pytest.raises(ValueError, match="unknown source 'caffe'.*torchvision"):
        convert_state_dict("caffe", {})
