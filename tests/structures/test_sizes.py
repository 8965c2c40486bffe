"""Size helpers that keep torch.export's symbolic sizes symbolic and plain sizes plain."""

from __future__ import annotations

import torch
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from detector.structures import Boxes, Instances, as_size, known_equal, known_greater


def test_plain_sizes_behave_as_ints() -> None:
    assert as_size(torch.tensor(3)) == 3 and isinstance(as_size(torch.tensor(3)), int)
    assert known_equal(0, 0) and not known_equal(1, 0)
    assert known_greater(5, 4) and not known_greater(4, 4)


def test_symbolic_sizes_stay_symbolic_and_add_no_guard() -> None:
    env = ShapeEnv()
    count = env.create_unbacked_symint()  # a detection count, as NMS returns
    torch._check(count >= 0)
    assert as_size(count) is count
    assert not known_equal(count, 0)  # unknown: not taken to be 0
    assert known_equal(count + 0, count)
    assert known_greater(count + 1, count)
    assert not known_greater(count, 3)  # unknown either way
    assert not env.guards


def test_num_instances_counts_like_len() -> None:
    boxes = Boxes(torch.zeros(3, 4))
    instances = Instances((10, 10), pred_boxes=boxes, scores=torch.zeros(3))
    assert instances.num_instances == len(instances) == 3
    assert Instances((10, 10)).num_instances == 0
