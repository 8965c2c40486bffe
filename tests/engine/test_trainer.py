"""Trainer on a toy model: metrics files, schedule, accumulation, clipping, AMP, NaN stop, hooks,
and an in-process interrupted-and-resumed run."""

import errno
import json
import logging
import math
import os
import re
import signal

import pytest
import torch

from detector.config import unlocked
from detector.engine import HookBase, Trainer, TrainingDivergedError, train
from detector.engine.launch import seed_all
from detector.utils.logger import setup_logger
from detector.utils.signals import Interrupted
from tests.engine.toy import ToyModel, toy_cfg, toy_loader


def _trainer(tmp_path, model=None, loader=None, solver=None, **overrides) -> Trainer:
    torch.manual_seed(0)
    model = model if model is not None else ToyModel(dropout=0.0)
    cfg = toy_cfg(tmp_path, **(solver or {}))
    overrides.setdefault("tensorboard", False)
    overrides.setdefault("progress_bar", False)
    return Trainer.from_config(cfg, model=model, data_loader=loader or toy_loader(), **overrides)


def _read_metrics(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_jsonl_every_iteration_with_schedule(tmp_path):
    trainer = _trainer(tmp_path, tensorboard=True)
    trainer.train()
    records = _read_metrics(tmp_path / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5, 6]
    for r in records:
        assert {"loss", "loss_a", "loss_b", "lr", "time", "data_time", "memory_mb"} <= set(r)
        assert r["loss"] == pytest.approx(r["loss_a"] + r["loss_b"])
    # BASE_LR 0.05, linear warm-up over 2 iterations from 1/3, x0.1 at iteration 4.
    expected = [0.05 / 3, 0.05 * (1 / 3 * 0.5 + 0.5), 0.05, 0.05, 0.005, 0.005]
    assert [r["lr"] for r in records] == pytest.approx(expected)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"loss", "loss_a", "loss_b", "lr", "time", "data_time"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("lr")] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in events.Scalars("lr")] == pytest.approx(expected)
    names = sorted(p.name for p in tmp_path.glob("model_*.pth"))
    assert names == ["model_0000002.pth", "model_0000004.pth", "model_final.pth"]


def test_loss_decreases_on_a_fixed_batch(tmp_path):
    def same_batch(start):
        batch = next(toy_loader()(0))
        while True:
            yield batch

    solver = {"BASE_LR": 0.01, "STEPS": [1000], "MAX_ITER": 60, "CHECKPOINT_PERIOD": 0}
    _trainer(tmp_path, loader=same_batch, solver=solver).train()
    losses = [r["loss"] for r in _read_metrics(tmp_path / "metrics.jsonl")]
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])


def test_nan_loss_stops_naming_iteration_and_term(tmp_path):
    trainer = _trainer(tmp_path, model=ToyModel(dropout=0.0, nan_at_call=3))
    with pytest.raises(TrainingDivergedError, match=r"iteration 3: loss_b = nan"):
        trainer.train()
    assert not (tmp_path / "model_final.pth").exists()


