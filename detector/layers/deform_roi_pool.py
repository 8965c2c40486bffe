"""Placeholder: this layer is being written."""

from torch import nn


class DeformRoIPool(nn.Module):
    pass


class DeformPSRoIPool(nn.Module):
    pass

