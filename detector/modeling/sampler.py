"""Samples a fixed-size, class-balanced subset of labelled anchors or RoIs per image."""

from __future__ import annotations

import torch
from torch import Tensor


class BalancedPositiveNegativeSampler:
    """Picks up to ``batch_size_per_image * positive_fraction`` positives per image, and fills
    the rest of the batch with negatives.

    Labels: >= 1 positive, 0 negative, -1 ignored. A `torch.Generator` makes the draw
    reproducible.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        if batch_size_per_image < 0 or not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(
                "BalancedPositiveNegativeSampler: batch_size_per_image must be >= 0 and "
                f"positive_fraction in [0, 1], got {batch_size_per_image}, {positive_fraction}"
            )
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(
        self, labels: list[Tensor], generator: torch.Generator | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """For each image's labels ``(M_i,)``, bool masks ``(M_i,)`` of sampled positives and
        of sampled negatives."""
        positive_masks: list[Tensor] = []  # per image (M_i,) bool
        negative_masks: list[Tensor] = []
        for image_labels in labels:
            positive = torch.nonzero(image_labels >= 1).squeeze(1)
            negative = torch.nonzero(image_labels == 0).squeeze(1)
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            chosen_pos = positive[self._randperm(positive.numel(), generator, positive)[:num_pos]]
            chosen_neg = negative[self._randperm(negative.numel(), generator, negative)[:num_neg]]
            positive_mask = torch.zeros_like(image_labels, dtype=torch.bool)
            negative_mask = torch.zeros_like(image_labels, dtype=torch.bool)
            positive_mask[chosen_pos] = True
            negative_mask[chosen_neg] = True
            positive_masks.append(positive_mask)
            negative_masks.append(negative_mask)
        return positive_masks, negative_masks

    @staticmethod
    def _randperm(n: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
        """A permutation of range(n) on `like`'s device, drawn on the generator's device."""
        device = generator.device if generator is not None else like.device
        return torch.randperm(n, generator=generator, device=device).to(like.device)
