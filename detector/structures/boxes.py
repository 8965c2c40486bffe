"""Axis-aligned boxes.

Boxes are `(x1, y1, x2, y2)` in pixels, float32, with no "+1": a box's width is `x2 - x1`. Image
sizes are `(height, width)`. Methods that change boxes return new `Boxes` and leave the input
unchanged.

Shapes: N boxes (and M in a second set).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from detector.structures.sizes import known_equal

__all__ = ["Boxes", "pairwise_iou"]


class Boxes:
    """A set of N boxes held as `tensor`, a float Tensor[N, 4] of `(x1, y1, x2, y2)`."""

    def __init__(self, tensor: Tensor | Sequence[Sequence[float]]) -> None:
        """Args:
        tensor: Tensor[N, 4] (or anything `torch.as_tensor` takes); integer values become
            float32, floating values keep their dtype. An empty input gives Tensor[0, 4].
        """
        device = tensor.device if isinstance(tensor, Tensor) else torch.device("cpu")
        tensor = torch.as_tensor(tensor, device=device)
        if not tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        if known_equal(tensor.numel(), 0):  # a traced unknown count is not taken to be 0
            tensor = tensor.reshape(0, 4)
        if tensor.dim() != 2 or tensor.shape[-1] != 4:
            raise ValueError(f"Boxes needs a Tensor[N, 4], got shape {tuple(tensor.shape)}")
        self.tensor = tensor

    # ----------------------------------------------------------------------------------------
    # Container protocol
    # ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, item: int | slice | Tensor | Sequence[int]) -> Boxes:
        """Boxes selected by an index (kept as one box), a slice, a bool mask or indices."""
        if isinstance(item, int):
            return Boxes(self.tensor[item].view(1, 4))
        selected = self.tensor[item]
        if selected.dim() != 2:
            raise IndexError(f"indexing Boxes with {item!r} did not give a Tensor[K, 4]")
        return Boxes(selected)

    def __iter__(self) -> Iterator[Tensor]:
        """Iterates over the boxes as Tensor[4]."""
        yield from self.tensor

    def __repr__(self) -> str:
        return f"Boxes({self.tensor})"

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def to(self, device: torch.device | str) -> Boxes:
        return Boxes(self.tensor.to(device))

    def clone(self) -> Boxes:
        return Boxes(self.tensor.clone())

    @staticmethod
    def cat(boxes_list: Sequence[Boxes]) -> Boxes:
        """Concatenates Boxes (an empty list gives empty Boxes)."""
        if len(boxes_list) == 0:
            return Boxes(torch.empty(0, 4))
        if not all(isinstance(b, Boxes) for b in boxes_list):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError("Boxes.cat takes a list of Boxes")
        return Boxes(torch.cat([b.tensor for b in boxes_list], dim=0))

    # ----------------------------------------------------------------------------------------
    # Geometry
    # ----------------------------------------------------------------------------------------
    @property
    def widths(self) -> Tensor:
        """Tensor[N]: x2 - x1."""
        return self.tensor[:, 2] - self.tensor[:, 0]

    @property
    def heights(self) -> Tensor:
        """Tensor[N]: y2 - y1."""
        return self.tensor[:, 3] - self.tensor[:, 1]

    def area(self) -> Tensor:
        """Tensor[N]: width * height (negative for inverted boxes; clip() first if needed)."""
        return self.widths * self.heights

    def centers(self) -> Tensor:
        """Tensor[N, 2]: (cx, cy)."""
        return (self.tensor[:, :2] + self.tensor[:, 2:]) / 2

    def clip(self, image_size: tuple[int, int]) -> Boxes:
        """Boxes clamped to the image: x into [0, width], y into [0, height].

        Args:
            image_size: (height, width).
        """
        height, width = image_size
        x1, y1, x2, y2 = self.tensor.unbind(dim=1)
        clipped = torch.stack(
            (x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)),
            dim=1,
        )
        return Boxes(clipped)

    def nonempty(self, threshold: float = 0.0) -> Tensor:
        """Tensor[N] bool: True where both width and height exceed `threshold`."""
        return (self.widths > threshold) & (self.heights > threshold)

    def scale(self, scale_x: float, scale_y: float) -> Boxes:
        """Boxes with x multiplied by `scale_x` and y by `scale_y` (as when resizing an image)."""
        factors = self.tensor.new_tensor([scale_x, scale_y, scale_x, scale_y])
        return Boxes(self.tensor * factors)

    def flip(self, image_width: float) -> Boxes:
        """Boxes of the horizontally flipped image: x -> image_width - x."""
        x1, y1, x2, y2 = self.tensor.unbind(dim=1)
        return Boxes(torch.stack((image_width - x2, y1, image_width - x1, y2), dim=1))

    def flip_vertical(self, image_height: float) -> Boxes:
        """Boxes of the vertically flipped image: y -> image_height - y."""
        x1, y1, x2, y2 = self.tensor.unbind(dim=1)
        return Boxes(torch.stack((x1, image_height - y2, x2, image_height - y1), dim=1))


def _as_tensor(boxes: Boxes | Tensor) -> Tensor:
    return boxes.tensor if isinstance(boxes, Boxes) else boxes


def pairwise_iou(boxes1: Boxes | Tensor, boxes2: Boxes | Tensor) -> Tensor:
    """Intersection over union of every pair: Tensor[N, M].

    The same values as `torchvision.ops.box_iou`, except that a pair whose union is empty (two
    empty boxes) gives 0 rather than NaN.

    Args:
        boxes1: N boxes (Boxes or Tensor[N, 4]).
        boxes2: M boxes (Boxes or Tensor[M, 4]).
    """
    b1, b2 = _as_tensor(boxes1), _as_tensor(boxes2)
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    top_left = torch.max(b1[:, None, :2], b2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.min(b1[:, None, 2:], b2[None, :, 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)  # (N, M, 2)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = area1[:, None] + area2[None, :] - inter
    return torch.where(inter > 0, inter / union, torch.zeros_like(inter))
