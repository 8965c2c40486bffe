"""Test-time augmentation of a GeneralizedRCNN (TEST.BBOX_AUG, maskrcnn_benchmark's keys).

Each image is run at its test size, flipped (H_FLIP), and at every size of SCALES (shorter
side, the longer one within MAX_SIZE), each of those flipped too with SCALE_H_FLIP. Every run
gives the box head's candidates before any filtering: all R proposals with the boxes and scores
of all K classes. They are mapped back to the test-size image (unflipped, rescaled) and merged
as maskrcnn_benchmark's `im_detect_bbox_aug` does: concatenated, then one score threshold,
per-class NMS and DETECTIONS_PER_IMG pass over the union. A Mask R-CNN then predicts the masks
of the merged boxes from the test-size image's features (maskrcnn_benchmark has no mask TTA).

Other scales are resampled from the test-size image the inference loop gives (antialiased
bilinear), not from the original file.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn

from detector.config import Config
from detector.data.transforms import get_output_size
from detector.structures import Instances

__all__ = ["DetectorWithTTA", "maybe_with_tta"]


class DetectorWithTTA(nn.Module):
    """Eval-mode wrapper: `forward(images)` -> one Instances per image, as the model's own.

    Args:
        model: a GeneralizedRCNN with RoI heads (not RPN-only).
        h_flip: also run the horizontally flipped test-size image.
        scales: shorter sides of extra runs; `max_size` caps their longer side.
        scale_h_flip: also run each extra scale flipped.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        h_flip: bool = False,
        scales: Sequence[int] = (),
        max_size: int = 4000,
        scale_h_flip: bool = False,
    ) -> None:
        super().__init__()
        if getattr(model, "roi_heads", None) is None:
            raise ValueError("test-time augmentation (TEST.BBOX_AUG) needs a model with box heads")
        self.model = model
        self.runs: list[tuple[int | None, bool]] = [(None, False)]  # (shorter side, flipped)
        if h_flip:
            self.runs.append((None, True))
        for scale in scales:
            self.runs.append((int(scale), False))
            if scale_h_flip:
                self.runs.append((int(scale), True))
        self.max_size = int(max_size)

    def forward(self, images: list[Tensor]) -> list[Instances]:
        if self.training:
            raise RuntimeError("DetectorWithTTA is for inference; call .eval()")
        return [self._detect_one(image) for image in images]

    def _detect_one(self, image: Tensor) -> Instances:
        size = (int(image.shape[-2]), int(image.shape[-1]))
        boxes, scores, reference_features = [], [], None
        for scale, flipped in self.runs:
            features, run_boxes, run_scores = self._candidates(image, size, scale, flipped)
            if scale is None and not flipped:
                reference_features = features
            boxes.append(run_boxes)
            scores.append(run_scores)
        heads = self.model.roi_heads
        merged = heads.post_processor.detections(torch.cat(boxes), torch.cat(scores), size)
        if heads.mask_head is not None:
            assert reference_features is not None
            (merged,), _ = heads.mask_head(reference_features, [merged])
        return merged

    def _candidates(
        self, image: Tensor, size: tuple[int, int], scale: int | None, flipped: bool
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """One run: (features, boxes (R, 4K) in the test-size image, scores (R, K))."""
        run_image = image
        if scale is not None:
            run_size = get_output_size(*size, scale, self.max_size)
            run_image = TF.resize(image, list(run_size), antialias=True)
        if flipped:
            run_image = run_image.flip(-1)
        features, ((boxes, scores),) = self.model.box_candidates([run_image])
        boxes = boxes.view(boxes.shape[0], -1, 4)  # (R, K, 4) in the run image's pixels
        run_h, run_w = run_image.shape[-2:]
        if flipped:
            boxes = torch.stack(
                [run_w - boxes[..., 2], boxes[..., 1], run_w - boxes[..., 0], boxes[..., 3]], -1
            )
        factors = boxes.new_tensor([size[1] / run_w, size[0] / run_h] * 2)
        return features, (boxes * factors).reshape(boxes.shape[0], -1), scores


def maybe_with_tta(model: nn.Module, cfg: Config) -> nn.Module:
    """`model` wrapped in DetectorWithTTA when TEST.BBOX_AUG.ENABLED, else `model` itself."""
    aug = cfg.TEST.BBOX_AUG
    if not aug.ENABLED:
        return model
    return DetectorWithTTA(
        model,
        h_flip=aug.H_FLIP,
        scales=list(aug.SCALES),
        max_size=aug.MAX_SIZE,
        scale_h_flip=aug.SCALE_H_FLIP,
    )