def test_gradient_accumulation_matches_full_batch(tmp_path):
    torch.manual_seed(0)  # both toy models start from the same weights
    full = _trainer(
        tmp_path / "full", model=ToyModel(dropout=0.0, jitter=False), loader=toy_loader()
    )
    full.train()
    torch.manual_seed(0)
    accum = _trainer(
        tmp_path / "accum",
        model=ToyModel(dropout=0.0, jitter=False),
        loader=toy_loader(batch_size=4, split=2),
        accumulate_steps=2,
    )
    accum.train()
    assert accum.unwrapped_model.calls == 12 and full.unwrapped_model.calls == 6
    for a, b in zip(
        full.unwrapped_model.parameters(), accum.unwrapped_model.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradient_clipping_bounds_the_first_update(tmp_path):
    trainer = _trainer(tmp_path, max_iter=1, clip_grad_norm=1e-3)
    trainer.optimizer.param_groups  # noqa: B018
    before = torch.cat([p.detach().flatten().clone() for p in trainer.unwrapped_model.parameters()])
    for g in trainer.optimizer.param_groups:
        g["weight_decay"] = 0.0
    metrics = trainer.train()
    after = torch.cat([p.detach().flatten() for p in trainer.unwrapped_model.parameters()])
    assert metrics["grad_norm"] > 1e-3  # the raw norm is logged; it was clipped
    # First SGD step without weight decay: update = lr_group * clipped gradient; the largest group
    # LR is the biases' 2 x (0.05 / 3).
    assert (after - before).norm() <= 2 * 0.05 / 3 * 1e-3 * (1 + 1e-4)


def test_amp_bfloat16_on_cpu(tmp_path):
    model = ToyModel(dropout=0.0)
    trainer = _trainer(tmp_path, model=model, max_iter=2, amp_enabled=True, amp_dtype="float16")
    trainer.train()
    assert model.autocast_dtypes == [torch.bfloat16, torch.bfloat16]
    assert not trainer.scaler.is_enabled()
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_eval_hook_period_and_final(tmp_path):
    calls = []

    def evaluate(model):
        calls.append((trainer.iter, model.training))
        return {"bbox": {"AP": 0.25 * len(calls)}}

    trainer = _trainer(tmp_path, evaluate_fn=evaluate, eval_period=4, max_iter=6)
    trainer.train()
    assert calls == [(4, False), (6, False)]
    assert trainer.unwrapped_model.training
    evals = [r for r in _read_metrics(tmp_path / "metrics.jsonl") if "bbox/AP" in r]
    assert [(r["iteration"], r["bbox/AP"]) for r in evals] == [(4, 0.25), (6, 0.5)]


class _Stop(HookBase):
    """Simulates a crash right after iteration `at` finished."""

    def __init__(self, at: int) -> None:
        self.at = at

    def after_step(self, trainer) -> None:
        if trainer.iter == self.at:
            raise KeyboardInterrupt


def _launch(out, *, resume=False, hooks=(), max_iter=6):
    cfg = toy_cfg(out, MAX_ITER=max_iter)
    torch.manual_seed(0)
    return train(
        cfg, resume, model=ToyModel(dropout=0.5), data_loader=toy_loader(), hooks=hooks,
        tensorboard=False, progress_bar=False,
    )  # fmt: skip


def test_launch_interrupted_and_resumed_is_bit_identical(tmp_path):
    ref = _launch(tmp_path / "ref")
    assert (tmp_path / "ref" / "config.yaml").is_file()
    assert "training from iteration 0 to 6" in (tmp_path / "ref" / "log.txt").read_text()
    with pytest.raises(KeyboardInterrupt):
        _launch(tmp_path / "cut", hooks=[_Stop(3)])  # after the checkpoint of iteration 2
    resumed = _launch(tmp_path / "cut", resume=True)
    assert "resuming at iteration 2" in (tmp_path / "cut" / "log.txt").read_text()
    a = torch.load(ref.final_checkpoint, weights_only=True)
    b = torch.load(resumed.final_checkpoint, weights_only=True)
    assert a["iteration"] == b["iteration"] == 6
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


def test_seed_all_negative_draws_a_seed():
    seed = seed_all(-1)
    assert 0 <= seed < 2**31
    first = torch.rand(2)
    seed_all(seed)
    assert torch.equal(torch.rand(2), first)


def test_data_loader_that_ends(tmp_path):
    def finite(start):
        return iter([next(toy_loader()(start))])

    with pytest.raises(RuntimeError, match="ran out of batches at iteration 1"):
        _trainer(tmp_path, loader=finite).train()


def test_model_without_losses(tmp_path):
    class NoLoss(ToyModel):
        def forward(self, images, targets):
            return [torch.zeros(())]

    with pytest.raises(TypeError, match="dict of losses"):
        _trainer(tmp_path, model=NoLoss()).train()
    assert math.isfinite(0.0)


def test_progress_bar_when_enabled(tmp_path, capsys):
    logger = setup_logger(tmp_path, rank=0)
    before = list(logger.handlers)
    _trainer(tmp_path, progress_bar=True, log_period=3).train()
    err = capsys.readouterr().err
    assert "6/6" in err and "loss=" in err
    assert "iter: 3/6" in err  # log lines go to the console above the bar
    assert set(logger.handlers) == set(before)  # console handler restored


def test_cuda_device_without_gpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    from detector.engine.launch import resolve_device

    cfg = toy_cfg(tmp_path)
    with unlocked(cfg):
        cfg.MODEL.DEVICE = "cuda"
    with pytest.raises(ValueError, match="no CUDA GPU is visible; use MODEL.DEVICE cpu"):
        resolve_device(cfg)


def test_resume_asks_the_loader_for_the_iteration(tmp_path):
    cut = _trainer(tmp_path, max_iter=2, accumulate_steps=2, loader=toy_loader(split=2))
    cut.train()
    calls = []

    def loader(start_iter):
        calls.append(start_iter)
        return toy_loader(split=2)(start_iter)

    resumed = _trainer(tmp_path, loader=loader, accumulate_steps=2)  # MAX_ITER 6
    assert resumed.resume_or_load(True) == 2
    resumed.train()
    assert calls == [2]  # iterations, like detector.data.build_train_loader(cfg, start_iter)
    assert resumed.unwrapped_model.calls == 8


class _Signal(HookBase):
    """Sends `signum` to this process after iteration `at` (0: during after_train)."""

    def __init__(self, signum: int, at: int = 0) -> None:
        self.signum, self.at = signum, at

    def after_step(self, trainer) -> None:
        if trainer.iter == self.at:
            os.kill(os.getpid(), self.signum)

    def after_train(self, trainer) -> None:
        if self.at == 0:
            os.kill(os.getpid(), self.signum)


def test_signal_stops_after_the_iteration_with_a_checkpoint(tmp_path):
    """In-process: the signal is honoured at the end of the iteration it arrived in."""
    with pytest.raises(Interrupted) as info:
        _launch(tmp_path / "run", hooks=[_Signal(signal.SIGTERM, at=3)])
    assert info.value.signum == signal.SIGTERM
    path = tmp_path / "run" / "model_0000003.pth"
    assert str(info.value) == (
        f"SIGTERM after iteration 3: checkpoint {path} written; continue with --resume"
    )
    assert torch.load(path, weights_only=True)["iteration"] == 3
    assert not (tmp_path / "run" / "model_final.pth").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_signal_during_the_final_evaluation_keeps_the_final_checkpoint(tmp_path):
    with pytest.raises(Interrupted, match=r"^SIGINT after the last iteration \(6\)"):
        _launch(tmp_path / "run", hooks=[_Signal(signal.SIGINT)])
    assert torch.load(tmp_path / "run" / "model_final.pth", weights_only=True)["iteration"] == 6


def test_metrics_that_cannot_be_written_stop_with_a_one_line_error(tmp_path, monkeypatch):
    from detector.engine.output_dir import OutputDirError
    from detector.utils.metrics import JSONWriter

    def full(self, iteration, scalars):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(JSONWriter, "write", full)
    with pytest.raises(OutputDirError) as info:
        _launch(tmp_path / "run")
    assert str(info.value) == (
        f"cannot write the metrics of iteration 1 to {tmp_path / 'run'}: No space left on device; "
        "free disk space (or fix the folder), then --resume"
    )


def test_log_period_is_a_config_key_and_the_first_iterations_are_logged(tmp_path, caplog):
    """Was: a line every 20 iterations only, so a slow run without a terminal stayed silent for
    minutes. SOLVER.LOG_PERIOD sets the period; iterations 1, 2, 5, 10 and the last always log."""
    solver = {"MAX_ITER": 16, "STEPS": [100], "LOG_PERIOD": 7, "CHECKPOINT_PERIOD": 0}
    with caplog.at_level(logging.INFO, logger="detector.engine.hooks"):
        _trainer(tmp_path, solver=solver).train()
    logged = [int(m.group(1)) for m in re.finditer(r"iter: (\d+)/16", caplog.text)]
    assert logged == [1, 2, 5, 7, 10, 14, 16]


def _failing_loader(fail_at: int):
    """toy_loader's batches, then a DatasetError (a truncated image) at iteration `fail_at`."""
    from detector.data import DatasetError

    def factory(start_iter: int):
        batches = toy_loader()(start_iter)
        for _ in range(start_iter + 1, fail_at):
            yield next(batches)
        raise DatasetError("cannot decode image x.jpg: Image is incomplete or truncated")

    return factory


@pytest.mark.parametrize(("fail_at", "saved"), [(5, ["model_0000004.pth"]), (1, [])])
def test_an_error_after_the_first_iteration_saves_a_checkpoint(tmp_path, fail_at, saved):
    """Was: a truncated JPEG stopped a run at iteration 33 of 40 with no checkpoint written."""
    from detector.data import DatasetError

    solver = {"MAX_ITER": 8, "CHECKPOINT_PERIOD": 0}
    with pytest.raises(DatasetError, match="truncated"):
        _trainer(tmp_path, loader=_failing_loader(fail_at), solver=solver).train()
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == saved
    if saved:
        resumed = _trainer(tmp_path, solver=solver)
        assert resumed.resume_or_load(True) == fail_at - 1


@pytest.mark.parametrize(("weight", "warned"), [("", True), ("given", False)])
def test_frozen_batch_norm_without_weights_warns(tmp_path, restore_detector_logger, weight, warned):
    """Was: random weights with FrozenBatchNorm started at losses of 44-268 and diverged,
    without a word. Now a warning names the keys for training from scratch."""
    from detector.layers.batch_norm import FrozenBatchNorm2d

    model = ToyModel(dropout=0.0)
    model.norm = FrozenBatchNorm2d(4)
    if weight:
        weight = str(tmp_path / "w.pth")
        torch.save({"model": model.state_dict()}, weight)
    cfg = toy_cfg(tmp_path / "run", MAX_ITER=1)
    with unlocked(cfg):
        cfg.MODEL.WEIGHT = weight
    train(cfg, model=model, data_loader=toy_loader(), tensorboard=False, progress_bar=False)
    log = (tmp_path / "run" / "log.txt").read_text().splitlines()
    messages = [line for line in log if "WARNING" in line and "FrozenBatchNorm2d" in line]
    assert len(messages) == int(warned)
    if warned:
        assert "MODEL.RESNETS.NORM GN" in messages[0]
