"""tools/export.py (slim) and tools/demo.py end to end on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from tests.export.tiny_model import TinyRun
from tests.export.tiny_model import load_tool as _tool


def test_export_tool_writes_a_slim_checkpoint(tiny_run: TinyRun, tmp_path: Path, capsys) -> None:
    export = _tool("export")
    out = tmp_path / "model_final_slim.pth"
    argv = ["--config-file", str(tiny_run.config_file), "MODEL.WEIGHT", str(tiny_run.checkpoint)]
    assert export.main([*argv, "--output", str(out), "--fp16"]) == 0
    assert "float16" in capsys.readouterr().out
    data = torch.load(out, weights_only=True)
    assert data["meta"]["dtype"] == "float16" and "optimizer" not in data


def test_export_tool_errors(tiny_run: TinyRun, tmp_path: Path, capsys) -> None:
    export = _tool("export")
    out = str(tmp_path / "x.pth")
    assert export.main(["--config-file", str(tiny_run.config_file), "--output", out]) == 2
    assert "MODEL.WEIGHT is empty" in capsys.readouterr().err
    missing = ["MODEL.WEIGHT", str(tmp_path / "nope.pth")]
    assert export.main(["--config-file", str(tiny_run.config_file), *missing, "--output", out]) == 1
    assert "nope.pth" in capsys.readouterr().err


def test_demo_writes_pictures_and_predictions(tiny_run: TinyRun, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 256, (90, 120, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.randint(0, 256, (70, 50, 3), dtype=np.uint8)).save(folder / "b.jpg")
    single = tmp_path / "c.jpg"
    Image.fromarray(rng.randint(0, 256, (64, 64, 3), dtype=np.uint8)).save(single)
    out = tmp_path / "out"
    demo = _tool("demo")
    argv = ["--config-file", str(tiny_run.config_file), "--weights", str(tiny_run.checkpoint)]
    argv += ["--input", str(folder), str(single), "--output", str(out), "--score-thresh", "0.0"]
    assert demo.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.jpg", "c.jpg", "predictions.json"]
    with Image.open(out / "a.png") as drawn:
        assert drawn.size == (120, 90)
        pixels = np.asarray(drawn.convert("RGB"))
    original = np.asarray(Image.open(folder / "a.png").convert("RGB"))
    assert (pixels != original).any()  # something was drawn
    records = json.loads((out / "predictions.json").read_text())
    assert [Path(r["file_name"]).name for r in records] == ["a.png", "b.jpg", "c.jpg"]
    first = records[0]
    assert (first["height"], first["width"]) == (90, 120) and len(first["detections"]) > 0
    detection = first["detections"][0]
    assert detection["class_name"] == f"class_{detection['label']}"
    x1, y1, x2, y2 = detection["bbox_xyxy"]
    assert 0 <= x1 <= x2 <= 120 and 0 <= y1 <= y2 <= 90
    rle = detection["segmentation"]
    assert mask_util.decode({**rle, "counts": rle["counts"].encode()}).shape == (90, 120)


def test_demo_without_images_fails_clearly(tiny_run: TinyRun, tmp_path: Path, capsys) -> None:
    demo = _tool("demo")
    argv = ["--weights", str(tiny_run.checkpoint), "--input", str(tmp_path / "nothing")]
    assert demo.main([*argv, "--output", str(tmp_path / "o")]) == 1
    assert "nothing: no such file or folder" in capsys.readouterr().err


@pytest.mark.parametrize("threshold", [0.0, 1.1])
def test_demo_score_threshold(tiny_run: TinyRun, tmp_path: Path, threshold: float) -> None:
    Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8)).save(tmp_path / "z.png")
    demo = _tool("demo")
    argv = ["--config-file", str(tiny_run.config_file), "--weights", str(tiny_run.checkpoint)]
    argv += ["--input", str(tmp_path / "z.png"), "--output", str(tmp_path / "o")]
    assert demo.main([*argv, "--score-thresh", str(threshold)]) == 0
    (record,) = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert (len(record["detections"]) == 0) == (threshold > 1)


def test_demo_takes_bare_overrides_for_a_slim_checkpoint(tiny_run: TinyRun, tmp_path: Path):
    """Was: `--opts KEY VALUE` (unlike every other tool), refused without --config-file."""
    slim = tmp_path / "slim.pth"
    argv = ["--config-file", str(tiny_run.config_file), "MODEL.WEIGHT", str(tiny_run.checkpoint)]
    assert _tool("export").main([*argv, "--output", str(slim)]) == 0
    rng = np.random.RandomState(1)
    Image.fromarray(rng.randint(0, 256, (90, 120, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    demo = _tool("demo")
    counts = []
    for opts in ([], ["MODEL.ROI_HEADS.DETECTIONS_PER_IMG", "1"]):
        out = tmp_path / f"out{len(opts)}"
        argv = ["--weights", str(slim), *opts, "--input", str(tmp_path / "a.png")]
        assert demo.main([*argv, "--output", str(out), "--score-thresh", "0"]) == 0
        (record,) = json.loads((out / "predictions.json").read_text())
        counts.append(len(record["detections"]))
    assert counts[0] > 1 and counts[1] == 1


def test_demo_on_a_missing_gpu_is_one_error_line(tiny_run: TinyRun, tmp_path: Path) -> None:
    """A sibling of issue 19's item 2: `--device cuda` without a GPU was a raw traceback."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    from tests.tools.cli import assert_user_error, run_tool

    Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8)).save(tmp_path / "z.png")
    argv = ["--config-file", tiny_run.config_file, "--weights", tiny_run.checkpoint]
    argv += ["--input", tmp_path / "z.png", "--output", tmp_path / "o", "--device", "cuda"]
    message = "error: --device is 'cuda' but no CUDA GPU is visible; use --device cpu to run on "
    assert_user_error(run_tool("demo", *argv), message + "the CPU")
