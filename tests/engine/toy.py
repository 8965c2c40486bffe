"""A toy detector-shaped model and data stream for engine tests (no detector.data needed).

`ToyModel(images, targets)` returns two losses, like GeneralizedRCNN in train mode. It draws from
torch (dropout), numpy and python `random`, so a resumed run matches an uninterrupted one only if
all three generator states are restored.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from detector.config import get_cfg, unlocked


class ToyModel(nn.Module):
    """conv -> GroupNorm -> ReLU -> global mean -> dropout -> linear (2 outputs)."""

    def __init__(
        self, dropout: float = 0.5, nan_at_call: int | None = None, jitter: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(4, 2)
        self.nan_at_call = nan_at_call
        self.jitter = jitter
        self.calls = 0
        self.autocast_dtypes: list[torch.dtype | None] = []

    def forward(self, images: list[Tensor], targets: list[Tensor]) -> dict[str, Tensor]:
        self.calls += 1
        device_type = images[0].device.type
        on = torch.is_autocast_enabled(device_type)
        self.autocast_dtypes.append(torch.get_autocast_dtype(device_type) if on else None)
        x = torch.stack([img.float() / 255 for img in images])  # (N, 3, H, W)
        feats = self.drop(self.norm(self.conv(x)).relu().mean((2, 3)))  # (N, 4)
        pred = self.head(feats).float()  # (N, 2)
        t = torch.stack(targets)  # (N, 2)
        loss_b = (pred[:, 1] - t[:, 1]).abs().mean()
        if self.jitter:  # draws from numpy and python random
            loss_b = loss_b * (1.0 + 0.1 * float(np.random.rand()) + 0.1 * random.random())
        if self.nan_at_call is not None and self.calls == self.nan_at_call:
            loss_b = loss_b * float("nan")
        return {"loss_a": ((pred[:, 0] - t[:, 0]) ** 2).mean(), "loss_b": loss_b}


def toy_batch(index: int, batch_size: int = 4, size: int = 8) -> tuple[list[Tensor], list[Tensor]]:
    """The global batch number `index`: images uint8 (3, size, size), targets float (2,)."""
    g = torch.Generator().manual_seed(1000 + index)
    images = torch.randint(0, 256, (batch_size, 3, size, size), generator=g, dtype=torch.uint8)
    targets = torch.rand(batch_size, 2, generator=g)
    return list(images.unbind(0)), list(targets.unbind(0))


def toy_loader(
    batch_size: int = 4, *, rank: int = 0, world_size: int = 1, split: int = 1
) -> Callable[[int], Iterator[tuple[list[Tensor], list[Tensor], list[dict]]]]:
    """A factory `start_iter -> endless batches`, `split` batches per iteration.

    Each global batch of `batch_size` images is shared among `world_size` ranks and cut into
    `split` consecutive micro-batches (for gradient accumulation), so runs with different splits
    see the same images per iteration."""

    def factory(start_iter: int) -> Iterator[tuple[list[Tensor], list[Tensor], list[dict]]]:
        step = start_iter * split
        while True:
            global_index, part = divmod(step, split)
            images, targets = toy_batch(global_index, batch_size)
            per_rank = batch_size // world_size
            lo = rank * per_rank
            images, targets = images[lo : lo + per_rank], targets[lo : lo + per_rank]
            per_part = per_rank // split
            sl = slice(part * per_part, (part + 1) * per_part)
            yield images[sl], targets[sl], [{} for _ in images[sl]]
            step += 1

    return factory


def toy_cfg(output_dir: str, **solver: object):
    """A CPU config for toy runs; `solver` overrides SOLVER keys (e.g. MAX_ITER=6)."""
    cfg = get_cfg()
    with unlocked(cfg):
        cfg.OUTPUT_DIR = str(output_dir)
        cfg.MODEL.DEVICE = "cpu"
        cfg.SEED = 0
        cfg.SOLVER.BASE_LR = 0.05
        cfg.SOLVER.MAX_ITER = 6
        cfg.SOLVER.STEPS = [4]
        cfg.SOLVER.WARMUP_ITERS = 2
        cfg.SOLVER.CHECKPOINT_PERIOD = 2
        cfg.SOLVER.WEIGHT_DECAY = 1e-4
        for key, value in solver.items():
            cfg.SOLVER[key] = value
    return cfg
