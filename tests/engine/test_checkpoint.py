"""Checkpointer: round trip with RNG states, keep-last-K, pointer, unsafe, corrupt, full disk."""

import contextlib
import errno
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detector.engine.checkpoint import (
    Checkpointer,
    CheckpointError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_checkpoint_file,
)
from detector.solver import WarmupMultiStepLR


def _setup(tmp_path: Path, seed: int = 0, keep: int = 0):
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = WarmupMultiStepLR(opt, [2], warmup_iters=0)
    ckpt = Checkpointer(tmp_path, model=model, optimizer=opt, scheduler=sched, max_to_keep=keep)
    return model, opt, sched, ckpt


def _train_step(model, opt, sched) -> None:
    opt.zero_grad()
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()


def _draws() -> tuple[torch.Tensor, float, float]:
    return torch.rand(3), float(np.random.rand()), random.random()


def test_round_trip_restores_everything(tmp_path):
    model, opt, sched, ckpt = _setup(tmp_path)
    for _ in range(3):
        _train_step(model, opt, sched)
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    path = ckpt.save("model_0000003", iteration=3)
    assert path == tmp_path / "model_0000003.pth"
    expected_draws = _draws()
    _train_step(model, opt, sched)
    expected = [p.detach().clone() for p in model.parameters()]

    model2, opt2, sched2, ckpt2 = _setup(tmp_path, seed=1)
    extra = ckpt2.load(path)
    assert extra["iteration"] == 3
    assert sched2.last_epoch == 3
    draws = _draws()
    assert torch.equal(draws[0], expected_draws[0]) and draws[1:] == expected_draws[1:]
    _train_step(model2, opt2, sched2)  # needs the momentum buffers and the LR of the schedule
    for a, b in zip(model2.parameters(), expected, strict=True):
        assert torch.equal(a, b)


def test_keep_last_and_pointer(tmp_path):
    model, opt, sched, ckpt = _setup(tmp_path, keep=2)
    for it in (2, 4, 6, 8):
        ckpt.save(f"model_{it:07d}", iteration=it)
    ckpt.save("model_final", iteration=9)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["last_checkpoint", "model_0000006.pth", "model_0000008.pth", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert ckpt.candidates() == [
        tmp_path / "model_final.pth", tmp_path / "model_0000008.pth", tmp_path / "model_0000006.pth"
    ]  # fmt: skip


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_payload_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "code_ran"
    bad = tmp_path / "model_0000004.pth"
    torch.save({"model": nn.Linear(3, 2).state_dict(), "evil": _Payload(marker)}, bad)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match=r"model_0000004\.pth.*pickled Python objects"):
        load_checkpoint_file(bad)
    assert not marker.exists()
    _, _, _, ckpt = _setup(tmp_path)
    with pytest.raises(UnsafeCheckpointError):  # never skipped silently on resume
        ckpt.resume()
    assert not marker.exists()


def test_truncated_checkpoint_falls_back_with_warning(tmp_path, caplog):
    model, opt, sched, ckpt = _setup(tmp_path)
    _train_step(model, opt, sched)
    ckpt.save("model_0000001", iteration=1)
    good = [p.detach().clone() for p in model.parameters()]
    _train_step(model, opt, sched)
    newest = ckpt.save("model_0000002", iteration=2)
    newest.write_bytes(newest.read_bytes()[:200])  # truncated

    with pytest.raises(CorruptCheckpointError, match=r"model_0000002\.pth is truncated or corrupt"):
        load_checkpoint_file(newest)
    model2, _, sched2, ckpt2 = _setup(tmp_path, seed=3)
    with caplog.at_level(logging.WARNING, logger="detector"):
        logging.getLogger("detector").propagate = True
        extra = ckpt2.resume()
    assert extra["iteration"] == 1 and sched2.last_epoch == 1
    assert any("model_0000002.pth" in r.getMessage() for r in caplog.records)
    for a, b in zip(model2.parameters(), good, strict=True):
        assert torch.equal(a, b)


