"""benchmarks/accuracy.py compares like with like: the torchvision model it builds is our
config's network (same parameter count, per-module), its learning-rate schedule is ours, and its
adapter hands our evaluation what our own model would."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import accuracy
from detector.modeling.detector import GeneralizedRCNN
from detector.modeling.postprocessing import detector_postprocess
from detector.solver import build_lr_scheduler, build_optimizer


@pytest.mark.parametrize("dataset", ["bccd", "dsb2018"])
def test_same_network_on_both_sides(dataset: str, tmp_path: Path):
    cfg = accuracy.load_cfg(dataset, seed=1, iters=40, out=tmp_path, ours_opts=[])
    ours = GeneralizedRCNN.from_config(cfg)
    theirs = accuracy.build_torchvision(cfg)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(theirs)
    assert count(ours.backbone) == count(theirs.backbone)
    norms = lambda m: sum(isinstance(x, torch.nn.GroupNorm) for x in m.modules())  # noqa: E731
    assert norms(ours.backbone) == norms(theirs.backbone) > 0


def test_same_learning_rate_schedule(tmp_path: Path):
    cfg = accuracy.load_cfg("bccd", seed=1, iters=40, out=tmp_path, ours_opts=[])
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    for it in range(40):
        expected = cfg.SOLVER.BASE_LR * accuracy._lr_factor(cfg, it)
        for group in optimizer.param_groups:  # bias and weight: one lr, one weight decay
            assert group["lr"] == pytest.approx(expected, rel=1e-9)
            assert group["weight_decay"] == pytest.approx(cfg.SOLVER.WEIGHT_DECAY)
        optimizer.step()
        scheduler.step()


def test_torchvision_adapter_returns_our_instances(tmp_path: Path):
    cfg = accuracy.load_cfg("dsb2018", seed=1, iters=40, out=tmp_path, ours_opts=[])
    torch.manual_seed(0)
    model = accuracy.TorchvisionAsOurs(accuracy.build_torchvision(cfg)).eval()
    images = [torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)]
    with torch.no_grad():
        (result,) = model(images)
    assert result.image_size == (256, 384)  # torchvision's transform resized it to the test size
    k = len(result)
    assert k > 0
    assert result.pred_boxes.tensor.shape == (k, 4)
    assert result.pred_masks.shape == (k, 1, 28, 28) and result.pred_masks.is_floating_point()
    assert 0.0 <= float(result.pred_masks.min()) <= float(result.pred_masks.max()) <= 1.0
    mapped = detector_postprocess(result, 64, 96)  # what our inference loop does with it
    assert mapped.pred_masks.shape == (k, 64, 96) and mapped.pred_masks.dtype == torch.bool


def test_both_sides_train_and_are_scored_then_reported(
    tmp_path: Path, shared_data: Path, one_thread: None, capsys: pytest.CaptureFixture[str]
):
    """The whole path of a benchmark run, tiny: one iteration per side at 96x160 on the chess
    pieces, scored on their 30 test images, then the report with its ratios."""
    tiny = ["INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "160"]
    tiny += ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160"]
    records = []
    for side in ("ours", "torchvision"):
        cfg = accuracy.load_cfg("chess", seed=1, iters=1, out=tmp_path / side, ours_opts=tiny)
        record = accuracy.train_and_evaluate(side, cfg)
        assert 0.0 <= record["metrics"]["bbox/AP"] <= 1.0
        assert record["s_per_iter"] > 0 and record["peak_rss_mb"] > 0
        records.append({"side": side, "seed": 1, **record})
    # ResNet-18 FPN, 15 classes (the chess pieces' 14 ids and the background), on both sides
    assert records[0]["params"] == records[1]["params"] == 28_350_106
    accuracy.report(records)
    printed = capsys.readouterr().out
    assert "| ours | mean |" in printed and "| torchvision | mean |" in printed
    assert "ratios ours/torchvision: time per iteration" in printed
