"""Key-by-key audit: a maskrcnn_benchmark file (no VERSION) gets maskrcnn_benchmark's defaults.

THEIRS is maskrcnn_benchmark's `maskrcnn_benchmark/config/defaults.py` (frozen master), written
out here by hand for every key both projects have (under our name where it is spelled
differently: SOLVER.TEST_PERIOD -> TEST.EVAL_PERIOD, MODEL.CLS_AGNOSTIC_BBOX_REG and
TEST.DETECTIONS_PER_IMG -> MODEL.ROI_HEADS.*, DTYPE float32 -> SOLVER.AMP.ENABLED False), plus
the two loss betas their code hard-codes (RPN 1/9, box head 1) and the fill of their trunk's
convolutions (kaiming_uniform_ with a=1: XavierFill). ROI_MASK_HEAD.POSTPROCESS_MASKS
is accepted and dropped (masks are always pasted into the image here). Where this project's own
defaults differ on purpose, the second test lists them.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from detector.config import get_cfg, load_config

THEIRS: dict[str, Any] = {
    "MODEL.RPN_ONLY": False, "MODEL.MASK_ON": False, "MODEL.DEVICE": "cuda",
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN", "MODEL.WEIGHT": "",
    "MODEL.ROI_HEADS.CLS_AGNOSTIC_BBOX_REG": False,
    "INPUT.MIN_SIZE_TRAIN": [800], "INPUT.MAX_SIZE_TRAIN": 1333, "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333, "INPUT.PIXEL_MEAN": [102.9801, 115.9465, 122.7717],
    "INPUT.PIXEL_STD": [1.0, 1.0, 1.0], "INPUT.TO_BGR255": True, "INPUT.BRIGHTNESS": 0.0,
    "INPUT.CONTRAST": 0.0, "INPUT.SATURATION": 0.0, "INPUT.HUE": 0.0,
    "INPUT.VERTICAL_FLIP_PROB_TRAIN": 0.0,
    "DATASETS.TRAIN": [], "DATASETS.TEST": [],
    "DATALOADER.NUM_WORKERS": 4, "DATALOADER.SIZE_DIVISIBILITY": 0,
    "DATALOADER.ASPECT_RATIO_GROUPING": True,
    "MODEL.BACKBONE.CONV_BODY": "R-50-C4", "MODEL.BACKBONE.FREEZE_CONV_BODY_AT": 2,
    "MODEL.FPN.USE_GN": False, "MODEL.FPN.USE_RELU": False,
    "MODEL.GROUP_NORM.DIM_PER_GP": -1, "MODEL.GROUP_NORM.NUM_GROUPS": 32,
    "MODEL.GROUP_NORM.EPSILON": 1e-5,
    "MODEL.RPN.USE_FPN": False, "MODEL.RPN.ANCHOR_SIZES": [32, 64, 128, 256, 512],
    "MODEL.RPN.ANCHOR_STRIDE": [16], "MODEL.RPN.ASPECT_RATIOS": [0.5, 1.0, 2.0],
    "MODEL.RPN.STRADDLE_THRESH": 0, "MODEL.RPN.FG_IOU_THRESHOLD": 0.7,
    "MODEL.RPN.BG_IOU_THRESHOLD": 0.3, "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 256,
    "MODEL.RPN.POSITIVE_FRACTION": 0.5, "MODEL.RPN.PRE_NMS_TOP_N_TRAIN": 12000,
    "MODEL.RPN.PRE_NMS_TOP_N_TEST": 6000, "MODEL.RPN.POST_NMS_TOP_N_TRAIN": 2000,
    "MODEL.RPN.POST_NMS_TOP_N_TEST": 1000, "MODEL.RPN.NMS_THRESH": 0.7, "MODEL.RPN.MIN_SIZE": 0,
    "MODEL.RPN.FPN_POST_NMS_TOP_N_TRAIN": 2000, "MODEL.RPN.FPN_POST_NMS_TOP_N_TEST": 2000,
    "MODEL.RPN.FPN_POST_NMS_PER_BATCH": True, "MODEL.RPN.RPN_HEAD": "SingleConvRPNHead",
    "MODEL.RPN.SMOOTH_L1_BETA": 1.0 / 9,  # hard-coded in their rpn/loss.py
    "MODEL.ROI_HEADS.USE_FPN": False, "MODEL.ROI_HEADS.FG_IOU_THRESHOLD": 0.5,
    "MODEL.ROI_HEADS.BG_IOU_THRESHOLD": 0.5, "MODEL.ROI_HEADS.BBOX_REG_WEIGHTS": [10, 10, 5, 5],
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 512, "MODEL.ROI_HEADS.POSITIVE_FRACTION": 0.25,
    "MODEL.ROI_HEADS.SCORE_THRESH": 0.05, "MODEL.ROI_HEADS.NMS": 0.5,
    "MODEL.ROI_HEADS.DETECTIONS_PER_IMG": 100,
    "MODEL.ROI_BOX_HEAD.FEATURE_EXTRACTOR": "ResNet50Conv5ROIFeatureExtractor",
    "MODEL.ROI_BOX_HEAD.PREDICTOR": "FastRCNNPredictor", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": 0, "MODEL.ROI_BOX_HEAD.POOLER_SCALES": [1 / 16],
    "MODEL.ROI_BOX_HEAD.NUM_CLASSES": 81, "MODEL.ROI_BOX_HEAD.MLP_HEAD_DIM": 1024,
    "MODEL.ROI_BOX_HEAD.USE_GN": False, "MODEL.ROI_BOX_HEAD.DILATION": 1,
    "MODEL.ROI_BOX_HEAD.CONV_HEAD_DIM": 256, "MODEL.ROI_BOX_HEAD.NUM_STACKED_CONVS": 4,
    "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA": 1.0,  # hard-coded in their roi_box_head/loss.py
    "MODEL.RESNETS.CONV_INIT": "XavierFill",  # kaiming_uniform_(a=1), their backbone/resnet.py
    "MODEL.ROI_MASK_HEAD.FEATURE_EXTRACTOR": "ResNet50Conv5ROIFeatureExtractor",
    "MODEL.ROI_MASK_HEAD.PREDICTOR": "MaskRCNNC4Predictor",
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 14, "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_MASK_HEAD.POOLER_SCALES": [1 / 16], "MODEL.ROI_MASK_HEAD.MLP_HEAD_DIM": 1024,
    "MODEL.ROI_MASK_HEAD.CONV_LAYERS": [256, 256, 256, 256], "MODEL.ROI_MASK_HEAD.RESOLUTION": 14,
    "MODEL.ROI_MASK_HEAD.SHARE_BOX_FEATURE_EXTRACTOR": True,
    "MODEL.ROI_MASK_HEAD.POSTPROCESS_MASKS_THRESHOLD": 0.5, "MODEL.ROI_MASK_HEAD.DILATION": 1,
    "MODEL.ROI_MASK_HEAD.USE_GN": False,
    "MODEL.KEYPOINT_ON": False,
    "MODEL.ROI_KEYPOINT_HEAD.FEATURE_EXTRACTOR": "KeypointRCNNFeatureExtractor",
    "MODEL.ROI_KEYPOINT_HEAD.PREDICTOR": "KeypointRCNNPredictor",
    "MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_KEYPOINT_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_KEYPOINT_HEAD.POOLER_SCALES": [1 / 16],
    "MODEL.ROI_KEYPOINT_HEAD.MLP_HEAD_DIM": 1024,
    "MODEL.ROI_KEYPOINT_HEAD.CONV_LAYERS": [512] * 8,
    "MODEL.ROI_KEYPOINT_HEAD.RESOLUTION": 14, "MODEL.ROI_KEYPOINT_HEAD.NUM_CLASSES": 17,
    "MODEL.ROI_KEYPOINT_HEAD.SHARE_BOX_FEATURE_EXTRACTOR": True,
    "MODEL.RESNETS.NUM_GROUPS": 1, "MODEL.RESNETS.WIDTH_PER_GROUP": 64,
    "MODEL.RESNETS.STRIDE_IN_1X1": True, "MODEL.RESNETS.RES5_DILATION": 1,
    "MODEL.RESNETS.BACKBONE_OUT_CHANNELS": 1024, "MODEL.RESNETS.RES2_OUT_CHANNELS": 256,
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 64, "MODEL.RESNETS.STAGE_WITH_DCN": [False] * 4,
    "MODEL.RESNETS.WITH_MODULATED_DCN": False, "MODEL.RESNETS.DEFORMABLE_GROUPS": 1,
    "MODEL.RESNETS.NORM": "FrozenBN",  # their TRANS_FUNC / STEM_FUNC defaults
    "SOLVER.MAX_ITER": 40000, "SOLVER.BASE_LR": 0.001, "SOLVER.BIAS_LR_FACTOR": 2,
    "SOLVER.MOMENTUM": 0.9, "SOLVER.WEIGHT_DECAY": 0.0005, "SOLVER.WEIGHT_DECAY_BIAS": 0,
    "SOLVER.GAMMA": 0.1, "SOLVER.STEPS": [30000], "SOLVER.WARMUP_FACTOR": 1 / 3,
    "SOLVER.WARMUP_ITERS": 500, "SOLVER.WARMUP_METHOD": "linear",
    "SOLVER.CHECKPOINT_PERIOD": 2500, "TEST.EVAL_PERIOD": 0, "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.AMP.ENABLED": False,
    "TEST.EXPECTED_RESULTS": [], "TEST.EXPECTED_RESULTS_SIGMA_TOL": 4, "TEST.IMS_PER_BATCH": 8,
    "TEST.BBOX_AUG.ENABLED": False, "TEST.BBOX_AUG.H_FLIP": False, "TEST.BBOX_AUG.SCALES": [],
    "TEST.BBOX_AUG.MAX_SIZE": 4000, "TEST.BBOX_AUG.SCALE_H_FLIP": False,
    "OUTPUT_DIR": ".",
}  # fmt: skip

# Ours where it differs on purpose (measured on real data: docs/accuracy.md).
OURS_DIFFERENT = {
    "MODEL.RPN.STRADDLE_THRESH", "MODEL.RPN.FPN_POST_NMS_PER_BATCH", "SOLVER.BIAS_LR_FACTOR",
    "SOLVER.WEIGHT_DECAY_BIAS",
}  # fmt: skip


def _get(cfg: DictConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return OmegaConf.to_container(node) if OmegaConf.is_config(node) else node


def _same(ours: Any, theirs: Any) -> bool:
    if ours is None or theirs is None:
        return ours is theirs
    if isinstance(theirs, list):
        return len(ours) == len(theirs) and all(map(_same, ours, theirs))
    if isinstance(theirs, bool) or isinstance(theirs, str):
        return ours == theirs
    return math.isclose(float(ours), float(theirs), rel_tol=1e-9, abs_tol=1e-12)


def test_a_file_without_version_gets_their_defaults(tmp_path) -> None:
    their_file = tmp_path / "e2e.yaml"
    their_file.write_text('MODEL:\n  META_ARCHITECTURE: "GeneralizedRCNN"\n')
    cfg = load_config(their_file)
    wrong = [(key, _get(cfg, key), theirs) for key, theirs in THEIRS.items()]
    assert [w for w in wrong if not _same(w[1], w[2])] == []


def test_our_defaults_differ_only_where_documented() -> None:
    differing = {key for key, theirs in THEIRS.items() if not _same(_get(get_cfg(), key), theirs)}
    assert differing == OURS_DIFFERENT
