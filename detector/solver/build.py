"""Optimizer and LR schedule from the config (SOLVER.*).

Parameter groups follow maskrcnn_benchmark: every trainable parameter gets SOLVER.BASE_LR and
SOLVER.WEIGHT_DECAY, except

* parameters of normalization layers (BatchNorm, SyncBatchNorm, GroupNorm, LayerNorm,
  InstanceNorm), which get SOLVER.WEIGHT_DECAY_NORM (detectron2's key);
* biases, which get BASE_LR * SOLVER.BIAS_LR_FACTOR and SOLVER.WEIGHT_DECAY_BIAS (this wins over
  the norm rule for a norm layer's bias, as in detectron2).

A None WEIGHT_DECAY_NORM / WEIGHT_DECAY_BIAS switches its rule off: the parameter keeps the decay
the other rules give (so with WEIGHT_DECAY_BIAS None, this project's default, a norm layer's bias
gets WEIGHT_DECAY_NORM and any other bias WEIGHT_DECAY, as detectron2's defaults do).

Parameters with the same (lr, weight_decay) share one group, so the optimizer holds at most four.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from detector.config import Config
from detector.solver.lr_scheduler import WarmupCosineLR, WarmupMultiStepLR

__all__ = ["build_lr_scheduler", "build_optimizer", "get_param_groups"]

logger = logging.getLogger(__name__)

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def get_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    bias_lr_factor: float = 1.0,
    weight_decay_bias: float | None = None,
    weight_decay_norm: float | None = None,
) -> list[dict[str, Any]]:
    """Splits the trainable parameters of `model` into groups by (lr, weight_decay).

    `None` for `weight_decay_bias` / `weight_decay_norm` switches that rule off. Each
    parameter appears once, even when shared between modules. Groups are ordered by first use,
    and parameters keep the model's order, so the grouping is the same in every process.
    """
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_TYPES)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr, wd = base_lr, weight_decay
            if is_norm and weight_decay_norm is not None:
                wd = weight_decay_norm
            if name == "bias":
                lr = base_lr * bias_lr_factor
                if weight_decay_bias is not None:
                    wd = weight_decay_bias
            groups.setdefault((lr, wd), []).append(param)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with SOLVER.MOMENTUM over `get_param_groups` of SOLVER.BASE_LR, WEIGHT_DECAY,
    BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS and WEIGHT_DECAY_NORM."""
    s = cfg.SOLVER
    groups = get_param_groups(
        model,
        base_lr=s.BASE_LR,
        weight_decay=s.WEIGHT_DECAY,
        bias_lr_factor=s.BIAS_LR_FACTOR,
        weight_decay_bias=s.WEIGHT_DECAY_BIAS,
        weight_decay_norm=s.WEIGHT_DECAY_NORM,
    )
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameter")
    logger.info(
        "SGD: %s",
        "; ".join(
            f"{len(g['params'])} params lr={g['lr']:g} wd={g['weight_decay']:g}" for g in groups
        ),
    )
    return torch.optim.SGD(groups, lr=s.BASE_LR, momentum=s.MOMENTUM)


def build_lr_scheduler(
    cfg: Config, optimizer: torch.optim.Optimizer
) -> WarmupMultiStepLR | WarmupCosineLR:
    """The SOLVER.LR_SCHEDULER schedule with SOLVER.WARMUP_* warm-up; step it every iteration."""
    s = cfg.SOLVER
    name = str(s.LR_SCHEDULER)
    if name == "WarmupMultiStepLR":
        return WarmupMultiStepLR(
            optimizer,
            list(s.STEPS),
            gamma=s.GAMMA,
            warmup_factor=s.WARMUP_FACTOR,
            warmup_iters=s.WARMUP_ITERS,
            warmup_method=str(s.WARMUP_METHOD),
        )
    if name == "WarmupCosineLR":
        end_factor = s.BASE_LR_END / s.BASE_LR if s.BASE_LR > 0 else 0.0
        return WarmupCosineLR(
            optimizer,
            s.MAX_ITER,
            end_factor=end_factor,
            warmup_factor=s.WARMUP_FACTOR,
            warmup_iters=s.WARMUP_ITERS,
            warmup_method=str(s.WARMUP_METHOD),
        )
    raise ValueError(
        f"SOLVER.LR_SCHEDULER = {name!r} is unknown; use WarmupMultiStepLR or WarmupCosineLR"
    )
