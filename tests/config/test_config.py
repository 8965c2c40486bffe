"""Config schema, YAML loading with _BASE_, command-line overrides, dumps and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig
from omegaconf.errors import ReadonlyConfigError, ValidationError

from detector.config import (
    ConfigError,
    Norm,
    dump_config,
    get_cfg,
    load_config,
    merge_opts,
    save_config,
    unlocked,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------
# Defaults
# ------------------------------------------------------------------------------------------
def test_defaults_follow_maskrcnn_benchmark():
    """maskrcnn_benchmark's defaults, except those measured better (test below)."""
    cfg = get_cfg()
    assert isinstance(cfg, DictConfig)
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert cfg.MODEL.BACKBONE.CONV_BODY == "R-50-C4"
    assert cfg.MODEL.RESNETS.NORM == "FrozenBN"
    assert list(cfg.MODEL.RESNETS.STAGE_WITH_DCN) == [False] * 4
    assert list(cfg.MODEL.RPN.ANCHOR_SIZES) == [32, 64, 128, 256, 512]
    assert list(cfg.MODEL.RPN.ANCHOR_STRIDE) == [16]
    assert cfg.MODEL.RPN.SMOOTH_L1_BETA == pytest.approx(1 / 9)
    assert cfg.MODEL.RPN.PRE_NMS_TOP_N_TRAIN == 12000
    heads = cfg.MODEL.ROI_HEADS
    assert (heads.FG_IOU_THRESHOLD, heads.BG_IOU_THRESHOLD, heads.BG_IOU_THRESHOLD_LO) == (
        0.5,
        0.5,
        0.0,
    )
    assert list(heads.BBOX_REG_WEIGHTS) == [10, 10, 5, 5]
    assert (heads.BATCH_SIZE_PER_IMAGE, heads.POSITIVE_FRACTION) == (512, 0.25)
    assert (heads.SCORE_THRESH, heads.NMS, heads.DETECTIONS_PER_IMG) == (0.05, 0.5, 100)
    box = cfg.MODEL.ROI_BOX_HEAD
    assert (box.POOLER_TYPE, box.NUM_CLASSES, box.MLP_HEAD_DIM) == ("ROIAlign", 81, 1024)
    assert box.DEFORM_GAMMA == 0.1
    assert cfg.MODEL.ROI_MASK_HEAD.RESOLUTION == 14
    assert cfg.MODEL.ROI_MASK_HEAD.POSTPROCESS_MASKS_THRESHOLD == 0.5
    assert list(cfg.INPUT.MIN_SIZE_TRAIN) == [800]
    assert cfg.SOLVER.LR_SCHEDULER == "WarmupMultiStepLR"
    assert cfg.SOLVER.WARMUP_METHOD == "linear"
    assert cfg.SOLVER.AMP.DTYPE == "float16"
    assert cfg.SOLVER.CLIP_GRADIENTS.ENABLED is False


MEASURED = {  # key: (this project's default, maskrcnn_benchmark's), docs/accuracy.md
    "MODEL.RPN.STRADDLE_THRESH": (-1, 0),
    "MODEL.RPN.FPN_POST_NMS_PER_BATCH": (False, True),
    "SOLVER.BIAS_LR_FACTOR": (1.0, 2.0),
    "SOLVER.WEIGHT_DECAY_BIAS": (None, 0.0),
    "SOLVER.WEIGHT_DECAY_NORM": (0.0, None),
}


def _value(cfg: DictConfig, key: str) -> object:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def test_versions_choose_whose_defaults(tmp_path: Path):
    """No file or VERSION 2: ours; a file chain without VERSION (maskrcnn_benchmark's files):
    maskrcnn_benchmark's; what a file sets wins over either."""
    from detector.config.compat import MASKRCNN_BENCHMARK_DEFAULTS

    mrcnn = write(tmp_path / "e2e.yaml", "MODEL:\n  META_ARCHITECTURE: GeneralizedRCNN\n")
    ours = write(tmp_path / "ours.yaml", "VERSION: 2\n")
    derived = write(tmp_path / "derived.yaml", "_BASE_: e2e.yaml\nVERSION: 2\n")
    for key, (our_value, their_value) in MEASURED.items():
        assert _value(get_cfg(), key) == our_value, key
        assert _value(load_config(None), key) == our_value, key
        assert _value(load_config(ours), key) == our_value, key
        assert _value(load_config(derived), key) == our_value, key
        assert _value(load_config(mrcnn), key) == their_value, key
        assert _value(load_config(ours, ["VERSION", "1"]), key) == their_value, key
    assert (load_config(mrcnn).VERSION, load_config(ours).VERSION) == (1, 2)

    def count(node: object) -> int:
        return sum(map(count, node.values())) if isinstance(node, dict) else 1

    assert count(MASKRCNN_BENCHMARK_DEFAULTS) >= len(MEASURED)
    overridden = write(tmp_path / "set.yaml", "MODEL:\n  RPN:\n    STRADDLE_THRESH: 5\n")
    assert load_config(overridden).MODEL.RPN.STRADDLE_THRESH == 5
    with pytest.raises(ConfigError, match="VERSION = 3: expected 2"):
        load_config(ours, ["VERSION", "3"])


