import torch

from detector.modeling.sampler import BalancedPositiveNegativeSampler


def test_counts_and_ignored():
    labels = torch.tensor([1] * 10 + [0] * 30 + [-1] * 20)
    sampler = BalancedPositiveNegativeSampler(16, 0.25)
    (pos,), (neg,) = sampler([labels])
    assert pos.dtype == torch.bool and pos.shape == labels.shape
    assert int(pos.sum()) == 4 and int(neg.sum()) == 12
    assert (labels[pos] >= 1).all() and (labels[neg] == 0).all() and not (pos & neg).any()


def test_few_positives_are_filled_with_negatives():
    labels = torch.tensor([2, 0, 0, 0, 0, 0, -1])
    (pos,), (neg,) = BalancedPositiveNegativeSampler(4, 0.5)([labels])
    assert int(pos.sum()) == 1 and int(neg.sum()) == 3
    (pos,), (neg,) = BalancedPositiveNegativeSampler(16, 0.5)([torch.full((5,), -1)])
    assert not pos.any() and not neg.any()


def test_generator_makes_it_reproducible():
    labels = [torch.randint(-1, 2, (200,)), torch.randint(-1, 2, (50,))]
    sampler = BalancedPositiveNegativeSampler(32, 0.5)
    first = sampler(labels, generator=torch.Generator().manual_seed(3))
    second = sampler(labels, generator=torch.Generator().manual_seed(3))
    for a, b in zip(first[0] + first[1], second[0] + second[1], strict=True):
        assert torch.equal(a, b)
