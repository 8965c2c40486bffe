"""Every config in configs/ loads, round-trips through YAML, builds its detector, runs a training
step (a batch with an image that has no boxes) with finite losses, and runs inference."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from detector.config import dump_config, load_config
from detector.modeling.detector import GeneralizedRCNN
from detector.structures import Boxes, Instances, Keypoints, PolygonMasks
from tests.modeling.small_models import SMALL_FPN_OPTS

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml"))
# Small enough for the CPU; large enough for the deepest level (stride 64) to be 2x2.
TINY_INPUT = [
    *("MODEL.RPN.PRE_NMS_TOP_N_TRAIN", "200", "MODEL.RPN.POST_NMS_TOP_N_TRAIN", "100"),
    *("MODEL.RPN.FPN_POST_NMS_TOP_N_TRAIN", "100", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"),
    *("MODEL.DEVICE", "cpu"),
]


def test_every_documented_config_exists() -> None:
    expected = {
        "faster_rcnn_vgg16_voc.yaml",
        "e2e_faster_rcnn_R_50_C4_1x.yaml",
        "e2e_faster_rcnn_R_50_FPN_1x.yaml",
        "e2e_faster_rcnn_R_101_FPN_1x.yaml",
        "e2e_mask_rcnn_R_50_FPN_1x.yaml",
        "e2e_mask_rcnn_X_101_32x8d_FPN_1x.yaml",
        "e2e_faster_rcnn_dconv_R_50_FPN_1x.yaml",
        "e2e_mask_rcnn_mdconv_R_50_FPN_1x.yaml",
        "e2e_faster_rcnn_dpool_R_50_FPN_1x.yaml",
        "rfcn_R_101_C5_1x.yaml",
        "torchvision/faster_rcnn_R_50_FPN.yaml",
        "torchvision/mask_rcnn_R_50_FPN.yaml",
        "e2e_keypoint_rcnn_R_50_FPN_1x.yaml",
        "torchvision/keypoint_rcnn_R_50_FPN.yaml",
        "shapes/keypoint_rcnn_R_18_FPN_shapes.yaml",
    }
    assert expected <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_round_trips(name: str, tmp_path: Path) -> None:
    cfg = load_config(CONFIG_DIR / name)
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(dump_config(cfg))
    assert load_config(dumped) == cfg


def _tiny_batch(
    mask_on: bool, num_classes: int = 81, num_keypoints: int = 0
) -> tuple[list[torch.Tensor], list[Instances]]:
    generator = torch.Generator().manual_seed(0)
    images = [
        torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
        for height, width in ((128, 160), (144, 128))
    ]
    boxes = torch.tensor([[10.0, 12.0, 90.0, 100.0], [60.0, 30.0, 150.0, 120.0]])
    with_boxes = Instances(
        (128, 160),
        gt_boxes=Boxes(boxes),
        gt_classes=torch.tensor([1, 2]).clamp(max=num_classes - 1),
    )
    no_boxes = torch.zeros(0, 4)
    empty = Instances((144, 128), gt_boxes=Boxes(no_boxes), gt_classes=torch.zeros(0).long())
    if mask_on:
        with_boxes.gt_masks = PolygonMasks([[b[[0, 1, 2, 1, 2, 3, 0, 3]].tolist()] for b in boxes])
        empty.gt_masks = PolygonMasks([])
    if num_keypoints:  # keypoints spread over each box, the last one unlabeled
        fractions = torch.linspace(0.1, 0.9, num_keypoints)[:, None]  # (K, 1)
        xy = boxes[:, None, :2] + fractions * (boxes[:, None, 2:] - boxes[:, None, :2])
        visible = torch.full((2, num_keypoints, 1), 2.0)
        visible[:, -1] = 0
        with_boxes.gt_keypoints = Keypoints(torch.cat([xy, visible], 2))
        empty.gt_keypoints = Keypoints(torch.zeros(0, num_keypoints, 3))
    return images, [with_boxes, empty]


@pytest.mark.parametrize("name", [c for c in CONFIGS if not c.startswith("Base-")])
def test_config_trains_and_predicts(name: str) -> None:
    torch.manual_seed(0)
    cfg = load_config(CONFIG_DIR / name, TINY_INPUT)
    model = GeneralizedRCNN.from_config(cfg).train()
    num_keypoints = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_CLASSES if cfg.MODEL.KEYPOINT_ON else 0
    images, targets = _tiny_batch(
        cfg.MODEL.MASK_ON, cfg.MODEL.ROI_BOX_HEAD.NUM_CLASSES, num_keypoints
    )
    losses = model(images, targets)
    expected = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    expected |= {"loss_mask"} if cfg.MODEL.MASK_ON else set()
    expected |= {"loss_keypoint"} if cfg.MODEL.KEYPOINT_ON else set()
    assert set(losses) == expected
    assert all(math.isfinite(v.item()) for v in losses.values()), losses
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        results = model(images)
    assert len(results) == 2
    for result, image in zip(results, images, strict=True):
        assert result.image_size == tuple(image.shape[-2:])
        assert result.pred_boxes.tensor.shape[1] == 4
        assert len(result.scores) == len(result.pred_classes) == len(result.pred_boxes)
        if cfg.MODEL.MASK_ON:
            assert len(result.pred_masks) == len(result.pred_boxes)
        if cfg.MODEL.KEYPOINT_ON:
            assert result.pred_keypoints.shape == (len(result.pred_boxes), num_keypoints, 3)


POOLER_TYPES = ["ROIPool", "ROIAlign", "ROIAlignV2", "ROIAlignMax", "DeformRoIPool",
                "ModulatedDeformRoIPool", "PSRoIPool", "PSRoIAlign", "DeformPSRoIPool"]  # fmt: skip


@pytest.mark.parametrize("pooler_type", POOLER_TYPES)
def test_every_pooler_type_by_command_line_override_trains(pooler_type: str) -> None:
    """The box pooler is one key: each type builds and trains (the position-sensitive ones
    with the R-FCN config, whose head pools its own score maps)."""
    torch.manual_seed(0)
    position_sensitive = pooler_type.startswith(("PS", "DeformPS"))
    name = "rfcn_R_101_C5_1x.yaml" if position_sensitive else "e2e_faster_rcnn_R_50_FPN_1x.yaml"
    opts = [*TINY_INPUT, "MODEL.ROI_BOX_HEAD.POOLER_TYPE", pooler_type]
    opts += ["MODEL.BACKBONE.CONV_BODY", "R-50-C5"] if position_sensitive else SMALL_FPN_OPTS
    model = GeneralizedRCNN.from_config(load_config(CONFIG_DIR / name, opts)).train()
    losses = model(*_tiny_batch(mask_on=False))
    assert all(math.isfinite(v.item()) for v in losses.values()), losses
    sum(losses.values()).backward()
