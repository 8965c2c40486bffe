"""Placeholder: this layer is being written."""

from torch import nn


class DeformConv2d(nn.Module):
    pass

