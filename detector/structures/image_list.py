"""A batch of images of different sizes, padded into one tensor.

Shapes: N images, C channels, H x W the padded size; each image's own size is (h_i, w_i).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from detector.structures.sizes import Size, as_size, known_greater

__all__ = ["ImageList"]


class ImageList:
    """Images padded (bottom and right) into `tensor`, a Tensor[N, C, H, W], with each image's
    size before padding in `image_sizes`, a list of (height, width)."""

    def __init__(self, tensor: Tensor, image_sizes: Sequence[tuple[Size, Size]]) -> None:
        if tensor.dim() != 4:
            raise ValueError(f"ImageList needs a Tensor[N, C, H, W], got {tuple(tensor.shape)}")
        if len(image_sizes) != tensor.shape[0]:
            raise ValueError(
                f"ImageList: {len(image_sizes)} image sizes for a batch of {tensor.shape[0]}"
            )
        height, width = tensor.shape[-2:]
        for i, (h, w) in enumerate(image_sizes):
            if known_greater(h, height) or known_greater(w, width):
                raise ValueError(
                    f"ImageList: image {i} ({h}, {w}) exceeds the tensor size {(height, width)}"
                )
        self.tensor = tensor
        self.image_sizes = [(as_size(h), as_size(w)) for h, w in image_sizes]

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, index: int) -> Tensor:
        """Image `index` without its padding: Tensor[C, h, w]."""
        height, width = self.image_sizes[index]
        return self.tensor[index, :, :height, :width]

    def __repr__(self) -> str:
        return f"ImageList(tensor={tuple(self.tensor.shape)}, image_sizes={self.image_sizes})"

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def to(self, device: torch.device | str) -> ImageList:
        return ImageList(self.tensor.to(device), self.image_sizes)

    @staticmethod
    def from_tensors(
        tensors: Sequence[Tensor], size_divisibility: int = 0, pad_value: float = 0.0
    ) -> ImageList:
        """Pads images to a common size and stacks them.

        Args:
            tensors: images, each a Tensor[C, h_i, w_i], with the same C, dtype and device.
            size_divisibility: when > 0, the padded H and W are rounded up to a multiple of it
                (e.g. 32 for FPN, whose coarsest level has stride 32).
            pad_value: the value of the padding.

        Returns:
            An ImageList whose tensor is Tensor[N, C, H, W].
        """
        if len(tensors) == 0:
            raise ValueError("ImageList.from_tensors needs at least one image")
        if size_divisibility < 0:
            raise ValueError(f"size_divisibility must be >= 0, got {size_divisibility}")
        first = tensors[0]
        for i, t in enumerate(tensors):
            # A caller may pass anything: check.
            if not isinstance(t, Tensor) or t.dim() != 3:  # pyright: ignore[reportUnnecessaryIsInstance]
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__  # pyright: ignore[reportUnnecessaryIsInstance]
                raise ValueError(f"image {i}: expected a Tensor[C, H, W], got {shape}")
            if t.shape[0] != first.shape[0] or t.dtype != first.dtype or t.device != first.device:
                raise ValueError(
                    f"image {i}: {tuple(t.shape)} {t.dtype} {t.device} differs from image 0: "
                    f"{tuple(first.shape)} {first.dtype} {first.device}"
                )
        image_sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        max_height = max(h for h, _ in image_sizes)
        max_width = max(w for _, w in image_sizes)
        if size_divisibility > 0:
            max_height = -(-max_height // size_divisibility) * size_divisibility
            max_width = -(-max_width // size_divisibility) * size_divisibility
        batch_shape = (len(tensors), first.shape[0], max_height, max_width)
        batch = first.new_full(batch_shape, pad_value)
        for padded, image in zip(batch, tensors, strict=True):
            padded[:, : image.shape[-2], : image.shape[-1]].copy_(image)
        return ImageList(batch, image_sizes)
