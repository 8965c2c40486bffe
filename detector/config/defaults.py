"""The config schema: nested dataclasses whose fields are the keys and their defaults.

Key names and default values follow maskrcnn_benchmark's `config/defaults.py`, so its users and
its YAML files feel at home; keys it does not have (SOLVER.AMP, SOLVER.CLIP_GRADIENTS, ...) follow
detectron2 where it has them. The schema is used as an OmegaConf structured config
(`OmegaConf.structured(Config)`), so OmegaConf rejects unknown keys and values of the wrong type.

Sequences are typed `list[...]` (YAML and the command line may write them as tuples: `(800,)`).
Fields with a closed set of values are `StrEnum`s: they compare equal to their string values
(`cfg.MODEL.RESNETS.NORM == "GN"`) and OmegaConf refuses anything else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from detector.utils.precision import MemoryFormat, Precision


def _list(*values: Any) -> Any:
    """A dataclass default for a list field (each config gets its own copy)."""
    return field(default_factory=lambda: list(values))


class Norm(StrEnum):
    """Normalization layer of the ResNet backbone (MODEL.RESNETS.NORM)."""

    FrozenBN = "FrozenBN"
    BN = "BN"
    SyncBN = "SyncBN"
    GN = "GN"


class ConvInit(StrEnum):
    """How the ResNet trunk's convolutions are filled before training (MODEL.RESNETS.CONV_INIT).

    XavierFill: uniform, std 1/sqrt(fan_in) (kaiming_uniform_ with a=1; maskrcnn_benchmark's).
    MSRAFill: normal, std sqrt(2/fan_out) (kaiming_normal_, fan_out, ReLU; torchvision's and
    detectron2's ResNets). Pretrained weights replace either; it matters from scratch.
    """

    XavierFill = "XavierFill"
    MSRAFill = "MSRAFill"


class WarmupMethod(StrEnum):
    """How the learning rate ramps up during SOLVER.WARMUP_ITERS."""

    constant = "constant"
    linear = "linear"


class LRScheduler(StrEnum):
    """Learning-rate schedule after warm-up (SOLVER.LR_SCHEDULER)."""

    WarmupMultiStepLR = "WarmupMultiStepLR"
    WarmupCosineLR = "WarmupCosineLR"


class AmpDtype(StrEnum):
    """Autocast dtype for mixed precision (SOLVER.AMP.DTYPE)."""

    float16 = "float16"
    bfloat16 = "bfloat16"


# --------------------------------------------------------------------------------------------
# MODEL
# --------------------------------------------------------------------------------------------
@dataclass
class BackboneConfig:
    # Registry name in detector.modeling.registry.BACKBONES, e.g. "R-50-C4", "R-101-FPN", "VGG-16".
    # The ResNet depth comes from this name.
    CONV_BODY: str = "R-50-C4"
    # Freeze the stem and the stages up to and including this one (0: train everything).
    FREEZE_CONV_BODY_AT: int = 2


@dataclass
class ResNetsConfig:
    # 1: ResNet; > 1: ResNeXt.
    NUM_GROUPS: int = 1
    WIDTH_PER_GROUP: int = 64
    # Stride 2 on the 1x1 conv (MSRA/Caffe2 weights); False puts it on the 3x3 (torchvision).
    STRIDE_IN_1X1: bool = True
    # maskrcnn_benchmark's TRANS_FUNC / STEM_FUNC (BottleneckWithGN, StemWithGN, ...) are read
    # as this key (detector/config/compat.py).
    NORM: Norm = Norm.FrozenBN
    RES5_DILATION: int = 1
    STEM_OUT_CHANNELS: int = 64
    RES2_OUT_CHANNELS: int = 256
    BACKBONE_OUT_CHANNELS: int = 256 * 4
    # Deformable convolutions in the 3x3 conv of stages res2..res5.
    STAGE_WITH_DCN: list[bool] = _list(False, False, False, False)
    # DCN v2 (modulated) instead of v1.
    WITH_MODULATED_DCN: bool = False
    DEFORMABLE_GROUPS: int = 1
    # Fill of the trunk's convolutions (ConvInit); deformable convs keep their own. XavierFill
    # measured ahead of MSRAFill on configs/dsb2018 and configs/bccd and level with it on the
    # full-width benchmark network (docs/accuracy.md, "The trunk's fill").
    CONV_INIT: ConvInit = ConvInit.XavierFill


@dataclass
class FPNConfig:
    USE_GN: bool = False
    USE_RELU: bool = False


@dataclass
class GroupNormConfig:
    # Channels per group (-1: use NUM_GROUPS instead).
    DIM_PER_GP: int = -1
    # Number of groups (-1: use DIM_PER_GP instead).
    NUM_GROUPS: int = 32
    EPSILON: float = 1e-5


@dataclass
class RPNConfig:
    USE_FPN: bool = False
    # Registry name in detector.modeling.registry.RPN_HEADS.
    RPN_HEAD: str = "SingleConvRPNHead"
    # Anchor sizes in pixels of the network input; with FPN, one per level.
    ANCHOR_SIZES: list[float] = _list(32.0, 64.0, 128.0, 256.0, 512.0)
    # Stride of the feature map(s) the RPN runs on; with FPN, one per level.
    ANCHOR_STRIDE: list[int] = _list(16)
    ASPECT_RATIOS: list[float] = _list(0.5, 1.0, 2.0)
    # torchvision's anchors: each level's stride is the padded input size // the level's size
    # (61, not 64, on P6 of an 800-pixel side); False: ANCHOR_STRIDE.
    ANCHOR_STRIDE_FROM_INPUT_SIZE: bool = False
    # Drop anchors reaching more than this many pixels outside the image (-1: keep all, as
    # torchvision and detectron2 do; maskrcnn_benchmark's 0 leaves frame-filling objects without
    # a positive anchor: docs/accuracy.md).
    STRADDLE_THRESH: int = -1
    # IoU >= FG_IOU_THRESHOLD: positive anchor; IoU < BG_IOU_THRESHOLD: negative anchor.
    FG_IOU_THRESHOLD: float = 0.7
    BG_IOU_THRESHOLD: float = 0.3
    # Anchors sampled per image for the loss, and the positive fraction among them.
    BATCH_SIZE_PER_IMAGE: int = 256
    POSITIVE_FRACTION: float = 0.5
    # Proposals kept before NMS (per FPN level with FPN) and after NMS (per image).
    PRE_NMS_TOP_N_TRAIN: int = 12000
    PRE_NMS_TOP_N_TEST: int = 6000
    POST_NMS_TOP_N_TRAIN: int = 2000
    POST_NMS_TOP_N_TEST: int = 1000
    # With FPN: proposals kept after merging all levels.
    FPN_POST_NMS_TOP_N_TRAIN: int = 2000
    FPN_POST_NMS_TOP_N_TEST: int = 2000
    # True: in training, keep FPN_POST_NMS_TOP_N_TRAIN over the whole batch (maskrcnn_benchmark's
    # default, which its files still get: VERSION); False: per image (Detectron's, torchvision's).
    FPN_POST_NMS_PER_BATCH: bool = False
    NMS_THRESH: float = 0.7
    # Proposals with a side shorter than this (in input pixels) are dropped.
    MIN_SIZE: float = 0.0
    SMOOTH_L1_BETA: float = 1.0 / 9
    # Decoding proposals clamps the predicted log-size deltas (tw, th) to this: log(1000 / 16),
    # every peer's value (a large value such as 20 turns the clamp off; docs/accuracy.md).
    BBOX_XFORM_CLIP: float = math.log(1000.0 / 16)


@dataclass
class ROIHeadsConfig:
    USE_FPN: bool = False
    # IoU >= FG_IOU_THRESHOLD: foreground RoI; BG_IOU_THRESHOLD_LO <= IoU < BG_IOU_THRESHOLD:
    # background RoI; others are ignored.
    FG_IOU_THRESHOLD: float = 0.5
    BG_IOU_THRESHOLD: float = 0.5
    BG_IOU_THRESHOLD_LO: float = 0.0
    # Weights (wx, wy, ww, wh) on the box regression targets.
    BBOX_REG_WEIGHTS: list[float] = _list(10.0, 10.0, 5.0, 5.0)
    # Decoding clamps the predicted log-size deltas (tw, th, after the weights) to this, as
    # MODEL.RPN.BBOX_XFORM_CLIP.
    BBOX_XFORM_CLIP: float = math.log(1000.0 / 16)
    BATCH_SIZE_PER_IMAGE: int = 512
    POSITIVE_FRACTION: float = 0.25
    # Inference: score threshold, NMS IoU threshold, detections kept per image.
    SCORE_THRESH: float = 0.05
    NMS: float = 0.5
    DETECTIONS_PER_IMG: int = 100
    # One box regressor for all classes (R-FCN style) instead of one per class.
    CLS_AGNOSTIC_BBOX_REG: bool = False


@dataclass
class PooledHeadConfig:
    """The keys every RoI head has: its registry names and the pooler it reads its RoIs with."""

    # Registry names in detector.modeling.registry (each head sets its own defaults).
    FEATURE_EXTRACTOR: str = ""
    PREDICTOR: str = ""
    POOLER_TYPE: str = "ROIAlign"
    POOLER_RESOLUTION: int = 14
    # Bilinear samples per bin side (0: adaptive, ceil(roi_size / bin_count)).
    POOLER_SAMPLING_RATIO: int = 0
    # Feature-map scale of each pooled level (1 / stride).
    POOLER_SCALES: list[float] = _list(1.0 / 16)
    # Scale of the learned offsets in deformable RoI pooling.
    DEFORM_GAMMA: float = 0.1
    MLP_HEAD_DIM: int = 1024


@dataclass
class ROIBoxHeadConfig(PooledHeadConfig):
    FEATURE_EXTRACTOR: str = "ResNet50Conv5ROIFeatureExtractor"
    PREDICTOR: str = "FastRCNNPredictor"
    # Classes including the background.
    NUM_CLASSES: int = 81
    USE_GN: bool = False
    DILATION: int = 1
    CONV_HEAD_DIM: int = 256
    NUM_STACKED_CONVS: int = 4
    SMOOTH_L1_BETA: float = 1.0


@dataclass
class ROIMaskHeadConfig(PooledHeadConfig):
    FEATURE_EXTRACTOR: str = "ResNet50Conv5ROIFeatureExtractor"
    PREDICTOR: str = "MaskRCNNC4Predictor"
    CONV_LAYERS: list[int] = _list(256, 256, 256, 256)
    # Side of the predicted masks (and of the mask targets): maskrcnn_benchmark's 14 suits the C4
    # head (14x14 pooled -> res5 -> 7x7 -> deconv 14x14); FPN configs set 28.
    RESOLUTION: int = 14
    SHARE_BOX_FEATURE_EXTRACTOR: bool = True
    # detector_postprocess's mask binarization: a pasted pixel is on above this probability.
    POSTPROCESS_MASKS_THRESHOLD: float = 0.5
    DILATION: int = 1
    USE_GN: bool = False


@dataclass
class ROIKeypointHeadConfig(PooledHeadConfig):
    FEATURE_EXTRACTOR: str = "KeypointRCNNFeatureExtractor"
    PREDICTOR: str = "KeypointRCNNPredictor"
    CONV_LAYERS: list[int] = _list(*([512] * 8))
    # Side of the predicted heatmaps (and of the targets' grid): 4 x POOLER_RESOLUTION with
    # KeypointRCNNPredictor (deconv x2, bilinear x2); maskrcnn_benchmark's configs set 56.
    RESOLUTION: int = 14
    # Keypoints per instance (maskrcnn_benchmark's name; 17 COCO person keypoints).
    NUM_CLASSES: int = 17
    # maskrcnn_benchmark's key and default; the keypoint head has its own convs here, so every
    # keypoint config sets False (as maskrcnn_benchmark's do: True would hand it the box head's
    # MLP); True with MODEL.KEYPOINT_ON is refused.
    SHARE_BOX_FEATURE_EXTRACTOR: bool = True


@dataclass
class ModelConfig:
    META_ARCHITECTURE: str = "GeneralizedRCNN"
    # Path of a local checkpoint to start from ("" for none); nothing is downloaded.
    WEIGHT: str = ""
    MASK_ON: bool = False
    KEYPOINT_ON: bool = False
    RPN_ONLY: bool = False
    DEVICE: str = "cuda"
    # float32, bfloat16 (autocast in training and inference; weights, losses and the optimizer
    # stay float32) or auto (bfloat16 where the CPU computes it natively: AVX512-BF16 or AMX;
    # float32 on other CPUs and on CUDA). docs/benchmarks.md has the speed and accuracy of each.
    PRECISION: Precision = Precision.auto
    # contiguous (NCHW), channels_last (NHWC weights and maps) or auto (channels_last when
    # PRECISION computes in bfloat16, where oneDNN's channels-last convolutions are fastest).
    MEMORY_FORMAT: MemoryFormat = MemoryFormat.auto
    BACKBONE: BackboneConfig = field(default_factory=BackboneConfig)
    RESNETS: ResNetsConfig = field(default_factory=ResNetsConfig)
    FPN: FPNConfig = field(default_factory=FPNConfig)
    GROUP_NORM: GroupNormConfig = field(default_factory=GroupNormConfig)
    RPN: RPNConfig = field(default_factory=RPNConfig)
    ROI_HEADS: ROIHeadsConfig = field(default_factory=ROIHeadsConfig)
    ROI_BOX_HEAD: ROIBoxHeadConfig = field(default_factory=ROIBoxHeadConfig)
    ROI_MASK_HEAD: ROIMaskHeadConfig = field(default_factory=ROIMaskHeadConfig)
    ROI_KEYPOINT_HEAD: ROIKeypointHeadConfig = field(default_factory=ROIKeypointHeadConfig)


# --------------------------------------------------------------------------------------------
# INPUT, DATASETS, DATALOADER
# --------------------------------------------------------------------------------------------
class ResizeMode(StrEnum):
    """How images are resized to INPUT.MIN_SIZE_* / MAX_SIZE_* (detector.data.transforms)."""

    antialias = "antialias"  # uint8 in, uint8 out; sides rounded; antialiased bilinear
    torchvision = "torchvision"  # as GeneralizedRCNNTransform: float, floored sides, plain bilinear


@dataclass
class InputConfig:
    # Shortest-edge sizes for training; one is drawn at random per image.
    MIN_SIZE_TRAIN: list[int] = _list(800)
    MAX_SIZE_TRAIN: int = 1333
    MIN_SIZE_TEST: int = 800
    MAX_SIZE_TEST: int = 1333
    # Normalization; the defaults suit Caffe2 (BGR, 0..255) weights.
    PIXEL_MEAN: list[float] = _list(102.9801, 115.9465, 122.7717)
    PIXEL_STD: list[float] = _list(1.0, 1.0, 1.0)
    TO_BGR255: bool = True
    HORIZONTAL_FLIP_PROB_TRAIN: float = 0.5
    VERTICAL_FLIP_PROB_TRAIN: float = 0.0
    # Colour jitter of training images (torchvision's ColorJitter amounts; 0: off).
    BRIGHTNESS: float = 0.0
    CONTRAST: float = 0.0
    SATURATION: float = 0.0
    HUE: float = 0.0
    # antialias: our resize (uint8 images, sides rounded to the nearest pixel, antialiased);
    # torchvision: torchvision detection models' resize, for identical results with their weights.
    RESIZE_MODE: ResizeMode = ResizeMode.antialias
    # Images with more pixels than this are refused (decompression-bomb guard).
    MAX_IMAGE_PIXELS: int = 178_956_970


class DatasetFormat(StrEnum):
    """Annotation format of a dataset declared in DATASETS.CUSTOM."""

    coco = "coco"
    voc = "voc"
    dsb2018 = "dsb2018"
    shapes = "shapes"


@dataclass
class CustomDatasetConfig:
    """A dataset declared by config alone (DATASETS.CUSTOM.<name>); relative paths are relative
    to the current directory."""

    FORMAT: DatasetFormat = DatasetFormat.coco
    # coco: the instances JSON and the folder its file_names are relative to.
    ANN_FILE: str = ""
    # coco: see ANN_FILE; voc: the images' folder, relative to ROOT ("": JPEGImages).
    IMAGE_DIR: str = ""
    # voc: the folder of the XML files, relative to ROOT ("": Annotations).
    ANN_DIR: str = ""
    # voc: the devkit folder (Annotations/, JPEGImages/, ImageSets/Main/) or any folder holding
    # IMAGE_DIR and ANN_DIR; dsb2018: the folder holding stage1_train/.
    ROOT: str = ""
    # voc: ImageSets/Main/<SPLIT>.txt ("": every XML in ANN_DIR); dsb2018: train, val, all.
    SPLIT: str = ""
    # voc: the split as a list of images instead of SPLIT, relative to ROOT: a text file (one
    # image id or file name per line) or a .csv file (the first column, after a header row).
    SPLIT_FILE: str = ""
    # voc: class names without the background ([]: DATASETS.CLASS_NAMES, else the 20 VOC ones).
    CLASS_NAMES: list[str] = _list()
    # voc: instance masks from SegmentationObject/<id>.png; the split is then read from
    # ImageSets/Segmentation/<SPLIT>.txt.
    MASKS: bool = False
    # shapes: number of images, seed (one per split) and image side.
    NUM_IMAGES: int = 0
    SEED: int = 0
    IMAGE_SIZE: int = 128
    # shapes: the keypoint variant (corners of squares and triangles, centres of circles).
    KEYPOINTS: bool = False
    # coco: the keypoints of the annotations' "keypoints" lists ([]: the names in the file's
    # category); KEYPOINT_FLIP_MAP: [[left, right], ...] pairs swapped by horizontal flips
    # ([]: left_*/right_* names pair up); KEYPOINT_SKELETON: [[a, b], ...] joined in drawings;
    # KEYPOINT_OKS_SIGMAS: one per keypoint, for COCO's OKS (needed to evaluate keypoints
    # other than COCO's 17 person keypoints).
    KEYPOINT_NAMES: list[str] = _list()
    KEYPOINT_FLIP_MAP: list[list[str]] = _list()
    KEYPOINT_SKELETON: list[list[str]] = _list()
    KEYPOINT_OKS_SIGMAS: list[float] = _list()


@dataclass
class DatasetsConfig:
    # Dataset names known to detector.data (e.g. "coco_2017_train", "voc_2007_trainval").
    TRAIN: list[str] = _list()
    TEST: list[str] = _list()
    # Folder the dataset paths are relative to.
    ROOT: str = "datasets"
    # Class names of a custom dataset, without the background ([]: from the dataset).
    CLASS_NAMES: list[str] = _list()
    # Drop training images without any box.
    FILTER_EMPTY: bool = True
    # Folder of the shared real datasets (bccd, coco_sample6, dsb2018, ...); "": the environment
    # variable DETECTOR_SHARED_DATA, else "../shared/data".
    SHARED_ROOT: str = ""
    # Keep Pascal VOC "difficult" objects in the training targets (they are always kept, flagged,
    # for evaluation).
    TRAIN_USE_DIFFICULT: bool = False
    # Datasets declared by config, by name: DATASETS.CUSTOM.my_train.FORMAT: coco, ... The names
    # can be used in TRAIN and TEST like the built-in ones.
    CUSTOM: dict[str, CustomDatasetConfig] = field(default_factory=dict[str, CustomDatasetConfig])


@dataclass
class DataLoaderConfig:
    NUM_WORKERS: int = 4
    # Pad batched images to a multiple of this (0: no constraint; 32 for FPN).
    SIZE_DIVISIBILITY: int = 0
    # Batch landscape images with landscape images and portrait with portrait.
    ASPECT_RATIO_GROUPING: bool = True
    # Training: an image that cannot be read (truncated, missing, of another size than its
    # annotation) is skipped, counted and logged, and the next one taken, instead of stopping
    # the run (tools/check_dataset.py lists them all up front).
    SKIP_BAD_IMAGES: bool = False


# --------------------------------------------------------------------------------------------
# SOLVER, TEST
# --------------------------------------------------------------------------------------------
@dataclass
class ClipGradientsConfig:
    ENABLED: bool = False
    # Maximum total L2 norm of the gradients.
    MAX_NORM: float = 10.0


@dataclass
class AmpConfig:
    ENABLED: bool = False
    DTYPE: AmpDtype = AmpDtype.float16


@dataclass
class SolverConfig:
    MAX_ITER: int = 40000
    BASE_LR: float = 0.001
    # Biases train at BASE_LR * BIAS_LR_FACTOR with WEIGHT_DECAY_BIAS (None: WEIGHT_DECAY), and
    # normalization layers' weights with WEIGHT_DECAY_NORM (None: WEIGHT_DECAY); detector.solver.
    # Ours are detectron2's (1, unset, 0): maskrcnn_benchmark's 2x-lr, undecayed biases (what its
    # files still get) trained one WBC seed in three to half the AP from scratch, though they were
    # 0.02-0.03 AP ahead on the bccd / dsb2018 configs' 3-seed means (docs/accuracy.md).
    BIAS_LR_FACTOR: float = 1.0
    MOMENTUM: float = 0.9
    WEIGHT_DECAY: float = 0.0005
    WEIGHT_DECAY_BIAS: float | None = None
    WEIGHT_DECAY_NORM: float | None = 0.0
    LR_SCHEDULER: LRScheduler = LRScheduler.WarmupMultiStepLR
    # WarmupMultiStepLR: multiply the LR by GAMMA at each of STEPS.
    GAMMA: float = 0.1
    STEPS: list[int] = _list(30000)
    # WarmupCosineLR: the LR reached at MAX_ITER.
    BASE_LR_END: float = 0.0
    WARMUP_FACTOR: float = 1.0 / 3
    WARMUP_ITERS: int = 500
    WARMUP_METHOD: WarmupMethod = WarmupMethod.linear
    CHECKPOINT_PERIOD: int = 2500
    # Iterations between training log lines (metrics.jsonl gets every iteration); iterations 1,
    # 2, 5 and 10 and the last are logged too.
    LOG_PERIOD: int = 20
    # Keep only the newest checkpoints (0: keep all).
    MAX_CHECKPOINTS_KEPT: int = 0
    # Images per batch over all processes.
    IMS_PER_BATCH: int = 16
    CLIP_GRADIENTS: ClipGradientsConfig = field(default_factory=ClipGradientsConfig)
    # Sum the gradients of this many batches before each optimizer step.
    ACCUMULATE_GRAD_STEPS: int = 1
    AMP: AmpConfig = field(default_factory=AmpConfig)
    # Treat denormal floats as 0 on every CPU thread while training (detector.ops.denormals):
    # from-scratch gradients are full of them, and on x86 they made whole iterations up to 8x
    # slower (docs/accuracy.md). No effect on CUDA kernels.
    FLUSH_DENORMALS: bool = True


@dataclass
class BBoxAugConfig:
    """Test-time augmentation (detector/modeling/test_time_augmentation.py)."""

    ENABLED: bool = False
    # Also run the horizontally flipped test-size image.
    H_FLIP: bool = False
    # Shorter sides of extra runs, their longer side within MAX_SIZE; each flipped too with
    # SCALE_H_FLIP.
    SCALES: list[int] = _list()
    MAX_SIZE: int = 4000
    SCALE_H_FLIP: bool = False
    # Box voting (Detectron's TEST.BBOX_VOTE; not in maskrcnn_benchmark): each merged box becomes
    # the score-weighted mean of the candidates of its class, from every run, that overlap it
    # with IoU >= this; 0: off.
    VOTE_IOU: float = 0.0


@dataclass
class EvalConfig:
    # Images per batch over all processes.
    IMS_PER_BATCH: int = 8
    # Evaluate every this many training iterations (0: only at the end).
    EVAL_PERIOD: int = 0
    # Pascal VOC test sets: the headline AP is VOC2007's 11-point AP (True) or the VOC2010+
    # area under the precision envelope (False); both are reported.
    VOC_USE_07_METRIC: bool = True
    # Checked after testing: [[task, metric, expected, tolerance], ...], e.g. [["bbox", "AP",
    # 0.37, 0.01]].
    EXPECTED_RESULTS: list[Any] = _list()
    BBOX_AUG: BBoxAugConfig = field(default_factory=BBoxAugConfig)
    EXPECTED_RESULTS_SIGMA_TOL: int = 4


# --------------------------------------------------------------------------------------------
# Root
# --------------------------------------------------------------------------------------------
@dataclass
class Config:
    # 2: this project's defaults. A config file chain that sets no VERSION is read as
    # maskrcnn_benchmark's (its files have none) and gets its defaults where ours differ
    # (detector.config.compat.MASKRCNN_BENCHMARK_DEFAULTS); VERSION 1 asks for them explicitly.
    VERSION: int = 2
    MODEL: ModelConfig = field(default_factory=ModelConfig)
    INPUT: InputConfig = field(default_factory=InputConfig)
    DATASETS: DatasetsConfig = field(default_factory=DatasetsConfig)
    DATALOADER: DataLoaderConfig = field(default_factory=DataLoaderConfig)
    SOLVER: SolverConfig = field(default_factory=SolverConfig)
    TEST: EvalConfig = field(default_factory=EvalConfig)
    OUTPUT_DIR: str = "."
    # Random seed (-1: draw one and log it).
    SEED: int = -1
    # Deterministic algorithms (torch.use_deterministic_algorithms) for reproducible runs.
    DETERMINISTIC: bool = False
