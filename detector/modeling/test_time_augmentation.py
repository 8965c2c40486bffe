"""Test-time augmentation of a GeneralizedRCNN (TEST.BBOX_AUG, maskrcnn_benchmark's keys).

Each image is run at its test size, flipped (H_FLIP), and at every size of SCALES (shorter
side, the longer one within MAX_SIZE), each of those flipped too with SCALE_H_FLIP. Every run
gives the box head's candidates before any filtering: all R proposals with the boxes and scores
of all K classes. They are mapped back to the test-size image (unflipped, rescaled) and merged
as maskrcnn_benchmark's `im_detect_bbox_aug` does: concatenated, then one score threshold,
per-class NMS and DETECTIONS_PER_IMG pass over the union. With VOTE_IOU > 0 each kept box is then
replaced by the score-weighted mean of the candidates of its class that overlap it that much
(Detectron's box voting; scores unchanged). A Mask (Keypoint) R-CNN then predicts the masks
(keypoints) of the merged boxes from the test-size image's features (maskrcnn_benchmark has no
mask or keypoint TTA).

Other scales are resampled from the test-size image the inference loop gives (antialiased
bilinear), not from the original file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn

from detector.config import Config
from detector.data.transforms import get_output_size
from detector.modeling.detector import GeneralizedRCNN, as_float32
from detector.modeling.per_image import required
from detector.structures import Boxes, Instances, pairwise_iou
from detector.utils.precision import autocast

__all__ = ["DetectorWithTTA", "maybe_with_tta", "vote_boxes"]


class DetectorWithTTA(nn.Module):
    """Eval-mode wrapper: `forward(images)` -> one Instances per image, as the model's own.

    Args:
        model: a GeneralizedRCNN with RoI heads (not RPN-only).
        h_flip: also run the horizontally flipped test-size image.
        scales: shorter sides of extra runs; `max_size` caps their longer side.
        scale_h_flip: also run each extra scale flipped.
        vote_iou: box voting's IoU threshold (0: no voting).
    """

    def __init__(
        self,
        model: GeneralizedRCNN,
        *,
        h_flip: bool = False,
        scales: Sequence[int] = (),
        max_size: int = 4000,
        scale_h_flip: bool = False,
        vote_iou: float = 0.0,
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
        self.vote_iou = float(vote_iou)

    def forward(self, images: list[Tensor]) -> list[Instances]:
        if self.training:
            raise RuntimeError("DetectorWithTTA is for inference; call .eval()")
        with autocast(self.model.precision, self.model.pixel_mean.device):
            return [as_float32(self._detect_one(image)) for image in images]

    def _detect_one(self, image: Tensor) -> Instances:
        size = (int(image.shape[-2]), int(image.shape[-1]))
        boxes: list[Tensor] = []  # per run (R, 4K)
        scores: list[Tensor] = []  # per run (R, K)
        reference_features: list[Tensor] | None = None
        for scale, flipped in self.runs:
            features, run_boxes, run_scores = self._candidates(image, size, scale, flipped)
            if scale is None and not flipped:
                reference_features = features
            boxes.append(run_boxes)
            scores.append(run_scores)
        heads = self.model.roi_heads
        assert heads is not None  # checked in __init__
        all_boxes, all_scores = torch.cat(boxes), torch.cat(scores)  # (N, 4K), (N, K)
        merged = heads.post_processor.detections(all_boxes, all_scores, size)
        if self.vote_iou > 0:
            threshold = heads.post_processor.score_thresh
            merged = vote_boxes(merged, all_boxes, all_scores, self.vote_iou, threshold)
        assert reference_features is not None
        if heads.mask_head is not None:
            (merged,), _ = heads.mask_head(reference_features, [merged])
        if heads.keypoint_head is not None:
            (merged,), _ = heads.keypoint_head(reference_features, [merged])
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


def vote_boxes(
    kept: Instances, boxes: Tensor, scores: Tensor, iou: float, score_thresh: float
) -> Instances:
    """Box voting: each kept box (class c) becomes the score-weighted mean of the candidate boxes
    of class c (`boxes` (N, 4K), `scores` (N, K), those scoring above `score_thresh`, clipped
    to the image) whose IoU with it is >= `iou`; it is one of them, so it keeps its place when
    alone. Scores and classes are unchanged."""
    if len(kept) == 0:
        return kept
    size = kept.image_size
    num_classes = scores.shape[1]
    candidates = Boxes(boxes.reshape(-1, 4)).clip(size).tensor.view(-1, num_classes, 4)
    voted = required(kept.pred_boxes, "pred_boxes").tensor.clone()  # (D, 4)
    classes = required(kept.pred_classes, "pred_classes")  # (D,)
    # Tensor.unique and tolist are untyped in torch; int64 classes give a list of ints
    labels = cast(list[int], classes.unique().tolist())  # pyright: ignore[reportUnknownMemberType]
    for label in labels:
        rows = torch.nonzero(classes == label).squeeze(1)
        above = scores[:, label] > score_thresh
        pool, weights = candidates[above, label], scores[above, label]  # (M, 4), (M,)
        overlap = (pairwise_iou(Boxes(voted[rows]), Boxes(pool)) >= iou).to(weights.dtype)
        weighted = overlap * weights  # (d, M)
        voted[rows] = (weighted @ pool) / weighted.sum(1, keepdim=True).clamp(min=1e-12)
    kept.pred_boxes = Boxes(voted)
    return kept


def maybe_with_tta(model: nn.Module, cfg: Config) -> nn.Module:
    """`model` wrapped in DetectorWithTTA when TEST.BBOX_AUG.ENABLED, else `model` itself."""
    aug = cfg.TEST.BBOX_AUG
    if not aug.ENABLED:
        return model
    return DetectorWithTTA(
        cast(GeneralizedRCNN, model),  # TTA is for this package's detector
        h_flip=aug.H_FLIP,
        scales=list(aug.SCALES),
        max_size=int(aug.MAX_SIZE),
        scale_h_flip=bool(aug.SCALE_H_FLIP),
        vote_iou=float(aug.VOTE_IOU),
    )
