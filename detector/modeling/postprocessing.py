"""The inference boundary: one image's detections mapped from the network input to the original
image. Evaluation (`detector.evaluation.inference_on_dataset`), `detector.Predictor` and the
exported models' Python users all call `detector_postprocess`.

    model output, image_size (h, w) --detector_postprocess--> image_size (H, W)

Each field of the output has one rule in `_FIELD_RULES` (boxes are scaled and clipped, mask
probabilities pasted, the rest copied); a new per-detection field (e.g. keypoints) is one more
rule there.

Shapes: R detections (or proposals) of one image; (h, w) the size of the image the model saw
(after the test transforms); (H, W) the original image size; M the mask head's resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from detector.modeling.roi_heads.keypoint_head.inference import scale_keypoints
from detector.ops.paste_masks import paste_masks_in_image
from detector.structures import Boxes, Instances

__all__ = ["detector_postprocess"]


@dataclass(frozen=True)
class _Target:
    """What the field rules need: the scale from input to original pixels and the original
    size (H, W), the boxes already mapped (for masks) and the mask threshold."""

    scale_x: float
    scale_y: float
    size: tuple[int, int]
    boxes: Boxes | None
    mask_threshold: float


def _map_boxes(boxes: Boxes, target: _Target) -> Boxes:
    return boxes.scale(target.scale_x, target.scale_y).clip(target.size)


def _copy(value: Tensor, target: _Target) -> Tensor:
    return value


def _paste_masks(probabilities: Tensor, target: _Target) -> Tensor:
    """(R, 1, M, M) probabilities -> (R, H, W) bool, pasted at the mapped pred_boxes."""
    if probabilities.dim() != 4 or probabilities.shape[1] != 1:
        raise ValueError(
            "detector_postprocess: pred_masks must be (R, 1, M, M) probabilities, got "
            f"{tuple(probabilities.shape)}"
        )
    if target.boxes is None:
        raise ValueError("detector_postprocess: pred_masks (R, 1, M, M) need pred_boxes")
    if len(probabilities) == 0:
        return torch.zeros((0, *target.size), dtype=torch.bool, device=probabilities.device)
    return paste_masks_in_image(
        probabilities, target.boxes.tensor, target.size, threshold=target.mask_threshold
    )


def _map_keypoints(keypoints: Tensor, target: _Target) -> Tensor:
    """(R, K, 3) x, y, score: x and y scaled (not clipped, as torchvision), scores kept."""
    return scale_keypoints(keypoints, target.scale_x, target.scale_y)


_FIELD_RULES: dict[str, Callable[..., object]] = {
    "pred_boxes": _map_boxes,
    "proposal_boxes": _map_boxes,
    "scores": _copy,
    "pred_classes": _copy,
    "objectness_logits": _copy,
    "pred_masks": _paste_masks,  # after pred_boxes: it pastes at the mapped boxes
    "pred_keypoints": _map_keypoints,
}


def detector_postprocess(
    result: Instances, height: int, width: int, mask_threshold: float = 0.5
) -> Instances:
    """Maps one image's detections from the network input (`result.image_size`, (h, w)) to
    the original image (height, width).

    Boxes (pred_boxes, proposal_boxes) are scaled by (width / w, height / h) and clipped to the
    original image; pred_masks, (R, 1, M, M) probabilities, are pasted at the mapped boxes and
    cut at `mask_threshold` into (R, H, W) bool; pred_keypoints (R, K, 3) have x and y scaled;
    scores, classes and objectness are copied.
    Fields without a rule are not carried over.

    Returns:
        A new Instances of image_size (height, width).
    """
    in_height, in_width = result.image_size
    size = (int(height), int(width))
    out = Instances(size)
    target = _Target(width / in_width, height / in_height, size, None, mask_threshold)
    for name, rule in _FIELD_RULES.items():
        if result.has(name):
            setattr(out, name, rule(getattr(result, name), target))
            if name == "pred_boxes":
                target = replace(target, boxes=out.pred_boxes)
    return out