def test_all_corrupt_is_an_error(tmp_path):
    _, _, _, ckpt = _setup(tmp_path)
    ckpt.save("model_0000001", iteration=1)
    (tmp_path / "model_0000001.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        ckpt.resume()


def test_not_a_dict_and_no_model_entry(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CorruptCheckpointError, match="holds a list"):
        load_checkpoint_file(tmp_path / "list.pth")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "x.pth")
    _, _, _, ckpt = _setup(tmp_path)
    with pytest.raises(CorruptCheckpointError, match="no 'model' entry"):
        ckpt.load(tmp_path / "x.pth")


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, sched, ckpt = _setup(tmp_path)
    ckpt.save("model_0000001", iteration=1)
    before = (tmp_path / "model_0000001.pth").read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError) as info:
        ckpt.save("model_0000002", iteration=2)
    message = str(info.value)
    assert "model_0000002.pth" in message and "No space left on device" in message
    assert "model_0000001.pth is intact" in message and "free disk space" in message
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "model_0000001.pth").read_bytes() == before
    assert ckpt.resume()["iteration"] == 1


def test_no_checkpoint_resume_returns_none(tmp_path):
    _, _, _, ckpt = _setup(tmp_path / "empty")
    assert ckpt.resume() is None and not ckpt.has_checkpoint()


def test_load_weights_non_strict(tmp_path):
    src = nn.Sequential(nn.Linear(3, 2))
    torch.save({"model": src.state_dict()}, tmp_path / "w.pth")
    dst = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    Checkpointer(tmp_path, model=dst).load_weights(tmp_path / "w.pth")
    assert torch.equal(dst[0].weight, src[0].weight)


def test_load_weights_skips_other_shapes(tmp_path, caplog):
    src = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 5))  # a predictor for 5 classes
    torch.save({"model": src.state_dict()}, tmp_path / "w.pth")
    dst = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 3))
    fresh = dst[1].weight.detach().clone()
    logging.getLogger("detector").propagate = True
    with caplog.at_level(logging.WARNING, logger="detector"):
        Checkpointer(tmp_path, model=dst).load_weights(tmp_path / "w.pth")
    assert torch.equal(dst[0].weight, src[0].weight) and torch.equal(dst[1].weight, fresh)
    assert "1.weight (5, 2) vs (3, 2)" in caplog.text


def test_load_weights_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="MODEL.WEIGHT file not found"):
        Checkpointer(tmp_path, model=nn.Linear(1, 1)).load_weights(tmp_path / "nope.pth")


def test_too_little_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    from detector.engine import checkpoint

    _, _, _, ckpt = _setup(tmp_path)
    ckpt.save("model_0000001", iteration=1)
    monkeypatch.setattr(checkpoint, "_free_bytes", lambda directory: 10)
    written = []
    monkeypatch.setattr(torch, "save", lambda *args, **kwargs: written.append(args))
    with pytest.raises(CheckpointError) as info:
        ckpt.save("model_0000002", iteration=2)
    assert not written  # nothing was attempted
    message = str(info.value)
    assert "model_0000002.pth: No space left on device (" in message
    assert "MB needed, 0.0 MB free)" in message and "model_0000001.pth is intact" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]


@contextlib.contextmanager
def _buffered_dev_full():
    """A buffered file on /dev/full (its close, flushing the buffer, fails too)."""
    f = open("/dev/full", "wb")  # noqa: SIM115
    try:
        yield f
    finally:
        with contextlib.suppress(OSError):
            f.close()


def test_torch_save_write_failure_on_a_buffered_file_becomes_enospc(tmp_path, monkeypatch):
    """Through a buffered file torch.save reports a full disk as RuntimeError('unexpected pos');
    the checkpointer turns it back into ENOSPC when the disk has no room left."""
    from detector.engine import checkpoint

    state = {"w": torch.zeros(100_000)}
    with _buffered_dev_full() as f, pytest.raises(RuntimeError, match="unexpected pos"):
        torch.save(state, f)  # what happened before
    monkeypatch.setattr(checkpoint, "_free_bytes", lambda directory: 0)
    with _buffered_dev_full() as f, pytest.raises(OSError) as info:
        checkpoint._save_state(state, f, checkpoint._state_bytes(state))
    assert info.value.errno == errno.ENOSPC
    monkeypatch.setattr(checkpoint, "_free_bytes", lambda directory: 2**40)
    with _buffered_dev_full() as f, pytest.raises(OSError) as info:
        checkpoint._save_state(state, f, checkpoint._state_bytes(state))
    assert info.value.errno == errno.EIO and "write failed (" in str(info.value)
