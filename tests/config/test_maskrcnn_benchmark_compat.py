"""maskrcnn_benchmark's key names (detector/config/compat.py): renamed keys land on ours, its
trunk functions select the normalization, unsupported features are refused with the reason
(and accepted when their value leaves the feature off), none is pointed at a look-alike key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detector.config import ConfigError, load_config
from detector.modeling.backbone import build_backbone

GN_BASELINE = """\
INPUT:
  MIN_SIZE_TRAIN: (800,)
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  WEIGHT: ""  # from scratch, as the scratch_* configs
  BACKBONE:
    CONV_BODY: "R-50-FPN"
    FREEZE_CONV_BODY_AT: 0
  RESNETS:  # use GN for backbone
    BACKBONE_OUT_CHANNELS: 256
    STRIDE_IN_1X1: False
    TRANS_FUNC: "BottleneckWithGN"
    STEM_FUNC: "StemWithGN"
  FPN:
    USE_GN: True  # use GN for FPN
  CLS_AGNOSTIC_BBOX_REG: True
DATASETS:
  TRAIN: ("coco_2014_train", "coco_2014_valminusminival")
  TEST: ("coco_2014_minival",)
SOLVER:
  BASE_LR: 0.02
  TEST_PERIOD: 2500
TEST:
  DETECTIONS_PER_IMG: 50
  BBOX_AUG:
    ENABLED: False
    H_FLIP: True
DTYPE: "float16"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "e2e_faster_rcnn_R_50_FPN_1x_gn.yaml"
    path.write_text(text)
    return path


def test_gn_baseline_in_their_format_builds_what_it_describes(tmp_path):
    cfg = load_config(_write(tmp_path, GN_BASELINE))
    assert cfg.MODEL.RESNETS.NORM == "GN"
    assert cfg.MODEL.ROI_HEADS.CLS_AGNOSTIC_BBOX_REG is True
    assert cfg.TEST.EVAL_PERIOD == 2500
    assert cfg.MODEL.ROI_HEADS.DETECTIONS_PER_IMG == 50
    assert cfg.SOLVER.AMP.ENABLED is True and cfg.SOLVER.AMP.DTYPE == "float16"
    assert list(cfg.DATASETS.TRAIN) == ["coco_2014_train", "coco_2014_valminusminival"]
    backbone = build_backbone(cfg)
    stem_norm = backbone.body.stem.bn1
    assert isinstance(stem_norm, torch.nn.GroupNorm)
    assert isinstance(backbone.body.layer3[0].bn2, torch.nn.GroupNorm)
    assert (
        any(isinstance(m, torch.nn.GroupNorm) for m in backbone.fpn_modules())
        if hasattr(backbone, "fpn_modules")
        else True
    )


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (["MODEL.RETINANET_ON", "True"], "MODEL.RETINANET_ON: RetinaNet is not supported"),
        (["MODEL.RETINANET.NUM_CLASSES", "81"], "MODEL.RETINANET: RetinaNet is not supported"),
        (["MODEL.FBNET.ARCH", "default"], "MODEL.FBNET: FBNet backbones are not supported"),
        (["INPUT.HUE", "0.7"], r"INPUT.HUE = 0.7: must lie in \[0, 0.5\]"),
        (["INPUT.VERTICAL_FLIP_PROB_TRAIN", "1.5"], "VERTICAL_FLIP_PROB_TRAIN = 1.5: must lie"),
        (["PATHS_CATALOG", "paths.py"], "PATHS_CATALOG: a Python paths catalog is not read"),
        (["MODEL.RESNETS.TRANS_FUNC", "Nonsense"], "TRANS_FUNC = 'Nonsense' is not a known"),
        (["DTYPE", "bfloat16"], "DTYPE = 'bfloat16': expected float32 or float16"),
    ],
)
def test_unsupported_features_are_refused_with_the_reason(opts, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, opts)
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize(
    "opts",
    [
        ["MODEL.RETINANET_ON", "False"],
        ["MODEL.KEYPOINT_ON", "False"],
        ["INPUT.BRIGHTNESS", "0.0", "INPUT.HUE", "0.0"],
        ["INPUT.VERTICAL_FLIP_PROB_TRAIN", "0.0"],
        ["INPUT.BRIGHTNESS", "0.2", "INPUT.VERTICAL_FLIP_PROB_TRAIN", "0.5"],
        ["DTYPE", "float32"],
        ["MODEL.RESNETS.TRANS_FUNC", "BottleneckWithFixedBatchNorm"],
    ],
)
def test_their_defaults_are_accepted_as_features_left_off(opts):
    cfg = load_config(None, opts)
    assert cfg.SOLVER.AMP.ENABLED is False
    assert cfg.MODEL.RESNETS.NORM == "FrozenBN"


