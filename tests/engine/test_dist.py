"""Two gloo processes on the CPU train a toy model with DistributedDataParallel: both ranks end
with the same weights, equal to a one-process run on the same total batch. And the collectives
return only once gloo's worker threads have let go of their tensors (the exit abort, see
detector/utils/comm.py)."""

import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from detector.engine import HookBase, Trainer, train
from detector.utils import comm
from detector.utils.signals import Interrupted
from tests.engine.toy import ToyModel, toy_cfg, toy_loader


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
    model = ToyModel(dropout=0.0, jitter=False)
    cfg = toy_cfg(Path(out) / "run")
    result = train(
        cfg, model=model, data_loader=toy_loader(4, rank=rank, world_size=world_size),
        tensorboard=False, progress_bar=False,
    )  # fmt: skip
    gathered = comm.all_gather(comm.get_rank())
    torch.save(
        {"state": result.model.state_dict(), "gathered": gathered},
        Path(out) / f"rank{rank}.pt",
    )
    comm.shutdown()


@pytest.mark.dist
@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["gathered"] == r1["gathered"] == [0, 1]
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key

    torch.manual_seed(0)
    single = Trainer.from_config(
        toy_cfg(tmp_path / "single"), model=ToyModel(dropout=0.0, jitter=False),
        data_loader=toy_loader(4), tensorboard=False, progress_bar=False,
    )  # fmt: skip
    single.train()
    for key, value in single.unwrapped_model.state_dict().items():
        torch.testing.assert_close(r0["state"][key], value, rtol=1e-5, atol=1e-6)
    # Rank 0 alone wrote metrics (one line per iteration) and checkpoints.
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6
    assert (tmp_path / "run" / "model_final.pth").is_file()


def _released_worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    comm.init_distributed()
    held = []  # (call, reference count over the baseline) right after each collective returned
    for i in range(200):
        t = torch.full((3,), float(rank + i))
        base = sys.getrefcount(t)
        comm._collective(torch.distributed.all_reduce, [t], t)
        held.append(sys.getrefcount(t) - base)
        assert t.tolist() == [2.0 * i + 1.0] * 3
    gathered = [comm.all_gather({"rank": rank, "i": i}) for i in range(20)]
    torch.save({"held": held, "gathered": gathered}, Path(out) / f"released{rank}.pt")
    comm.shutdown()


@pytest.mark.dist
def test_collectives_return_after_gloo_released_their_tensors(tmp_path):
    """A C++ reference to a Python-made tensor shows as one more Python reference; after a
    collective returns, none may be left (a worker thread freeing it while the interpreter exits
    is what aborted runs with SIGABRT)."""
    mp.spawn(_released_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        result = torch.load(tmp_path / f"released{rank}.pt", weights_only=True)
        assert result["held"] == [0] * 200
        assert result["gathered"] == [[{"rank": 0, "i": i}, {"rank": 1, "i": i}] for i in range(20)]


class _SignalOnRank1(HookBase):
    """Rank 1 alone receives SIGTERM after iteration 3."""

    def after_step(self, trainer) -> None:
        if comm.get_rank() == 1 and trainer.iter == 3:
            os.kill(os.getpid(), signal.SIGTERM)


def _stopped_worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    cfg = toy_cfg(Path(out) / "run")
    try:
        train(
            cfg, model=ToyModel(dropout=0.0, jitter=False), hooks=[_SignalOnRank1()],
            data_loader=toy_loader(4, rank=rank, world_size=world_size), tensorboard=False,
            progress_bar=False,
        )  # fmt: skip
        outcome = "finished"
    except Interrupted as e:
        outcome = str(e)
    (Path(out) / f"rank{rank}.txt").write_text(outcome)
    comm.shutdown(failed=outcome != "finished")


@pytest.mark.dist
@pytest.mark.slow
def test_a_signal_on_one_rank_stops_every_rank_at_the_same_iteration(tmp_path):
    mp.spawn(_stopped_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    checkpoint = tmp_path / "run" / "model_0000003.pth"
    expected = f"SIGTERM after iteration 3: checkpoint {checkpoint} written; continue with --resume"
    assert (tmp_path / "rank0.txt").read_text() == expected
    assert (tmp_path / "rank1.txt").read_text() == expected
    assert torch.load(checkpoint, weights_only=True)["iteration"] == 3
    assert len(torch.load(checkpoint, weights_only=True)["rng"]) == 2  # both ranks' RNG states
