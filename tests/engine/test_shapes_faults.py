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
    # run 1 may have died before its first checkpoint: then run 2 started from scratch
    assert log.count("resuming at iteration") + log.count("starting from scratch") == 3
    assert f"removed {stale[0]}, left by a stopped run" in log
    assert not list(out.glob(".*.tmp-*"))
    assert_same_run(reference, out)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1])
def test_stop_signal_writes_a_checkpoint_and_resumes_bit_identical(reference, tmp_path, signum):
    out = tmp_path / "run"
    run = start(out)
    wait_for(run, lambda: len(metric_lines(out)) >= 4, "iteration 4")
    run.send_signal(signum)
    err = finish(run, 128 + signum)
    stopped = metric_lines(out)[-1]["iteration"]
    assert 4 <= stopped < MAX_ITER
    name = signal.Signals(signum).name
    message = (
        f"error: stopped by {name} after iteration {stopped}: checkpoint "
        f"{out / f'model_{stopped:07d}.pth'} written; continue with --resume"
    )
    assert err.splitlines()[-1] == message
    assert "Traceback" not in err
    assert (out / "last_checkpoint").read_text() == f"model_{stopped:07d}.pth"
    assert [r["iteration"] for r in metric_lines(out)] == list(range(1, stopped + 1))
    finish(start(out, resume=True))
    assert f"resuming at iteration {stopped}" in (out / "log.txt").read_text()
    assert_same_run(reference, out)


def test_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    run = start(out, faults=("--pause-after", "4"))  # the 5th iteration never ends by itself
    wait_for(run, (out / "paused").is_file, "iteration 4")
    run.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert run.poll() is None, "the first Ctrl-C must wait for the end of the iteration"
    run.send_signal(signal.SIGINT)
    err = finish(run, 130)
    assert (
        err.splitlines()[-1]
        == "error: stopped by SIGINT again: stopped at once, without a checkpoint"
    )
    assert "Traceback" not in err
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"


def test_second_run_in_the_same_output_dir_is_refused_naming_the_pid(tmp_path):
    out = tmp_path / "run"
    first = start(out, faults=("--pause-after", "1"))
    wait_for(first, (out / "paused").is_file, "iteration 1")
    second = start(out)
    err = finish(second, 1)
    assert err.splitlines() == [
        f"error: OUTPUT_DIR {out} is in use by another training run (pid {first.pid}, lock file "
        f"{out / '.lock'}); wait for it to end or set OUTPUT_DIR elsewhere"
    ]
    assert [r["iteration"] for r in metric_lines(out)] == [1]  # nothing of the second run
    kill9(first)  # the OS releases the lock: a new run may use the folder
    finish(start(out, resume=True))
    assert (out / "model_final.pth").is_file()


def test_full_disk_during_a_checkpoint_is_a_one_line_error_keeping_the_previous_one(tmp_path):
    out = tmp_path / "run"
    err = finish(start(out, faults=("--dev-full", "6")), 1)  # real ENOSPC inside torch.save
    assert err.splitlines()[-1] == (
        f"error: could not save checkpoint {out / 'model_0000006.pth'}: No space left on device "
        f"(the previous checkpoint {out / 'model_0000003.pth'} is intact); free disk space in "
        f"{out} or set OUTPUT_DIR elsewhere, then resume"
    )
    assert "Traceback" not in err and "unexpected pos" not in err
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"
    assert not list(out.glob(".*.tmp-*")) and not (out / "model_0000006.pth").exists()
    load = torch.load(out / "model_0000003.pth", weights_only=True)
    assert load["iteration"] == 3