def test_contradicting_old_and_new_names_are_an_error(tmp_path):
    """In one file; on the command line each pair is merged in turn, the later one wins."""
    path = tmp_path / "both.yaml"
    path.write_text("SOLVER:\n  TEST_PERIOD: 100\nTEST:\n  EVAL_PERIOD: 200\n")
    with pytest.raises(ConfigError, match="SOLVER.TEST_PERIOD = 100 .* TEST.EVAL_PERIOD = 200"):
        load_config(path)
    cli = load_config(None, ["SOLVER.TEST_PERIOD", "100", "TEST.EVAL_PERIOD", "200"])
    assert cli.TEST.EVAL_PERIOD == 200
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(
        "MODEL:\n  RESNETS:\n    TRANS_FUNC: BottleneckWithGN\n"
        "    STEM_FUNC: StemWithFixedBatchNorm\n"
    )
    with pytest.raises(ConfigError, match="ask for different normalizations"):
        load_config(mixed)


def test_saved_config_with_gn_norm_and_default_trunk_names_still_loads(tmp_path):
    """Configs saved before this change hold TRANS_FUNC's default next to NORM GN."""
    path = tmp_path / "config.yaml"
    path.write_text(
        "MODEL:\n  RESNETS:\n    NORM: GN\n    TRANS_FUNC: BottleneckWithFixedBatchNorm\n"
        "    STEM_FUNC: StemWithFixedBatchNorm\n"
    )
    assert load_config(path).MODEL.RESNETS.NORM == "GN"


MASK_C4 = """\
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  WEIGHT: "catalog://ImageNetPretrained/MSRA/R-50"
  RPN:
    PRE_NMS_TOP_N_TEST: 6000
    POST_NMS_TOP_N_TEST: 1000
  ROI_MASK_HEAD:
    PREDICTOR: "MaskRCNNC4Predictor"
    SHARE_BOX_FEATURE_EXTRACTOR: True
  MASK_ON: True
DATASETS:
  TRAIN: ("coco_2014_train", "coco_2014_valminusminival")
  TEST: ("coco_2014_minival",)
SOLVER:
  BASE_LR: 0.01
  WEIGHT_DECAY: 0.0001
  STEPS: (120000, 160000)
  MAX_ITER: 180000
  IMS_PER_BATCH: 8
"""


def test_their_c4_mask_config_builds_with_their_defaults(tmp_path):
    """maskrcnn_benchmark's e2e_mask_rcnn_R_50_C4_1x relies on its defaults: 14x14 masks from the
    shared res5 head, per-batch FPN proposal selection (no FPN here), the catalog weights."""
    from detector.modeling.detector import GeneralizedRCNN

    path = tmp_path / "e2e_mask_rcnn_R_50_C4_1x.yaml"
    path.write_text(MASK_C4)
    cfg = load_config(path)
    assert cfg.MODEL.ROI_MASK_HEAD.RESOLUTION == 14 and cfg.MODEL.RPN.FPN_POST_NMS_PER_BATCH
    assert cfg.MODEL.WEIGHT == "catalog://ImageNetPretrained/MSRA/R-50"
    model = GeneralizedRCNN.from_config(cfg)
    mask_head = model.roi_heads.mask_head
    assert mask_head.mask_size == 14 and mask_head.share_box_features
    assert model.roi_heads.box_predictor.cls_score.out_features == 81