def test_project_configs_use_this_projects_defaults():
    """Every config under configs/ reads as VERSION 2 (its chain sets it)."""
    configs = sorted((Path(__file__).resolve().parents[2] / "configs").rglob("*.yaml"))
    assert len(configs) > 10
    for path in configs:
        assert load_config(path).VERSION == 2, path


def test_get_cfg_returns_fresh_copies():
    a, b = get_cfg(), get_cfg()
    a.MODEL.RPN.NMS_THRESH = 0.1
    a.INPUT.MIN_SIZE_TRAIN.append(900)
    assert b.MODEL.RPN.NMS_THRESH == 0.7
    assert list(b.INPUT.MIN_SIZE_TRAIN) == [800]


def test_get_cfg_checks_types_on_assignment():
    cfg = get_cfg()
    with pytest.raises(ValidationError):
        cfg.MODEL.RPN.PRE_NMS_TOP_N_TRAIN = "many"
    with pytest.raises(ValidationError):
        cfg.MODEL.RESNETS.NORM = "LayerNorm"
    cfg.MODEL.RESNETS.NORM = Norm.GN
    assert cfg.MODEL.RESNETS.NORM == Norm.GN == "GN"


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------
def test_load_none_gives_defaults():
    assert load_config(None) == get_cfg()


def test_load_maskrcnn_benchmark_style_yaml(tmp_path):
    path = write(
        tmp_path / "e2e.yaml",
        """
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  BACKBONE:
    CONV_BODY: "R-50-FPN"
  RESNETS:
    BACKBONE_OUT_CHANNELS: 256
  RPN:
    USE_FPN: True
    ANCHOR_STRIDE: (4, 8, 16, 32, 64)
    PRE_NMS_TOP_N_TRAIN: 2000
  ROI_BOX_HEAD:
    POOLER_SCALES: (0.25, 0.125, 0.0625, 0.03125)
DATASETS:
  TRAIN: ("coco_2014_train", "coco_2014_valminusminival")
  TEST: ("coco_2014_minival",)
DATALOADER:
  SIZE_DIVISIBILITY: 32
SOLVER:
  BASE_LR: 2e-2
  STEPS: (60000, 80000)
  MAX_ITER: 90000
""",
    )
    cfg = load_config(str(path))
    assert cfg.MODEL.BACKBONE.CONV_BODY == "R-50-FPN"
    assert cfg.MODEL.RPN.USE_FPN is True
    assert list(cfg.MODEL.RPN.ANCHOR_STRIDE) == [4, 8, 16, 32, 64]
    assert list(cfg.MODEL.ROI_BOX_HEAD.POOLER_SCALES) == [0.25, 0.125, 0.0625, 0.03125]
    assert list(cfg.DATASETS.TRAIN) == ["coco_2014_train", "coco_2014_valminusminival"]
    assert list(cfg.DATASETS.TEST) == ["coco_2014_minival"]
    assert cfg.SOLVER.BASE_LR == pytest.approx(0.02)
    assert list(cfg.SOLVER.STEPS) == [60000, 80000]
    # Untouched keys keep their defaults.
    assert cfg.MODEL.RPN.NMS_THRESH == 0.7


def test_single_value_for_a_list_key_becomes_a_list(tmp_path):
    path = write(tmp_path / "a.yaml", "INPUT:\n  MIN_SIZE_TRAIN: 600\n")
    assert list(load_config(path).INPUT.MIN_SIZE_TRAIN) == [600]


def test_empty_yaml_gives_defaults(tmp_path):
    """A file without VERSION: maskrcnn_benchmark's defaults; with VERSION 2: ours."""
    assert load_config(write(tmp_path / "empty.yaml", "")) == load_config(None, ["VERSION", "1"])
    assert load_config(write(tmp_path / "ours.yaml", "VERSION: 2\n")) == get_cfg()


