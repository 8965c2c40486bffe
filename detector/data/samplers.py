"""Samplers for iteration-based training and for inference.

Training draws from one infinite, seeded stream of image indices: the concatenation of
permutations of the dataset, permutation e drawn from a generator seeded with (seed, e). Rank r of
W processes takes every W-th entry starting at r. Each entry is yielded as `(index, sample_seed)`,
where sample_seed is derived from (seed, position in the stream), so the random augmentation of a
sample does not depend on the number of workers or on whether training was resumed.
`IterationBatchSampler(start_iter=s)` regenerates the same stream and skips its first s batches
(index arithmetic only, no image is read), so the batches after a resume are exactly those an
uninterrupted run would have drawn.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from detector.utils.arrays import tolist

__all__ = [
    "GroupedBatchSampler",
    "InferenceSampler",
    "IterationBatchSampler",
    "TrainingSampler",
    "get_rank_and_world_size",
]

Item = tuple[int, int]  # (dataset index, sample seed)


def get_rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, or (0, 1) when it is not initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sample_seed(seed: int, position: int) -> int:
    """A 63-bit seed for the sample at `position` of the global stream (SplitMix64 of both)."""
    mask = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + position + 1) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) >> 1


class TrainingSampler(Sampler[Item]):
    """An infinite stream of (index, sample_seed) for this rank.

    Args:
        size: the dataset's length.
        seed: the stream's seed (the same on every rank).
        shuffle: permute each epoch (else 0, 1, ..., size - 1 repeated).
        rank, world_size: this process's share; default from torch.distributed.
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if size <= 0:
            raise ValueError(f"TrainingSampler needs a non-empty dataset, got size {size}")
        default_rank, default_world = get_rank_and_world_size()
        self.size = size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} must lie in [0, world_size={self.world_size})")

    def _global_stream(self) -> Iterator[int]:
        for epoch in itertools.count():
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                yield from tolist(torch.randperm(self.size, generator=generator))
            else:
                yield from range(self.size)

    def __iter__(self) -> Iterator[Item]:
        stream = itertools.islice(self._global_stream(), self.rank, None, self.world_size)
        for k, index in enumerate(stream):
            position = k * self.world_size + self.rank
            yield index, _sample_seed(self.seed, position)


class GroupedBatchSampler(Sampler[list[Item]]):
    """Batches of `batch_size` items whose images share a group (e.g. landscape vs portrait),
    formed in stream order: an item waits in its group's buffer until the buffer is full.

    Args:
        sampler: yields (index, sample_seed) items (may be infinite).
        group_ids: the group of each dataset index.
        batch_size: images per batch.
    """

    def __init__(self, sampler: Sampler[Item], group_ids: Sequence[int], batch_size: int) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[Item]]:
        buffers: dict[int, list[Item]] = {}
        for item in self.sampler:
            group = self.group_ids[item[0]]
            buffer = buffers.setdefault(group, [])
            buffer.append(item)
            if len(buffer) == self.batch_size:
                yield buffer
                buffers[group] = []


class _PlainBatchSampler(Sampler[list[Item]]):
    """Consecutive items of `sampler` in batches of `batch_size` (the last partial one dropped)."""

    def __init__(self, sampler: Sampler[Item], batch_size: int) -> None:
        self.sampler = sampler
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[Item]]:
        iterator = iter(self.sampler)
        while batch := list(itertools.islice(iterator, self.batch_size)):
            if len(batch) < self.batch_size:
                return
            yield batch


class IterationBatchSampler(Sampler[list[Item]]):
    """Batches `start_iter` .. `max_iter - 1` of an (infinite) batch sampler.

    Args:
        sampler: yields (index, sample_seed) items.
        batch_size: images per batch on this rank.
        group_ids: the group of each dataset index, for aspect-ratio grouping; None: plain
            batches of consecutive items.
        max_iter: stop after this many batches in total (counting the skipped ones).
        start_iter: skip this many batches first (resume).
    """

    def __init__(
        self,
        sampler: Sampler[Item],
        batch_size: int,
        max_iter: int,
        start_iter: int = 0,
        group_ids: Sequence[int] | None = None,
    ) -> None:
        if not 0 <= start_iter:
            raise ValueError(f"start_iter must be >= 0, got {start_iter}")
        if group_ids is None:
            self.batch_sampler: Sampler[list[Item]] = _PlainBatchSampler(sampler, batch_size)
        else:
            self.batch_sampler = GroupedBatchSampler(sampler, group_ids, batch_size)
        self.max_iter = max_iter
        self.start_iter = start_iter

    def __iter__(self) -> Iterator[list[Item]]:
        return itertools.islice(iter(self.batch_sampler), self.start_iter, self.max_iter)

    def __len__(self) -> int:
        return max(self.max_iter - self.start_iter, 0)


class InferenceSampler(Sampler[int]):
    """Indices 0..size-1 split into contiguous, nearly equal shards, one per rank."""

    def __init__(self, size: int, rank: int | None = None, world_size: int | None = None) -> None:
        default_rank, default_world = get_rank_and_world_size()
        rank = default_rank if rank is None else rank
        world_size = default_world if world_size is None else world_size
        shard = (size + world_size - 1) // world_size
        self.indices = range(min(rank * shard, size), min((rank + 1) * shard, size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
