"""benchmarks/accuracy.py compares like with like: the torchvision model it builds is our
config's network (same parameter count, per-module), its learning-rate schedule is ours, and its
adapter hands our evaluation what our own model would."""

from __future__ import annotations

import json
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


TINY = ["INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "160"]


class _Stop(Exception):
    """Stands for the kill that ends a session mid-run."""


def test_torchvision_loop_resumes_where_it_stopped(
    tmp_path: Path, shared_data: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
):
    """Stopped after its state at iteration 2 and resumed, the torchvision loop ends with the
    weights of an uninterrupted 4-iteration run, bit for bit (same batches, same sampler draws)."""
    monkeypatch.setattr(accuracy, "CHECKPOINT_PERIOD", 2)

    def run(out: Path, resume: bool) -> tuple[torch.nn.Module, list[float], bool]:
        cfg = accuracy.load_cfg("chess", seed=1, iters=4, out=out, ours_opts=TINY)
        torch.manual_seed(0)
        return accuracy.train_torchvision(cfg, resume)

    whole, seconds, resumed = run(tmp_path / "whole", resume=True)  # nothing to resume from
    assert not resumed and len(seconds) == 4

    targets, calls = accuracy._tv_targets, []

    def stop_in_third_iteration(*args: object) -> object:
        calls.append(1)
        if len(calls) == 3:
            raise _Stop
        return targets(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(accuracy, "_tv_targets", stop_in_third_iteration)
    with pytest.raises(_Stop):
        run(tmp_path / "parts", resume=True)
    monkeypatch.setattr(accuracy, "_tv_targets", targets)
    state = torch.load(tmp_path / "parts" / accuracy.TV_STATE, weights_only=True)
    assert state["iteration"] == 2 and len(state["seconds"]) == 2

    parts, seconds, resumed = run(tmp_path / "parts", resume=True)
    assert resumed and len(seconds) == 4
    expected = whole.state_dict()
    for name, value in parts.state_dict().items():
        assert torch.equal(value, expected[name]), name
    # without --resume a folder's state is ignored: a fresh run, the uninterrupted one again
    fresh, _, resumed = run(tmp_path / "parts", resume=False)
    assert not resumed
    assert all(torch.equal(v, expected[k]) for k, v in fresh.state_dict().items())


def test_iteration_seconds_keeps_the_last_record_of_a_repeated_iteration():
    lines = [
        {"iteration": 1, "time": 1.0, "loss": 2.0},
        {"iteration": 2, "time": 2.0},
        {"iteration": 3, "time": 3.0},
        {"iteration": 2, "time": 20.0},  # resumed after a checkpoint at 1: 2 and 3 again
        {"iteration": 3, "time": 30.0},
        {"iteration": 3, "bbox/AP": 0.5},  # an evaluation record: no time
    ]
    text = "\n".join(json.dumps(line) for line in lines)
    assert accuracy.iteration_seconds(text) == [1.0, 20.0, 30.0]


def _result(out: Path, side: str, iters: int) -> None:
    out.mkdir(parents=True)
    record = dict(
        side=side, dataset="chess", seed=1, iters=iters, ours_opts=[], tv_flush_denormals=True,
        s_per_iter=1.0, peak_rss_mb=100.0, params=1, metrics={"bbox/AP": 0.5},
    )  # fmt: skip
    (out / "result.json").write_text(json.dumps(record))


def test_resume_skips_finished_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    for side in ("ours", "torchvision"):
        _result(tmp_path / "chess" / "seed1" / side, side, iters=4)
    argv = ["--dataset", "chess", "--seeds", "1", "--iters", "4", "--out", str(tmp_path)]
    assert accuracy.main([*argv, "--resume"]) == 0  # nothing left to train: no child started
    assert not (tmp_path / "chess" / "seed1" / "ours" / "run.log").exists()
    assert "| ours | mean | 0.500 |" in capsys.readouterr().out


def test_resume_refuses_a_folder_of_another_run(tmp_path: Path):
    out = tmp_path / "chess" / "seed1" / "ours"
    out.mkdir(parents=True)
    other = dict(side="ours", dataset="chess", seed=1, iters=8, ours_opts=[])
    (out / "run_args.json").write_text(json.dumps({**other, "tv_flush_denormals": True}))
    argv = ["--dataset", "chess", "--seeds", "1", "--iters", "4", "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"--resume: .*seed1/ours holds a run of other arguments"):
        accuracy.main([*argv, "--sides", "ours", "--resume"])