def test_base_inheritance_is_recursive_and_relative(tmp_path):
    write(
        tmp_path / "bases" / "root.yaml", "MODEL:\n  RPN:\n    NMS_THRESH: 0.5\n    MIN_SIZE: 2\n"
    )
    write(
        tmp_path / "bases" / "mid.yaml",
        "_BASE_: root.yaml\nMODEL:\n  RPN:\n    MIN_SIZE: 4\n  MASK_ON: true\n",
    )
    child = write(tmp_path / "child.yaml", "_BASE_: bases/mid.yaml\nMODEL:\n  MASK_ON: false\n")
    cfg = load_config(child)
    assert cfg.MODEL.RPN.NMS_THRESH == 0.5  # from root
    assert cfg.MODEL.RPN.MIN_SIZE == 4  # mid overrides root
    assert cfg.MODEL.MASK_ON is False  # child overrides mid


def test_base_list(tmp_path):
    write(tmp_path / "a.yaml", "SOLVER:\n  BASE_LR: 0.1\n  MAX_ITER: 10\n")
    write(tmp_path / "b.yaml", "SOLVER:\n  MAX_ITER: 20\n")
    child = write(tmp_path / "c.yaml", "_BASE_: [a.yaml, b.yaml]\n")
    cfg = load_config(child)
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER) == (0.1, 20)


def test_base_cycle_is_detected(tmp_path):
    write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    write(tmp_path / "b.yaml", "_BASE_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle.*a.yaml.*b.yaml.*a.yaml"):
        load_config(tmp_path / "a.yaml")


def test_self_base_is_a_cycle(tmp_path):
    write(tmp_path / "a.yaml", "_BASE_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found.*nowhere.yaml"):
        load_config(tmp_path / "nowhere.yaml")


