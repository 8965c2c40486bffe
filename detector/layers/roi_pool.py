"""Placeholder: this layer is being written."""

from torch import nn


class RoIPool(nn.Module):
    pass

