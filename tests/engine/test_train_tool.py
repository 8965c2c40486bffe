"""tools/train.py: argument parsing and user errors."""

import importlib.util
import json
import sys
import types
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


def _fake_data_module():
    """Stands in for detector.data: two 96x128 images with one box each, forever."""
    import torch

    from detector.structures import Boxes, Instances

    def build_train_loader(cfg, start_iter=0):
        g = torch.Generator().manual_seed(start_iter)
        while True:
            images = [torch.randint(0, 256, (3, 96, 128), generator=g, dtype=torch.uint8)] * 2
            box = Boxes(torch.tensor([[10.0, 12.0, 60.0, 70.0]]))
            targets = [Instances((96, 128), gt_boxes=box, gt_classes=torch.tensor([1]))] * 2
            yield images, targets, [{}, {}]

    module = types.ModuleType("detector.data")
    module.build_train_loader = build_train_loader
    return module


def test_cli_run_with_rpn_only_model(tool, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "detector.data", _fake_data_module())
    cfg = tmp_path / "rpn.yaml"
    cfg.write_text(
        "MODEL:\n  DEVICE: cpu\n  RPN_ONLY: true\n  BACKBONE:\n    CONV_BODY: R-18-C4\n"
        "  RESNETS:\n    RES2_OUT_CHANNELS: 64\n    BACKBONE_OUT_CHANNELS: 256\n"
        "SOLVER:\n  MAX_ITER: 2\n  WARMUP_ITERS: 1\n  CHECKPOINT_PERIOD: 1\n"
        "  MAX_CHECKPOINTS_KEPT: 1\n"
        "SEED: 3\n"
    )
    out = tmp_path / "run"
    assert tool.main(["--config-file", str(cfg), "OUTPUT_DIR", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"final weights: {out / 'model_final.pth'}" in printed
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        ".lock", "config.yaml", "last_checkpoint", "log.txt", "metrics.jsonl", "model_0000001.pth",
        "model_final.pth", "tensorboard",
    ]  # fmt: skip
    assert "OUTPUT_DIR: " + str(out) in (out / "config.yaml").read_text()
    # the suite's DETECTOR_CPU_BFLOAT16=0 (tests/conftest.py): the default auto resolved to float32
    expected = "model computes in float32, NCHW (MODEL.PRECISION auto: the CPU has no native"
    assert expected in (out / "log.txt").read_text()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2]
    assert {"loss_objectness", "loss_rpn_box_reg"} <= set(records[0])

    # --resume from a finished run trains nothing more and keeps the final weights' iteration.
    assert tool.main(["--config-file", str(cfg), "--resume", "OUTPUT_DIR", str(out)]) == 0
    assert "resuming at iteration 2" in (out / "log.txt").read_text()