def test_missing_base_file_is_named(tmp_path):
    child = write(tmp_path / "child.yaml", "_BASE_: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"child.yaml.*_BASE_ file not found: gone.yaml"):
        load_config(child)


def test_python_tags_are_refused(tmp_path):
    path = write(tmp_path / "evil.yaml", "MODEL: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match=r"evil.yaml.*safe_load.*!!python/object"):
        load_config(path)


def test_invalid_yaml_names_the_file(tmp_path):
    path = write(tmp_path / "broken.yaml", "MODEL:\n  RPN: [1\n")
    with pytest.raises(ConfigError, match="broken.yaml.*not valid YAML"):
        load_config(path)


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml.*mapping"):
        load_config(path)


# ------------------------------------------------------------------------------------------
# Errors: unknown keys and wrong types
# ------------------------------------------------------------------------------------------
def test_unknown_key_in_file_names_closest_key_and_file(tmp_path):
    path = write(tmp_path / "typo.yaml", "MODEL:\n  RPN:\n    NMS_TRESH: 0.6\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "typo.yaml" in message
    assert "MODEL.RPN.NMS_TRESH" in message
    assert "did you mean MODEL.RPN.NMS_THRESH?" in message


def test_unknown_key_in_base_names_the_base_file(tmp_path):
    write(tmp_path / "base.yaml", "SOLVER:\n  BASE_LRR: 0.1\n")
    child = write(tmp_path / "child.yaml", "_BASE_: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base.yaml.*did you mean SOLVER.BASE_LR\?"):
        load_config(child)


def test_unknown_key_on_command_line():
    with pytest.raises(ConfigError, match="command line.*did you mean MODEL.RPN.NMS_THRESH"):
        load_config(None, ["MODEL.RPN.NMS_TRESH", "0.6"])


def test_unknown_group_suggests_the_full_key():
    with pytest.raises(ConfigError, match="did you mean MODEL.RPN.NMS_THRESH"):
        load_config(None, ["MODEL.RPNN.NMS_THRESH", "0.6"])


def test_moved_key_suggests_its_new_place():
    with pytest.raises(ConfigError, match="did you mean MODEL.ROI_HEADS.SCORE_THRESH"):
        load_config(None, ["MODEL.SCORE_THRESH", "0.1"])


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(ConfigError, match="valid keys under MODEL: .*BACKBONE"):
        load_config(None, ["MODEL.XYZZYQWERTY", "1"])


def test_wrong_type_names_key_value_and_expected_type(tmp_path):
    path = write(tmp_path / "t.yaml", "MODEL:\n  RPN:\n    PRE_NMS_TOP_N_TRAIN: lots\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "t.yaml" in message
    assert "MODEL.RPN.PRE_NMS_TOP_N_TRAIN" in message
    assert "'lots'" in message
    assert "expected int" in message


def test_wrong_type_in_list_item():
    with pytest.raises(ConfigError, match=r"ANCHOR_SIZES\[1\] = 'x'.*expected float"):
        load_config(None, ["MODEL.RPN.ANCHOR_SIZES", "[32, x]"])


def test_wrong_choice_lists_the_choices():
    with pytest.raises(ConfigError, match="NORM = 'LN'.*one of FrozenBN, BN, SyncBN, GN"):
        load_config(None, ["MODEL.RESNETS.NORM", "LN"])


def test_bool_for_float_is_refused():
    with pytest.raises(ConfigError, match="SOLVER.BASE_LR = True.*expected float"):
        load_config(None, ["SOLVER.BASE_LR", "true"])


def test_value_for_a_group_is_refused():
    with pytest.raises(ConfigError, match="MODEL.RPN is a group of keys"):
        load_config(None, ["MODEL.RPN", "1"])


def test_inconsistent_values_are_refused():
    with pytest.raises(ConfigError, match="SOLVER.STEPS = \\[300, 200\\].*increasing"):
        load_config(None, ["SOLVER.STEPS", "(300, 200)"])
    with pytest.raises(ConfigError, match="STAGE_WITH_DCN.*4"):
        load_config(None, ["MODEL.RESNETS.STAGE_WITH_DCN", "(True, False)"])


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------
def test_command_line_overrides_file(tmp_path):
    path = write(tmp_path / "a.yaml", "MODEL:\n  RPN:\n    NMS_THRESH: 0.5\n")
    cfg = load_config(
        str(path),
        [
            "MODEL.RPN.NMS_THRESH", "0.6",
            "INPUT.MIN_SIZE_TRAIN", "(640, 800)",
            "MODEL.MASK_ON", "True",
            "OUTPUT_DIR", "/tmp/run 1",
            "MODEL.RESNETS.STAGE_WITH_DCN", "[false, true, true, true]",
            "DATASETS.TRAIN", "('a', 'b')",
            "SOLVER.BASE_LR", "1e-3",
        ],
    )  # fmt: skip
    assert cfg.MODEL.RPN.NMS_THRESH == 0.6
    assert list(cfg.INPUT.MIN_SIZE_TRAIN) == [640, 800]
    assert cfg.MODEL.MASK_ON is True
    assert cfg.OUTPUT_DIR == "/tmp/run 1"
    assert list(cfg.MODEL.RESNETS.STAGE_WITH_DCN) == [False, True, True, True]
    assert list(cfg.DATASETS.TRAIN) == ["a", "b"]
    assert cfg.SOLVER.BASE_LR == pytest.approx(1e-3)


def test_one_element_tuple_and_empty_tuple():
    cfg = load_config(None, ["INPUT.MIN_SIZE_TRAIN", "(800,)", "DATASETS.TEST", "()"])
    assert list(cfg.INPUT.MIN_SIZE_TRAIN) == [800]
    assert list(cfg.DATASETS.TEST) == []


def test_odd_number_of_opts_is_an_error():
    with pytest.raises(ConfigError, match="odd number"):
        load_config(None, ["MODEL.RPN.NMS_THRESH"])


# ------------------------------------------------------------------------------------------
# Read-only, explicit changes, dumps
# ------------------------------------------------------------------------------------------
def test_loaded_config_is_read_only():
    cfg = load_config(None)
    with pytest.raises(ReadonlyConfigError):
        cfg.MODEL.RPN.NMS_THRESH = 0.1
    with pytest.raises(ReadonlyConfigError):
        cfg.INPUT.MIN_SIZE_TRAIN.append(1)


def test_unlocked_allows_checked_changes():
    cfg = load_config(None)
    with unlocked(cfg):
        cfg.MODEL.RPN.NMS_THRESH = 0.1
        with pytest.raises(ValidationError):
            cfg.MODEL.RPN.NMS_THRESH = "high"
    assert cfg.MODEL.RPN.NMS_THRESH == 0.1
    with pytest.raises(ReadonlyConfigError):
        cfg.MODEL.RPN.NMS_THRESH = 0.2


def test_merge_opts_returns_a_changed_read_only_copy():
    cfg = load_config(None)
    new = merge_opts(cfg, ["SOLVER.MAX_ITER", "5"])
    assert new.SOLVER.MAX_ITER == 5
    assert cfg.SOLVER.MAX_ITER == 40000
    with pytest.raises(ReadonlyConfigError):
        new.SOLVER.MAX_ITER = 6


def test_dump_loads_back_unchanged(tmp_path):
    cfg = load_config(
        None,
        [
            "MODEL.RPN.SMOOTH_L1_BETA", "0.1111111111111111",
            "MODEL.RESNETS.NORM", "GN",
            "SOLVER.AMP.DTYPE", "bfloat16",
            "SOLVER.BASE_LR", "1e-5",
            "DATASETS.TRAIN", "('coco_2017_train',)",
            "TEST.EXPECTED_RESULTS", "[['bbox', 'AP', 0.37, 0.01]]",
            "MODEL.WEIGHT", "'123'",
            "OUTPUT_DIR", "'yes'",
        ],
    )  # fmt: skip
    text = dump_config(cfg)
    assert "NMS_THRESH: 0.7" in text
    path = tmp_path / "out" / "config.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert dump_config(again) == text
    assert again.MODEL.WEIGHT == "123" and again.OUTPUT_DIR == "yes"


def test_defaults_dump_loads_back_unchanged(tmp_path):
    cfg = get_cfg()
    save_config(cfg, tmp_path / "d.yaml")
    assert load_config(tmp_path / "d.yaml") == cfg


def test_unknown_top_level_group_lists_top_level_keys():
    with pytest.raises(ConfigError, match="valid keys under the top level: DATALOADER, DATASETS"):
        load_config(None, ["XYZZYQWERTY.ABCDEFG", "1"])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("SOLVER.BASE_LR", "nan", "SOLVER.BASE_LR = nan: must be a finite number"),
        ("SOLVER.BASE_LR", "-0.1", "SOLVER.BASE_LR = -0.1: must be > 0"),
        ("SOLVER.MAX_ITER", "-5", "SOLVER.MAX_ITER = -5: must be > 0"),
        ("SOLVER.IMS_PER_BATCH", "0", "SOLVER.IMS_PER_BATCH = 0: must be > 0"),
        ("INPUT.MIN_SIZE_TRAIN", "(0,)", "INPUT.MIN_SIZE_TRAIN[0] = 0: must be > 0"),
        ("INPUT.MIN_SIZE_TRAIN", "(640, -800)", "INPUT.MIN_SIZE_TRAIN[1] = -800: must be > 0"),
        ("MODEL.RPN.ANCHOR_SIZES", "(32, inf)", "MODEL.RPN.ANCHOR_SIZES[1] = inf: must be a fin"),
        ("SOLVER.MOMENTUM", "1.5", "SOLVER.MOMENTUM = 1.5: must lie in [0, 1]"),
        ("MODEL.ROI_HEADS.NMS", "-0.5", "MODEL.ROI_HEADS.NMS = -0.5: must lie in [0, 1]"),
        ("SOLVER.WEIGHT_DECAY", "-1.0", "SOLVER.WEIGHT_DECAY = -1.0: must be >= 0"),
        ("DATALOADER.NUM_WORKERS", "-2", "DATALOADER.NUM_WORKERS = -2: must be >= 0"),
        ("SEED", "-2", "SEED = -2: must be >= -1"),
    ],
)
def test_numeric_ranges_are_checked_when_loading(key, value, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [key, value])
    assert str(info.value).startswith(message)


def test_special_minus_one_values_and_every_shipped_config_load():
    load_config(None, ["SEED", "-1", "MODEL.RPN.STRADDLE_THRESH", "-1"])
    root = Path(__file__).resolve().parents[2] / "configs"
    for path in sorted(root.rglob("*.yaml")):
        load_config(path)


def test_an_empty_value_means_none(tmp_path):
    """Issue 19, item 3: `MODEL.WEIGHT ''` on the command line was 'MODEL.WEIGHT = null has the
    wrong type: expected str' (only '""' worked); a key left empty in a file did the same."""
    path = tmp_path / "c.yaml"
    path.write_text("MODEL:\n  WEIGHT:\nDATASETS:\n  TEST:\n")
    cfg = load_config(path, ["OUTPUT_DIR", "", "DATASETS.TRAIN", ""])
    assert cfg.MODEL.WEIGHT == "" and cfg.OUTPUT_DIR == ""
    assert list(cfg.DATASETS.TRAIN) == [] and list(cfg.DATASETS.TEST) == []
    assert load_config(None, ["MODEL.WEIGHT", "''"]).MODEL.WEIGHT == ""
