"""Faults on the real shapes Mask R-CNN pipeline (tools/train.py in a subprocess, 2 DataLoader
workers): kill -9 at random points and during checkpoint writes, stop signals, a second run in the
same OUTPUT_DIR, a full disk. Every resumed run must end bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "shapes" / "mask_rcnn_R_18_FPN_shapes.yaml"
MAX_ITER = 12
OPTS = [
    "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "3", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "DATALOADER.NUM_WORKERS", "2",
]  # fmt: skip
TIMING_KEYS = {"time", "data_time", "memory_mb"}


def start(out: Path, *, resume: bool = False, faults: tuple[str, ...] = ()) -> subprocess.Popen:
    """tools/train.py (through tests.engine.shapes_train, which injects `faults`) into `out`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    train_args = ["--config-file", str(CONFIG), "--skip-test", *OPTS, "OUTPUT_DIR", str(out)]
    if resume:
        train_args.insert(0, "--resume")
    cmd = [sys.executable, "-m", "tests.engine.shapes_train", *faults, "--", *train_args]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen, status: int = 0) -> str:
    """Waits for `proc`; checks its exit status; returns its stderr."""
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == status, out + err
    return err


def metric_lines(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def assert_same_run(ref: Path, out: Path) -> None:
    """Final weights bit-identical; every metrics line ever written (killed runs included) equal to
    the uninterrupted run's line of that iteration, timings aside."""
    a = torch.load(ref / "model_final.pth", weights_only=True)
    b = torch.load(out / "model_final.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == MAX_ITER
    assert a["model"].keys() == b["model"].keys()
    different = [k for k, v in a["model"].items() if not torch.equal(v, b["model"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    expected = {r["iteration"]: r for r in metric_lines(ref)}
    assert sorted(expected) == list(range(1, MAX_ITER + 1))
    lines = metric_lines(out)
    assert {r["iteration"] for r in lines} == set(expected)
    for line in lines:
        want = {k: v for k, v in expected[line["iteration"]].items() if k not in TIMING_KEYS}
        assert {k: v for k, v in line.items() if k not in TIMING_KEYS} == want


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    finish(start(out))
    return out


@pytest.mark.slow
def test_kill9_at_random_points_and_in_checkpoint_writes_then_resume_is_bit_identical(
    reference, tmp_path
):
    rng = random.Random(17)
    out = tmp_path / "cut"
    # 1: killed during a random early iteration (no checkpoint yet, or model_0000003).
    run = start(out)
    stop_at = rng.randint(1, 3)
    wait_for(run, lambda: len(metric_lines(out)) >= stop_at, f"iteration {stop_at}")
    time.sleep(rng.uniform(0.0, 0.2))
    kill9(run)
    # 2: resumed, killed half-way through writing model_0000006.pth.
    run = start(out, resume=True, faults=("--pause-in-save", "6"))
    wait_for(run, (out / "paused").is_file, "the write of model_0000006.pth")
    kill9(run)
    (out / "paused").unlink()
    stale = list(out.glob(".model_0000006.pth.tmp-*"))
    assert len(stale) == 1 and not (out / "model_0000006.pth").exists()
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"
    # 3: resumed, killed at a random point a few iterations later.
    run = start(out, resume=True)
    done = len(metric_lines(out))
    stop_at = done + rng.randint(2, 5)
    wait_for(run, lambda: len(metric_lines(out)) >= stop_at, f"metrics line {stop_at}")
    time.sleep(rng.uniform(0.0, 0.2))
    kill9(run)
    assert not stale[0].exists(), "the killed run's temporary checkpoint was not removed"
    # 4: resumed to the end.
    finish(start(out, resume=True))
    log = (out / "log.txt").read_text()
    assert log.count("resuming at iteration") == 3
    assert f"removed {stale[0]}, left by a stopped run" in log
    assert not list(out.glob(".*.tmp-*"))
    assert_same_run(reference, out)
