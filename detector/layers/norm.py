"""Normalization layers by config name: MODEL.RESNETS.NORM and MODEL.FPN.USE_GN."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from detector.layers.batch_norm import FrozenBatchNorm2d

NormFactory = Callable[[int], nn.Module]
"""A callable mapping a channel count to a normalization module."""

NORM_NAMES = ("FrozenBN", "BN", "SyncBN", "GN")


def get_norm(name: str, channels: int, *, num_groups: int = 32, eps: float = 1e-5) -> nn.Module:
    """Returns the normalization layer `name` for `channels` channels.

    Args:
        name: "FrozenBN" (FrozenBatchNorm2d), "BN" (nn.BatchNorm2d), "SyncBN" (nn.SyncBatchNorm)
            or "GN" (nn.GroupNorm with `num_groups` groups, MODEL.GROUP_NORM.NUM_GROUPS).
        channels: the number of channels C of the ``(N, C, H, W)`` input.
        num_groups: GroupNorm's number of groups; must divide `channels`.
        eps: GroupNorm's epsilon (MODEL.GROUP_NORM.EPSILON).
    """
    if name == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if name == "BN":
        return nn.BatchNorm2d(channels)
    if name == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if name == "GN":
        if channels % num_groups != 0:
            raise ValueError(
                f"GroupNorm: {channels} channels are not divisible into {num_groups} groups; "
                f"set MODEL.GROUP_NORM.NUM_GROUPS to a divisor of {channels}"
            )
        return nn.GroupNorm(num_groups, channels, eps=eps)
    raise ValueError(f"unknown norm '{name}' (MODEL.RESNETS.NORM); known: {', '.join(NORM_NAMES)}")


def norm_factory(
    norm: str | NormFactory, *, num_groups: int = 32, eps: float = 1e-5
) -> NormFactory:
    """Turns a norm name (see `get_norm`) or a factory into a ``channels -> module`` factory."""
    if callable(norm):
        return norm
    if norm not in NORM_NAMES:
        raise ValueError(f"unknown norm '{norm}'; known: {', '.join(NORM_NAMES)}")
    return partial(get_norm, norm, num_groups=num_groups, eps=eps)
