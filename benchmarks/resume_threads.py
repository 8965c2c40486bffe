"""Resume across a change of thread count: trains the shapes Mask R-CNN with tools/train.py
uninterrupted at A threads and at B threads, and resumed at B threads from the A-thread run's
checkpoint half-way; prints the first iteration whose loss differs from the A-thread run and the
largest difference of the final weights.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/resume_threads.py --threads 1 2 --iters 12

Prints numbers only; nothing here is asserted (see docs/reliability.md, "Checkpoints and runs").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "shapes" / "mask_rcnn_R_18_FPN_shapes.yaml"


def _train(out: Path, threads: int, iters: int, resume: bool = False) -> None:
    opts = [
        "SOLVER.MAX_ITER", str(iters), "SOLVER.CHECKPOINT_PERIOD", str(iters // 2),
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "3", "SOLVER.MAX_CHECKPOINTS_KEPT", "0",
        "DATALOADER.NUM_WORKERS", "1", "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    args = ["--resume"] if resume else []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(ROOT / "tools" / "train.py"), *args, "--config-file", str(CONFIG)]
    subprocess.run([*cmd, "--skip-test", *opts], env=env, check=True, capture_output=True)


def _losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["iteration"]: r["loss"] for r in records}


def _compare(name: str, ref: Path, out: Path) -> None:
    a, b = _losses(ref), _losses(out)
    first = next((i for i in sorted(b) if a[i] != b[i]), None)
    wa = torch.load(ref / "model_final.pth", weights_only=True)["model"]
    wb = torch.load(out / "model_final.pth", weights_only=True)["model"]
    differ = sum(not torch.equal(v, wb[k]) for k, v in wa.items())
    largest = max((v.float() - wb[k].float()).abs().max().item() for k, v in wa.items())
    last = max(a)
    print(
        f"{name}: first differing iteration {first}, loss at {last} {a[last]:.10f} vs "
        f"{b[last]:.10f}, {differ} of {len(wa)} tensors differ, largest difference {largest:.3g}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs=2, default=[1, 2], metavar=("A", "B"))
    parser.add_argument("--iters", type=int, default=12)
    args = parser.parse_args()
    a, b = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        ref, other, resumed = Path(tmp, "a"), Path(tmp, "b"), Path(tmp, "resumed")
        _train(ref, a, args.iters)
        _train(other, b, args.iters)
        resumed.mkdir()
        half = f"model_{args.iters // 2:07d}.pth"
        shutil.copy(ref / half, resumed / half)
        (resumed / "last_checkpoint").write_text(half)
        _train(resumed, b, args.iters, resume=True)
        _compare(f"{a} vs {b} threads", ref, other)
        _compare(f"{a} threads, resumed at {b}", ref, resumed)


if __name__ == "__main__":
    main()
