"""Host-memory growth of a long training run: trains the tiny shapes Mask R-CNN for N iterations
with DataLoader workers and prints the resident set size (RSS) of the main process and of its
workers after a warm-up and at the end. A leak (tensors kept in a list, a growing cache, worker
copy-on-write growth) shows as MB per 100 iterations well above zero.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/memory_growth.py --iters 2000 --workers 2

Prints numbers only; nothing here is asserted (see docs/reliability.md, "Long runs").
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from detector.config import load_config
from detector.data import build_train_loader
from detector.modeling.detector import GeneralizedRCNN

CONFIG = Path(__file__).resolve().parents[1] / "configs/shapes/mask_rcnn_R_18_FPN_shapes.yaml"


def _rss_mb(pid: int) -> float:
    """Resident set size of process `pid` in MB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _children(pid: int) -> list[int]:
    """Direct child processes of `pid` (the DataLoader workers)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _snapshot() -> tuple[float, float]:
    """(main RSS MB, summed worker RSS MB)."""
    pid = os.getpid()
    return _rss_mb(pid), sum(_rss_mb(child) for child in _children(pid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--every", type=int, default=100, help="print RSS every this many iters")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    opts = [
        "DATASETS.TRAIN", "('shapes_train',)",
        "DATALOADER.NUM_WORKERS", str(args.workers),
        "SOLVER.IMS_PER_BATCH", str(args.batch),
        "SOLVER.MAX_ITER", str(args.iters),
    ]  # fmt: skip
    cfg = load_config(CONFIG, opts)
    torch.manual_seed(0)
    model = GeneralizedRCNN.from_config(cfg).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    loader = iter(build_train_loader(cfg))
    warm = None
    print(f"iters {args.iters}, warm-up {args.warmup}, workers {args.workers}, batch {args.batch}")
    print(f"{'iter':>6} {'main MB':>9} {'workers MB':>11} {'loss':>8}")
    for iteration in range(1, args.iters + 1):
        images, targets, _ = next(loader)
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        if iteration == args.warmup:
            warm = _snapshot()
        if iteration == args.warmup or iteration % args.every == 0 or iteration == args.iters:
            main_mb, workers_mb = _snapshot()
            print(f"{iteration:6d} {main_mb:9.1f} {workers_mb:11.1f} {float(loss.detach()):8.3f}")
    end = _snapshot()
    if warm is not None and args.iters > args.warmup:
        per_100 = 100 / (args.iters - args.warmup)
        print(
            f"growth after warm-up: main {end[0] - warm[0]:+.1f} MB "
            f"({(end[0] - warm[0]) * per_100:+.2f} MB/100 it), workers {end[1] - warm[1]:+.1f} MB "
            f"({(end[1] - warm[1]) * per_100:+.2f} MB/100 it)"
        )


if __name__ == "__main__":
    main()
