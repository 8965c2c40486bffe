"""LR schedules against hand-computed values."""

import math

import pytest
import torch
from torch import nn

from detector.config import LRScheduler, get_cfg, unlocked
from detector.solver import WarmupCosineLR, WarmupMultiStepLR, build_lr_scheduler, build_optimizer


def _sgd(lr: float = 0.1) -> torch.optim.SGD:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)


def _lrs(scheduler, optimizer, n: int, group: int = 0) -> list[float]:
    out = []
    for _ in range(n):
        out.append(optimizer.param_groups[group]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_multistep_linear_warmup_hand_values():
    opt = _sgd(0.1)
    sched = WarmupMultiStepLR(
        opt, [6, 8], gamma=0.1, warmup_factor=1 / 3, warmup_iters=4, warmup_method="linear"
    )
    # t < 4: 0.1 * (1/3 * (1 - t/4) + t/4); then 0.1, x0.1 at 6, x0.01 at 8.
    expected = [0.1 / 3, 0.05, 0.1 * (2 / 3), 0.1 * (5 / 6), 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    assert _lrs(sched, opt, 10) == pytest.approx(expected, rel=1e-12)


def test_multistep_constant_warmup_hand_values():
    opt = _sgd(0.02)
    sched = WarmupMultiStepLR(
        opt, [3], gamma=0.5, warmup_factor=0.25, warmup_iters=2, warmup_method="constant"
    )
    assert _lrs(sched, opt, 5) == pytest.approx([0.005, 0.005, 0.02, 0.01, 0.01], rel=1e-12)


def test_warmup_overlapping_a_step():
    # A milestone inside the warm-up multiplies both factors (maskrcnn_benchmark behaviour).
    opt = _sgd(1.0)
    sched = WarmupMultiStepLR(opt, [1], gamma=0.1, warmup_factor=0.5, warmup_iters=2)
    assert _lrs(sched, opt, 3) == pytest.approx([0.5, 0.1 * 0.75, 0.1], rel=1e-12)


def test_cosine_hand_values():
    opt = _sgd(1.0)
    sched = WarmupCosineLR(opt, 10, end_factor=0.0, warmup_iters=0)
    lrs = _lrs(sched, opt, 11)
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[5] == pytest.approx(0.5)
    assert lrs[10] == pytest.approx(0.0, abs=1e-15)
    assert lrs[2] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))


def test_cosine_with_end_and_warmup():
    opt = _sgd(2.0)
    sched = WarmupCosineLR(
        opt, 10, end_factor=0.1, warmup_factor=0.5, warmup_iters=2, warmup_method="linear"
    )
    lrs = _lrs(sched, opt, 11)
    # t=1: warm-up 0.5 * 0.5 + 0.5 = 0.75; cosine 0.1 + 0.9 * 0.5 * (1 + cos(pi/10)).
    assert lrs[1] == pytest.approx(2.0 * 0.75 * (0.1 + 0.45 * (1 + math.cos(math.pi / 10))))
    assert lrs[5] == pytest.approx(2.0 * 0.55)
    assert lrs[10] == pytest.approx(0.2)


def test_groups_keep_their_ratio():
    w, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [w], "lr": 0.1}, {"params": [b], "lr": 0.2}], lr=0.1)
    sched = WarmupMultiStepLR(opt, [2], gamma=0.1, warmup_iters=0)
    assert _lrs(sched, opt, 3, group=1) == pytest.approx([0.2, 0.2, 0.02])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)


def test_state_dict_resumes_exactly():
    opt = _sgd(0.1)
    sched = WarmupMultiStepLR(opt, [3, 5], warmup_iters=2)
    _lrs(sched, opt, 4)
    state = sched.state_dict()
    expected = _lrs(sched, opt, 4)

    opt2 = _sgd(0.1)
    sched2 = WarmupMultiStepLR(opt2, [3, 5], warmup_iters=2)
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = sched2.get_last_lr()[0]  # the optimizer state restores this
    assert _lrs(sched2, opt2, 4) == pytest.approx(expected, rel=1e-12)


def test_build_from_config():
    cfg = get_cfg()
    with unlocked(cfg):
        cfg.SOLVER.BASE_LR = 0.1
        cfg.SOLVER.STEPS = [2]
        cfg.SOLVER.WARMUP_ITERS = 0
    model = nn.Linear(2, 2)
    opt = build_optimizer(cfg, model)
    sched = build_lr_scheduler(cfg, opt)
    assert isinstance(sched, WarmupMultiStepLR)
    with unlocked(cfg):
        cfg.SOLVER.LR_SCHEDULER = LRScheduler.WarmupCosineLR
        cfg.SOLVER.MAX_ITER = 4
        cfg.SOLVER.BASE_LR_END = 0.01
    opt = build_optimizer(cfg, model)
    sched = build_lr_scheduler(cfg, opt)
    assert isinstance(sched, WarmupCosineLR)
    assert sched.end_factor == pytest.approx(0.1)
    assert _lrs(sched, opt, 5)[4] == pytest.approx(0.01)


def test_bad_warmup_method():
    with pytest.raises(ValueError, match="warm-up method 'cubic'"):
        WarmupMultiStepLR(_sgd(), [1], warmup_method="cubic")
    with pytest.raises(ValueError, match="increasing"):
        WarmupMultiStepLR(_sgd(), [5, 1])
