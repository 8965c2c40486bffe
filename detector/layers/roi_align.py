"""Placeholder: this layer is being written."""

from torch import nn


class RoIAlign(nn.Module):
    pass

