"""nn.Modules over the compiled ops, and normalization layers used by the backbones."""

from detector.layers.batch_norm import FrozenBatchNorm2d
from detector.layers.conv import Conv2d, msra_fill
from detector.layers.deform_conv import DeformConv2d
from detector.layers.deform_roi_pool import DeformPSRoIPool, DeformRoIPool
from detector.layers.norm import NormFactory, get_norm, norm_factory
from detector.layers.ps_roi_align import PSRoIAlign
from detector.layers.ps_roi_pool import PSRoIPool
from detector.layers.roi_align import RoIAlign
from detector.layers.roi_pool import RoIPool

__all__ = [
    "Conv2d",
    "DeformConv2d",
    "DeformPSRoIPool",
    "DeformRoIPool",
    "FrozenBatchNorm2d",
    "NormFactory",
    "PSRoIAlign",
    "PSRoIPool",
    "RoIAlign",
    "RoIPool",
    "get_norm",
    "msra_fill",
    "norm_factory",
]
