"""RPN losses over the sampled anchors of a batch.

Shapes:
    N: images, A: anchors of an image over all levels.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F


def rpn_losses(
    logits: Tensor, deltas: Tensor, labels: Tensor, targets: Tensor, smooth_l1_beta: float
) -> dict[str, Tensor]:
    """Binary cross-entropy on objectness and smooth L1 on positive anchors' deltas.

    Both are normalized by the number of sampled anchors (positive + negative), as in Faster R-CNN.

    Args:
        logits: (N, A) objectness logits. deltas: (N, A, 4) predicted deltas.
        labels: (N, A) in {1 positive, 0 negative, -1 ignored}. targets: (N, A, 4).
    """
    sampled = labels >= 0
    positive = labels > 0
    num_sampled = sampled.sum().clamp(min=1)
    loss_objectness = (
        F.binary_cross_entropy_with_logits(logits[sampled], labels[sampled], reduction="sum")
        / num_sampled
    )
    loss_box = (
        F.smooth_l1_loss(deltas[positive], targets[positive], beta=smooth_l1_beta, reduction="sum")
        / num_sampled
    )
    return {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}


def flatten_level_outputs(
    logits: list[Tensor], deltas: list[Tensor]
) -> tuple[list[Tensor], list[Tensor]]:
    """Reshapes per-level head outputs to the anchors' order (location-major, then anchor)."""
    flat_logits: list[Tensor] = []
    flat_deltas: list[Tensor] = []
    for lg, d in zip(logits, deltas, strict=True):
        n, a, h, w = lg.shape
        flat_logits.append(
            lg.permute(0, 2, 3, 1).reshape(n, h * w * a)
        )  # (N, A, H, W) -> (N, H*W*A)
        # (N, A*4, H, W) -> (N, A, 4, H, W) -> (N, H, W, A, 4) -> (N, H*W*A, 4)
        flat_deltas.append(d.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * a, 4))
    return flat_logits, flat_deltas