# One config per family of maskrcnn_benchmark's configs/ folder, written in its format (these
# are written for this test from its key names and conventions, not copied).
FPN_MASK_MODEL = """\
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  WEIGHT: "catalog://ImageNetPretrained/MSRA/R-50"
  BACKBONE:
    CONV_BODY: "R-50-FPN"
  RESNETS:
    BACKBONE_OUT_CHANNELS: 256
  RPN:
    USE_FPN: True
    ANCHOR_STRIDE: (4, 8, 16, 32, 64)
    PRE_NMS_TOP_N_TRAIN: 2000
    PRE_NMS_TOP_N_TEST: 1000
    POST_NMS_TOP_N_TEST: 1000
    FPN_POST_NMS_TOP_N_TEST: 1000
  ROI_HEADS:
    USE_FPN: True
{roi_heads}  ROI_BOX_HEAD:
    POOLER_RESOLUTION: 7
    POOLER_SCALES: (0.25, 0.125, 0.0625, 0.03125)
    POOLER_SAMPLING_RATIO: 2
    FEATURE_EXTRACTOR: "FPN2MLPFeatureExtractor"
    PREDICTOR: "FPNPredictor"
{box_head}  ROI_MASK_HEAD:
    POOLER_SCALES: (0.25, 0.125, 0.0625, 0.03125)
    FEATURE_EXTRACTOR: "MaskRCNNFPNFeatureExtractor"
    PREDICTOR: "MaskRCNNC4Predictor"
    POOLER_RESOLUTION: 14
    POOLER_SAMPLING_RATIO: 2
    RESOLUTION: 28
    SHARE_BOX_FEATURE_EXTRACTOR: False
  MASK_ON: True
"""  # the MODEL block of their FPN Mask R-CNN configs

