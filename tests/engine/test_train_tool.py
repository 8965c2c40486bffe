"""tools/train.py: argument parsing and user errors."""

import importlib.util
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "train.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("train_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_args(tool):
    args = tool.parse_args(["--config-file", "a.yaml", "--resume", "SOLVER.BASE_LR", "0.1"])
    assert args.config_file == "a.yaml" and args.resume
    assert args.opts == ["SOLVER.BASE_LR", "0.1"]


def test_missing_config_file(tool, tmp_path, capsys):
    assert tool.main(["--config-file", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_bad_override(tool, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("SOLVER:\n  BASE_LR: 0.1\n")
    assert tool.main(["--config-file", str(cfg), "SOLVER.BASE_LRR", "1"]) == 2
    assert "did you mean SOLVER.BASE_LR" in capsys.readouterr().err
