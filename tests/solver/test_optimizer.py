"""Parameter groups (bias / norm rules) and one SGD step by hand."""

import pytest
import torch
from torch import nn

from detector.config import get_cfg, unlocked
from detector.layers import FrozenBatchNorm2d
from detector.solver import build_optimizer, get_param_groups


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.frozen = FrozenBatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.fc2 = nn.Linear(2, 2, bias=False)
        self.fc2.weight.requires_grad_(False)


def _cfg(**solver):
    cfg = get_cfg()
    with unlocked(cfg):
        for k, v in solver.items():
            cfg.SOLVER[k] = v
    return cfg


def _hyper(opt: torch.optim.Optimizer) -> dict[int, tuple[float, float]]:
    return {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}


def test_groups_bias_and_norm_rules():
    net = Net()
    cfg = _cfg(
        BASE_LR=0.1, WEIGHT_DECAY=1e-4, BIAS_LR_FACTOR=2.0, WEIGHT_DECAY_BIAS=0.0,
        WEIGHT_DECAY_NORM=1e-5,
    )  # fmt: skip
    hyper = _hyper(build_optimizer(cfg, net))
    assert hyper[id(net.conv.weight)] == (0.1, 1e-4)
    assert hyper[id(net.fc.weight)] == (0.1, 1e-4)
    assert hyper[id(net.conv.bias)] == (0.2, 0.0)
    assert hyper[id(net.fc.bias)] == (0.2, 0.0)
    assert hyper[id(net.bn.weight)] == (0.1, 1e-5)
    assert hyper[id(net.gn.weight)] == (0.1, 1e-5)
    # A norm layer's bias follows the bias rule (detectron2's precedence).
    assert hyper[id(net.bn.bias)] == (0.2, 0.0)
    assert hyper[id(net.gn.bias)] == (0.2, 0.0)
    # Frozen parameters and buffers are not optimized.
    assert id(net.fc2.weight) not in hyper
    assert len(hyper) == 8


def test_at_most_one_group_per_hyperparameter_pair():
    groups = get_param_groups(
        Net(), base_lr=1.0, weight_decay=0.1, bias_lr_factor=1.0, weight_decay_bias=0.1,
        weight_decay_norm=0.1,
    )  # fmt: skip
    assert len(groups) == 1 and len(groups[0]["params"]) == 8


def test_none_means_weight_decay():
    net = Net()
    groups = get_param_groups(net, base_lr=1.0, weight_decay=0.3)
    hyper = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert hyper[id(net.bn.weight)] == (1.0, 0.3) and hyper[id(net.fc.bias)] == (1.0, 0.3)


def test_shared_parameter_counted_once():
    lin = nn.Linear(2, 2)
    net = nn.Sequential(lin, nn.ReLU(), lin)
    groups = get_param_groups(net, base_lr=1.0, weight_decay=0.0)
    assert sum(len(g["params"]) for g in groups) == 2


def test_sgd_step_by_hand():
    lin = nn.Linear(1, 1)
    with torch.no_grad():
        lin.weight.fill_(2.0)
        lin.bias.fill_(1.0)
    cfg = _cfg(BASE_LR=0.1, WEIGHT_DECAY=0.5, BIAS_LR_FACTOR=2.0, WEIGHT_DECAY_BIAS=0.0,
               MOMENTUM=0.9)  # fmt: skip
    opt = build_optimizer(cfg, lin)
    for step in range(2):
        opt.zero_grad()
        lin(torch.tensor([[3.0]])).sum().backward()  # d/dw = 3, d/db = 1
        opt.step()
        if step == 0:
            # w: 2 - 0.1 * (3 + 0.5 * 2) = 1.6; b: 1 - 0.2 * 1 = 0.8
            assert lin.weight.item() == pytest.approx(1.6)
            assert lin.bias.item() == pytest.approx(0.8)
    # step 2: buf_w = 0.9 * 4 + (3 + 0.5 * 1.6) = 7.4 -> w = 1.6 - 0.74 = 0.86
    #         buf_b = 0.9 * 1 + 1 = 1.9 -> b = 0.8 - 0.38 = 0.42
    assert lin.weight.item() == pytest.approx(0.86)
    assert lin.bias.item() == pytest.approx(0.42)


def test_no_trainable_parameter():
    net = nn.Linear(1, 1).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        build_optimizer(get_cfg(), net)


def test_default_groups_ours_and_maskrcnn_benchmarks(tmp_path):
    """Ours (detectron2's): biases at BASE_LR with WEIGHT_DECAY, norm layers undecayed. A
    maskrcnn_benchmark file (no VERSION) gets its make_optimizer: biases at 2x BASE_LR without
    decay, every other parameter (GroupNorm weights too) with WEIGHT_DECAY."""
    from detector.config import load_config

    net = Net()
    solver = "SOLVER:\n  BASE_LR: 0.1\n  WEIGHT_DECAY: 0.001\n"
    ours = tmp_path / "ours.yaml"
    ours.write_text("VERSION: 2\n" + solver)
    theirs = tmp_path / "e2e.yaml"
    theirs.write_text(solver)
    hyper = _hyper(build_optimizer(load_config(ours), net))
    assert hyper[id(net.conv.weight)] == (0.1, 0.001)
    assert hyper[id(net.conv.bias)] == (0.1, 0.001)
    assert hyper[id(net.gn.weight)] == (0.1, 0.0)
    assert hyper[id(net.gn.bias)] == (0.1, 0.0)  # WEIGHT_DECAY_BIAS None: the norm rule holds
    hyper = _hyper(build_optimizer(load_config(theirs), net))
    assert hyper[id(net.conv.weight)] == (0.1, 0.001)
    assert hyper[id(net.conv.bias)] == (0.2, 0.0)
    assert hyper[id(net.gn.weight)] == (0.1, 0.001)
    assert hyper[id(net.gn.bias)] == (0.2, 0.0)
