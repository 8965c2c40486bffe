"""A toy run killed with SIGKILL between checkpoints, then resumed, ends with the same bits as an
uninterrupted run (model, momentum buffers, schedule, RNG streams, data position)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _run(out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "tests.engine.toy_train", str(out), *args]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc: subprocess.Popen) -> None:
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    ref = _run(tmp_path / "ref")
    cut_dir = tmp_path / "cut"
    victim = _run(cut_dir, "--hang-at", "6")  # checkpoints at 4 and 8: killed in between
    _finish(ref)
    deadline = time.monotonic() + 120
    while not (cut_dir / "hanging").exists():
        assert victim.poll() is None, victim.communicate()[0]
        assert time.monotonic() < deadline, "the toy run never reached iteration 6"
        time.sleep(0.1)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert (cut_dir / "last_checkpoint").read_text() == "model_0000004.pth"
    assert not (cut_dir / "model_final.pth").exists()

    _finish(_run(cut_dir, "--resume"))
    assert "resuming at iteration 4" in (cut_dir / "log.txt").read_text()
    a = torch.load(tmp_path / "ref" / "model_final.pth", weights_only=True)
    b = torch.load(cut_dir / "model_final.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == 12
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 12
