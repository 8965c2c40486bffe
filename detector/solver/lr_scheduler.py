"""Learning-rate schedules stepped once per training iteration.

Each schedule multiplies every parameter group's initial LR by a factor of the iteration `t`:

    warmup(t) = 1                                        when t >= warmup_iters
                warmup_factor                            constant warm-up
                warmup_factor * (1 - t / W) + t / W      linear warm-up (W = warmup_iters)
    WarmupMultiStepLR: factor(t) = warmup(t) * gamma ** (number of milestones <= t)
    WarmupCosineLR:    factor(t) = warmup(t) * (end + (1 - end) * (1 + cos(pi * t / max_iter)) / 2)

as maskrcnn_benchmark's `WarmupMultiStepLR` and detectron2's cosine schedule (`end` is
SOLVER.BASE_LR_END / SOLVER.BASE_LR). The factors are closed-form in `t`, so a schedule restored
from a checkpoint continues exactly where it stopped.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["WarmupCosineLR", "WarmupMultiStepLR", "warmup_factor_at"]

WARMUP_METHODS = ("constant", "linear")


def warmup_factor_at(iteration: int, method: str, warmup_iters: int, warmup_factor: float) -> float:
    """The warm-up multiplier at `iteration` (1 once warm-up is over)."""
    if iteration >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = iteration / warmup_iters
        return warmup_factor * (1.0 - alpha) + alpha
    raise ValueError(f"unknown warm-up method {method!r}; use one of {', '.join(WARMUP_METHODS)}")


class _WarmupLR(LRScheduler):
    """Base class: LR of group g at iteration t = initial_lr[g] * self.factor(t)."""

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        warmup_factor: float = 1.0 / 3,
        warmup_iters: int = 500,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        if str(warmup_method) not in WARMUP_METHODS:
            raise ValueError(
                f"unknown warm-up method {warmup_method!r}; use one of {', '.join(WARMUP_METHODS)}"
            )
        self.warmup_factor = float(warmup_factor)
        self.warmup_iters = int(warmup_iters)
        self.warmup_method = str(warmup_method)
        super().__init__(optimizer, last_epoch)

    def factor(self, iteration: int) -> float:
        raise NotImplementedError

    def _warmup(self, iteration: int) -> float:
        return warmup_factor_at(
            iteration, self.warmup_method, self.warmup_iters, self.warmup_factor
        )

    def get_lr(self) -> list[float | Tensor]:
        f = self.factor(self.last_epoch)
        return [base_lr * f for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        return self.get_lr()


class WarmupMultiStepLR(_WarmupLR):
    """Warm-up, then the LR is multiplied by `gamma` at each milestone iteration."""

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Sequence[int],
        *,
        gamma: float = 0.1,
        warmup_factor: float = 1.0 / 3,
        warmup_iters: int = 500,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        milestones = [int(m) for m in milestones]
        if milestones != sorted(milestones):
            raise ValueError(f"milestones (SOLVER.STEPS) must be increasing, got {milestones}")
        self.milestones = milestones
        self.gamma = float(gamma)
        super().__init__(
            optimizer,
            warmup_factor=warmup_factor,
            warmup_iters=warmup_iters,
            warmup_method=warmup_method,
            last_epoch=last_epoch,
        )

    def factor(self, iteration: int) -> float:
        return self._warmup(iteration) * self.gamma ** bisect_right(self.milestones, iteration)


class WarmupCosineLR(_WarmupLR):
    """Warm-up times a half cosine from 1 at iteration 0 to `end_factor` at `max_iter`."""

    def __init__(
        self,
        optimizer: Optimizer,
        max_iter: int,
        *,
        end_factor: float = 0.0,
        warmup_factor: float = 1.0 / 3,
        warmup_iters: int = 500,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        if max_iter <= 0:
            raise ValueError(f"max_iter (SOLVER.MAX_ITER) must be positive, got {max_iter}")
        self.max_iter = int(max_iter)
        self.end_factor = float(end_factor)
        super().__init__(
            optimizer,
            warmup_factor=warmup_factor,
            warmup_iters=warmup_iters,
            warmup_method=warmup_method,
            last_epoch=last_epoch,
        )

    def factor(self, iteration: int) -> float:
        progress = min(iteration, self.max_iter) / self.max_iter
        cosine = self.end_factor + (1.0 - self.end_factor) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )
        return self._warmup(iteration) * cosine
