"""Matches predictions (anchors, proposals) to ground-truth boxes by a quality matrix (IoU).

Shape glossary: G ground-truth boxes, P predictions.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Matcher:
    """For each prediction, the index of its best ground truth, or a negative code.

    A prediction whose best quality is below `low_threshold` gets BELOW_LOW_THRESHOLD (-1), one
    in ``[low_threshold, high_threshold)`` gets BETWEEN_THRESHOLDS (-2). With
    `allow_low_quality_matches`, each ground truth also keeps the predictions that match it best
    (ties included), whatever their quality (Faster R-CNN's RPN rule). As torchvision's
    det_utils.Matcher; with no ground truth every prediction is BELOW_LOW_THRESHOLD.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(
        self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False
    ) -> None:
        if low_threshold > high_threshold:
            raise ValueError(
                f"Matcher: low_threshold {low_threshold} > high_threshold {high_threshold}"
            )
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        """``(G, P)`` qualities -> ``(P,)`` int64 matched gt index or -1 / -2."""
        num_gt, num_pred = match_quality_matrix.shape
        if num_gt == 0:
            return torch.full(
                (num_pred,),
                self.BELOW_LOW_THRESHOLD,
                dtype=torch.int64,
                device=match_quality_matrix.device,
            )
        if num_pred == 0:
            return torch.empty(0, dtype=torch.int64, device=match_quality_matrix.device)
        matched_vals, matches = match_quality_matrix.max(dim=0)
        all_matches = matches.clone() if self.allow_low_quality_matches else None
        below = matched_vals < self.low_threshold
        between = (matched_vals >= self.low_threshold) & (matched_vals < self.high_threshold)
        matches[below] = self.BELOW_LOW_THRESHOLD
        matches[between] = self.BETWEEN_THRESHOLDS
        if all_matches is not None:
            self._set_low_quality_matches(matches, all_matches, match_quality_matrix)
        return matches

    @staticmethod
    def _set_low_quality_matches(
        matches: Tensor, all_matches: Tensor, match_quality_matrix: Tensor
    ) -> None:
        """Restores, for each gt, the predictions of its highest quality (ties included)."""
        best_per_gt = match_quality_matrix.max(dim=1).values
        _, pred_indices = torch.nonzero(match_quality_matrix == best_per_gt[:, None], as_tuple=True)
        matches[pred_indices] = all_matches[pred_indices]
