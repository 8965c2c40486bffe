"""Placeholder: this layer is being written."""

from torch import nn


class PSRoIAlign(nn.Module):
    pass

