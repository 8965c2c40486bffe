"""The command line every tool shares (issue 19, items 2-5): one `error:` line per user error
without a traceback (`--debug` / DETECTOR_DEBUG=1 show it), `--num-threads` everywhere, KEY VALUE
overrides anywhere, and an empty value meaning "none"."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import detector.modeling.detector  # noqa: F401  (fills the registries)
import detector.modeling.roi_heads.poolers  # noqa: F401
from detector.engine.launch import default_argument_parser, split_overrides
from detector.modeling.registry import BACKBONES, POOLERS
from tests.tools.cli import assert_user_error, run_tool

SHAPES = "configs/shapes/mask_rcnn_R_18_FPN_shapes.yaml"
TOOLS = ("train", "test", "demo", "export", "convert_weights", "run_main_job", "check_dataset")


def _known(registry) -> str:
    return ", ".join(sorted(registry))


@pytest.mark.parametrize(
    ("key", "typo", "message"),
    [
        (
            "MODEL.ROI_BOX_HEAD.POOLER_TYPE",
            "ROIAlgn",
            "MODEL.ROI_BOX_HEAD/ROI_MASK_HEAD.POOLER_TYPE registry: unknown name 'ROIAlgn'. "
            f"Did you mean 'ROIAlign'? Known names: {_known(POOLERS)}",
        ),
        (
            "MODEL.BACKBONE.CONV_BODY",
            "R-18-FPNN",
            "MODEL.BACKBONE.CONV_BODY registry: unknown name 'R-18-FPNN'. Did you mean "
            f"'R-18-FPN'? Known names: {_known(BACKBONES)}",
        ),
    ],
)
def test_registry_typo_is_one_error_line(tmp_path: Path, key: str, typo: str, message: str):
    """Was: the right hint inside a 30-line KeyError traceback."""
    run = run_tool("train", "--config-file", SHAPES, key, typo, "OUTPUT_DIR", tmp_path)
    assert_user_error(run, f"error: {message}")


@pytest.mark.parametrize("env", [{}, {"DETECTOR_DEBUG": "1"}])
def test_debug_shows_the_traceback(tmp_path: Path, env: dict[str, str]) -> None:
    debug_flag = [] if env else ["--debug"]
    argv = ["--config-file", SHAPES, "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlgn"]
    run = run_tool("train", *argv, *debug_flag, "OUTPUT_DIR", tmp_path, env=env)
    assert run.returncode == 1
    assert "Traceback" in run.stderr and "UnknownNameError" in run.stderr
    assert run.stderr.splitlines()[-1].startswith(
        "error: MODEL.ROI_BOX_HEAD/ROI_MASK_HEAD.POOLER_TYPE registry: unknown name"
    )


def test_config_error_exits_2(tmp_path: Path) -> None:
    run = run_tool("test", "--config-file", SHAPES, "SOLVER.BASE_LRR", "1")
    message = "error: command line (SOLVER.BASE_LRR): unknown config key SOLVER.BASE_LRR; did you "
    assert_user_error(run, message + "mean SOLVER.BASE_LR?", status=2)


def test_empty_value_means_none_on_the_command_line(tmp_path: Path) -> None:
    """Was: `MODEL.WEIGHT ''` -> 'MODEL.WEIGHT = null has the wrong type: expected str'."""
    argv = ["--config-file", SHAPES, "MODEL.WEIGHT", "", "--output", tmp_path / "m.pth"]
    run = run_tool("export", *argv)
    message = (
        "error: MODEL.WEIGHT is empty: give the checkpoint to export, e.g. "
        "MODEL.WEIGHT output/model_final.pth"
    )
    assert_user_error(run, message, status=2)


@pytest.mark.parametrize("name", TOOLS)
def test_every_tool_has_the_common_flags(name: str) -> None:
    """Was: --num-threads only in run_main_job.py, though the README recommends it."""
    run = run_tool(name, "--help")
    assert run.returncode == 0, run.stderr
    for flag in ("--config-file", "--num-threads", "--debug", "KEY VALUE"):
        assert flag in run.stdout, (name, flag)


def test_num_threads_is_applied(tmp_path: Path) -> None:
    from tests.export.tiny_model import load_tool

    threads = torch.get_num_threads()
    try:
        status = load_tool("test").main(
            ["--config-file", SHAPES, "--num-threads", "1", "DATASETS.TEST", "()"]
            + ["OUTPUT_DIR", str(tmp_path)]
        )
        assert status == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_overrides_stand_anywhere() -> None:
    parser = default_argument_parser("t", "A 1", config_required=False)
    parser.add_argument("--input", nargs="+")
    argv = [
        "SEED",
        "-1",
        "--input",
        "a.jpg",
        "b/",
        "MODEL.WEIGHT",
        "",
        "--debug",
        "OUTPUT_DIR",
        "o",
    ]
    args = parser.parse_args(argv)
    assert args.input == ["a.jpg", "b/"] and args.debug
    assert args.opts == ["SEED", "-1", "MODEL.WEIGHT", "", "OUTPUT_DIR", "o"]
    typo = ["--output", "x", "MODLE.WEIGHT", "m"]
    assert split_overrides(typo) == ([], typo)
    assert parser.parse_args(["MODLE.WEIGHT", "m"]).opts == ["MODLE.WEIGHT", "m"]  # load_config


def test_weights_and_dataset_errors_are_one_line(tmp_path: Path) -> None:
    """The other kinds of user error the tools detect: a weights file, a dataset name."""
    missing = tmp_path / "nope.pth"
    out = ["OUTPUT_DIR", tmp_path]
    run = run_tool("test", "--config-file", SHAPES, "MODEL.WEIGHT", missing, *out)
    assert_user_error(run, f"error: weights file not found: {missing} (MODEL.WEIGHT)")
    run = run_tool("train", "--config-file", SHAPES, "DATASETS.TEST", "[shapes_vall]", *out)
    assert run.error_lines[0].startswith(
        "error: test dataset 'shapes_vall' (DATASETS.TEST): unknown dataset 'shapes_vall'. "
        "Did you mean 'shapes_val'?"
    )
    assert_user_error(run, run.error_lines[0])
