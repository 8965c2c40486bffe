"""What each side's autograd graph keeps for the backward pass after one training forward of the
accuracy benchmark's network (benchmarks/accuracy.py) on the same batch: the bytes of the unique
storages saved by its nodes, in all and per node type, ours next to torchvision's.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/saved_tensors.py --dataset wbc

The peak memory of a training step is this plus the gradients, the optimizer state, transient
buffers and what the allocator keeps (docs/accuracy.md, Memory).
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.accuracy import DATASETS, _tv_targets, build_torchvision, load_cfg
from detector.data import build_train_loader
from detector.modeling.detector import GeneralizedRCNN


def _saved(node: object) -> list[Tensor]:
    """The tensors a graph node keeps: `_saved_*` attributes (ATen nodes) and `saved_tensors`
    (custom autograd functions)."""
    found: list[Tensor] = []
    names = [a for a in dir(node) if a.startswith("_saved_")] + ["saved_tensors"]
    for name in names:
        try:
            value = getattr(node, name)
        except (AttributeError, RuntimeError):  # absent, or freed
            continue
        values = value if isinstance(value, (tuple, list)) else [value]
        found += [v for v in values if isinstance(v, Tensor)]
    return found


def saved_bytes(loss: Tensor) -> tuple[int, collections.Counter[str]]:
    """Bytes of the unique storages the graph of `loss` keeps, in all and per node type."""
    seen: set[object] = set()
    storages: set[int] = set()
    per_type: collections.Counter[str] = collections.Counter()
    total = 0
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for tensor in _saved(node):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in storages:
                storages.add(storage.data_ptr())
                total += storage.nbytes()
                per_type[type(node).__name__] += storage.nbytes()
        stack += [child for child, _ in node.next_functions]
    return total, per_type


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="wbc")
    parser.add_argument("--top", type=int, default=6, help="node types listed per side")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = load_cfg(args.dataset, 1, 160, Path(tempfile.mkdtemp()), [])
    images, targets, _ = next(iter(build_train_loader(cfg)))
    ours = GeneralizedRCNN.from_config(cfg).train()
    theirs = build_torchvision(cfg).train()
    losses = {
        "ours": ours(images, targets),
        "torchvision": theirs(
            [im.float() / 255.0 for im in images], _tv_targets(targets, bool(cfg.MODEL.MASK_ON))
        ),
    }
    for side, loss_dict in losses.items():
        total, per_type = saved_bytes(sum(loss_dict.values()))
        print(f"{side}: {total / 2**20:.1f} MB saved for backward")
        for name, nbytes in per_type.most_common(args.top):
            print(f"    {name:45s} {nbytes / 2**20:8.1f} MB")


if __name__ == "__main__":
    main()