FAMILIES = {
    "dcn/e2e_faster_rcnn_dconv_R_50_FPN_1x": """\
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  WEIGHT: "catalog://ImageNetPretrained/MSRA/R-50"
  BACKBONE:
    CONV_BODY: "R-50-FPN"
  RESNETS:
    BACKBONE_OUT_CHANNELS: 256
    STAGE_WITH_DCN: (False, True, True, True)
    WITH_MODULATED_DCN: False
    DEFORMABLE_GROUPS: 1
  RPN:
    USE_FPN: True
    ANCHOR_STRIDE: (4, 8, 16, 32, 64)
  ROI_HEADS:
    USE_FPN: True
  ROI_BOX_HEAD:
    POOLER_RESOLUTION: 7
    POOLER_SCALES: (0.25, 0.125, 0.0625, 0.03125)
    POOLER_SAMPLING_RATIO: 2
    FEATURE_EXTRACTOR: "FPN2MLPFeatureExtractor"
    PREDICTOR: "FPNPredictor"
DATASETS:
  TRAIN: ("coco_2014_train", "coco_2014_valminusminival")
  TEST: ("coco_2014_minival",)
DATALOADER:
  SIZE_DIVISIBILITY: 32
""",
    "pascal_voc/e2e_faster_rcnn_R_50_C4_1x_1_gpu_voc": """\
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  WEIGHT: "catalog://ImageNetPretrained/MSRA/R-50"
  RPN:
    PRE_NMS_TOP_N_TEST: 6000
    POST_NMS_TOP_N_TEST: 300
    ANCHOR_SIZES: (128, 256, 512)
  ROI_BOX_HEAD:
    NUM_CLASSES: 21
DATASETS:
  TRAIN: ("voc_2007_train", "voc_2007_val")
  TEST: ("voc_2007_test",)
SOLVER:
  BASE_LR: 0.001
  WEIGHT_DECAY: 0.0001
  STEPS: (50000, )
  MAX_ITER: 70000
  IMS_PER_BATCH: 1
TEST:
  IMS_PER_BATCH: 1
""",
    "cityscapes/e2e_mask_rcnn_R_50_FPN_1x_cocostyle": """\
"""
    + FPN_MASK_MODEL.format(roi_heads="", box_head="    NUM_CLASSES: 9\n")
    + """\
DATASETS:
  TRAIN: ("cityscapes_fine_instanceonly_seg_train_cocostyle",)
  TEST: ("cityscapes_fine_instanceonly_seg_val_cocostyle",)
DATALOADER:
  SIZE_DIVISIBILITY: 32
INPUT:
  MIN_SIZE_TRAIN: (800, 832, 864, 896, 928, 960, 992, 1024)
  MAX_SIZE_TRAIN: 2048
  MIN_SIZE_TEST: 1024
  MAX_SIZE_TEST: 2048
""",
    "test_time_aug/e2e_faster_rcnn_R_50_C4_1x": """\
INPUT:
  MIN_SIZE_TRAIN: (800,)
  MAX_SIZE_TRAIN: 1333
  MIN_SIZE_TEST: 800
  MAX_SIZE_TEST: 1333
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  WEIGHT: "catalog://ImageNetPretrained/MSRA/R-50"
  RPN:
    PRE_NMS_TOP_N_TEST: 6000
    POST_NMS_TOP_N_TEST: 1000
DATASETS:
  TEST: ("coco_2014_minival",)
TEST:
  IMS_PER_BATCH: 8
  BBOX_AUG:
    ENABLED: True
    H_FLIP: True
    SCALES: (400, 500, 600, 700, 900, 1000, 1100, 1200)
    MAX_SIZE: 2000
    SCALE_H_FLIP: True
""",
    "caffe2/e2e_mask_rcnn_R_50_FPN_1x_caffe2": """\
"""
    + FPN_MASK_MODEL.format(roi_heads="", box_head="").replace(
        "catalog://ImageNetPretrained/MSRA/R-50",
        "catalog://Caffe2Detectron/COCO/35858933/e2e_mask_rcnn_R-50-FPN_1x",
    )
    + """\
DATASETS:
  TEST: ("coco_2014_minival",)
DATALOADER:
  SIZE_DIVISIBILITY: 32
""",
    "quick_schedules/e2e_mask_rcnn_R_50_FPN_quick": """\
"""
    + FPN_MASK_MODEL.format(roi_heads="    BATCH_SIZE_PER_IMAGE: 256\n", box_head="")
    + """\
DATASETS:
  TRAIN: ("coco_2014_minival",)
  TEST: ("coco_2014_minival",)
INPUT:
  MIN_SIZE_TRAIN: (600,)
  MAX_SIZE_TRAIN: 1000
  MIN_SIZE_TEST: 800
  MAX_SIZE_TEST: 1000
DATALOADER:
  SIZE_DIVISIBILITY: 32
SOLVER:
  BASE_LR: 0.005
  WEIGHT_DECAY: 0.0001
  STEPS: (1500,)
  MAX_ITER: 2000
  IMS_PER_BATCH: 4
TEST:
  IMS_PER_BATCH: 2
""",
}


