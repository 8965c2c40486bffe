"""Distributed helpers in a single process (no process group)."""

import pytest
import torch

from detector.utils import comm


def test_single_process_defaults(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert comm.init_distributed() is False
    assert comm.get_rank() == 0 and comm.get_world_size() == 1 and comm.is_main_process()
    assert comm.get_local_rank() == 0
    assert comm.all_gather({"a": 1}) == [{"a": 1}]
    comm.synchronize()
    x = torch.tensor(2.0, requires_grad=True)
    reduced = comm.reduce_dict({"loss": x * 3})
    assert reduced["loss"].item() == 6.0 and not reduced["loss"].requires_grad


def test_missing_torchrun_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match="MASTER_ADDR is not set; launch with torchrun"):
        comm.init_distributed()


def test_bad_integer_variable(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' must be an integer"):
        comm.init_distributed()
