"""Detection operators backed by the compiled library (`torch.ops.detector.*`).

Signatures match torchvision.ops where torchvision has the op, so one can replace the other.
"""

# _autocast registers the autocast kernels, _library torch.ops.detector.*
from detector.ops import (
    _autocast,  # noqa: F401  # pyright: ignore[reportUnusedImport]
    _library,  # noqa: F401  # pyright: ignore[reportUnusedImport]
)
from detector.ops.boxes import batched_nms, nms
from detector.ops.deform_conv import deform_conv2d
from detector.ops.deform_roi_pool import deform_ps_roi_pool, deform_roi_pool
from detector.ops.paste_masks import paste_masks_in_image
from detector.ops.poolers import MultiScaleRoIAlign
from detector.ops.ps_roi_align import ps_roi_align
from detector.ops.ps_roi_pool import ps_roi_pool
from detector.ops.roi_align import multi_scale_roi_align, roi_align
from detector.ops.roi_pool import roi_pool
from detector.ops.winograd import winograd_conv3x3

__all__ = [
    "MultiScaleRoIAlign",
    "batched_nms",
    "deform_conv2d",
    "deform_ps_roi_pool",
    "deform_roi_pool",
    "multi_scale_roi_align",
    "nms",
    "paste_masks_in_image",
    "ps_roi_align",
    "ps_roi_pool",
    "roi_align",
    "roi_pool",
    "winograd_conv3x3",
]
