"""Optimizers and learning-rate schedules (SOLVER.* keys)."""

from detector.solver.build import build_lr_scheduler, build_optimizer, get_param_groups
from detector.solver.lr_scheduler import WarmupCosineLR, WarmupMultiStepLR, warmup_factor_at

__all__ = [
    "WarmupCosineLR",
    "WarmupMultiStepLR",
    "build_lr_scheduler",
    "build_optimizer",
    "get_param_groups",
    "warmup_factor_at",
]
