"""Placeholder: this layer is being written."""

from torch import nn


class PSRoIPool(nn.Module):
    pass