# maskrcnn_benchmark's Keypoint R-CNN (e2e_keypoint_rcnn_R_50_FPN_1x), in its format.
FAMILIES["e2e_keypoint_rcnn_R_50_FPN_1x"] = """\
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  WEIGHT: "catalog://ImageNetPretrained/MSRA/R-50"
  BACKBONE:
    CONV_BODY: "R-50-FPN"
  RESNETS:
    BACKBONE_OUT_CHANNELS: 256
  RPN:
    USE_FPN: True
    ANCHOR_STRIDE: (4, 8, 16, 32, 64)
    PRE_NMS_TOP_N_TRAIN: 2000
    PRE_NMS_TOP_N_TEST: 1000
    POST_NMS_TOP_N_TEST: 1000
    FPN_POST_NMS_TOP_N_TEST: 1000
  ROI_HEADS:
    USE_FPN: True
  ROI_BOX_HEAD:
    POOLER_RESOLUTION: 7
    POOLER_SCALES: (0.25, 0.125, 0.0625, 0.03125)
    POOLER_SAMPLING_RATIO: 2
    FEATURE_EXTRACTOR: "FPN2MLPFeatureExtractor"
    PREDICTOR: "FPNPredictor"
    NUM_CLASSES: 2
  ROI_KEYPOINT_HEAD:
    POOLER_SCALES: (0.25, 0.125, 0.0625, 0.03125)
    FEATURE_EXTRACTOR: "KeypointRCNNFeatureExtractor"
    PREDICTOR: "KeypointRCNNPredictor"
    POOLER_RESOLUTION: 14
    POOLER_SAMPLING_RATIO: 2
    RESOLUTION: 56
    SHARE_BOX_FEATURE_EXTRACTOR: False
  KEYPOINT_ON: True
DATASETS:
  TRAIN: ("keypoints_coco_2014_train", "keypoints_coco_2014_valminusminival",)
  TEST: ("keypoints_coco_2014_minival",)
INPUT:
  MIN_SIZE_TRAIN: (640, 672, 704, 736, 768, 800)
DATALOADER:
  SIZE_DIVISIBILITY: 32
SOLVER:
  BASE_LR: 0.02
  WEIGHT_DECAY: 0.0001
  STEPS: (60000, 80000)
  MAX_ITER: 90000
"""


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_builds_what_it_describes(family, tmp_path):
    from detector.data.catalog import get_dataset_spec
    from detector.modeling.detector import GeneralizedRCNN
    from detector.modeling.test_time_augmentation import maybe_with_tta
    from detector.utils.model_zoo import catalog_url

    path = tmp_path / f"{family.replace('/', '_')}.yaml"
    path.write_text(FAMILIES[family])
    cfg = load_config(path)
    for name in [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]:
        get_dataset_spec(name, cfg)  # every dataset name is known
    model = GeneralizedRCNN.from_config(cfg)
    heads = model.roi_heads
    assert heads.box_predictor.cls_score.out_features == cfg.MODEL.ROI_BOX_HEAD.NUM_CLASSES
    assert (heads.mask_head is not None) == cfg.MODEL.MASK_ON
    if cfg.MODEL.MASK_ON:
        assert heads.mask_head.mask_size == cfg.MODEL.ROI_MASK_HEAD.RESOLUTION
    assert (heads.keypoint_head is not None) == cfg.MODEL.KEYPOINT_ON
    if cfg.MODEL.KEYPOINT_ON:  # 17 keypoints, 56 x 56 heatmaps
        assert (heads.keypoint_head.num_keypoints, heads.keypoint_head.heatmap_size) == (17, 56)
    dcn = [n for n, m in model.named_modules() if type(m).__name__ == "DeformConv2d"]
    assert bool(dcn) == any(cfg.MODEL.RESNETS.STAGE_WITH_DCN)
    if family.startswith("dcn/"):  # res3..res5 deformable, res2 not
        assert not any(".layer1." in n for n in dcn) and any(".layer4." in n for n in dcn)
    wrapped = maybe_with_tta(model, cfg)
    assert (wrapped is not model) == cfg.TEST.BBOX_AUG.ENABLED
    if cfg.MODEL.WEIGHT.startswith("catalog://"):  # a name the catalog knows (no download here)
        assert catalog_url(cfg.MODEL.WEIGHT[len("catalog://") :]).startswith("https://")


def test_contradicting_fpn_keys_and_other_architectures_are_refused():
    with pytest.raises(ConfigError, match="MODEL.RPN.USE_FPN = True: is True but .*'R-50-C4'"):
        load_config(None, ["MODEL.RPN.USE_FPN", "True"])
    with pytest.raises(ConfigError, match="MODEL.META_ARCHITECTURE = 'RetinaNet': the only"):
        load_config(None, ["MODEL.META_ARCHITECTURE", "RetinaNet"])
