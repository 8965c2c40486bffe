"""Keypoint predictors: keypoint features -> one heatmap of logits per keypoint.

- "KeypointRCNNPredictor" (Keypoint R-CNN, He et al. 2017, Sec. 5): a 4x4 stride-2 transposed
  conv (`kps_score_lowres`, maskrcnn_benchmark's and torchvision's name) to K maps, then a 2x
  bilinear upsampling (align_corners=False): 14x14 pooled -> 28 -> 56x56 heatmaps.

Shapes: R RoIs, C channels, S the feature side, K keypoints.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from detector.layers import msra_fill
from detector.modeling.registry import ROI_KEYPOINT_PREDICTORS

__all__ = ["KeypointRCNNPredictor"]


@ROI_KEYPOINT_PREDICTORS.register("KeypointRCNNPredictor")
class KeypointRCNNPredictor(nn.Module):
    """``(R, C, S, S) -> (R, K, 4 S, 4 S)`` keypoint heatmap logits.

    Args:
        in_channels: C.
        num_keypoints: K.
    """

    # The output side over the input side.
    upsample = 4

    def __init__(self, in_channels: int, num_keypoints: int) -> None:
        super().__init__()
        self.kps_score_lowres = nn.ConvTranspose2d(
            in_channels, num_keypoints, kernel_size=4, stride=2, padding=1
        )
        msra_fill(self.kps_score_lowres)
        self.num_keypoints = num_keypoints

    def forward(self, x: Tensor) -> Tensor:
        x = self.kps_score_lowres(x)  # (R, C, S, S) -> (R, K, 2 S, 2 S)
        return F.interpolate(
            x, scale_factor=2.0, mode="bilinear", align_corners=False, recompute_scale_factor=False
        )  # (R, K, 2 S, 2 S) -> (R, K, 4 S, 4 S)
