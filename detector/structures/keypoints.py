"""Per-instance keypoints (x, y, visibility), as in COCO's person keypoints.

`Keypoints` holds N instances x K keypoints as a float32 Tensor[N, K, 3]: (x, y) in the image's
pixel coordinates (continuous, as COCO stores them) and v the COCO visibility flag (0: not
labeled, 1: labeled but not visible, 2: visible). Only v > 0 keypoints are used, for training
and for OKS. A horizontal flip mirrors x and swaps left/right keypoints through `flip_indices`
(flip_indices[k] is the keypoint that k becomes, e.g. left_eye <-> right_eye), which the
dataset that creates the keypoints gives them, so every transform can flip them without knowing
the dataset.

Shapes: N instances, K keypoints per instance.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Keypoints", "flip_indices_from_pairs"]


def flip_indices_from_pairs(
    names: Sequence[str], pairs: Sequence[Sequence[str]], where: str = "keypoint flip map"
) -> tuple[int, ...]:
    """flip_indices from left/right name pairs: each pair swaps, every other keypoint stays.

    Args:
        names: the K keypoint names.
        pairs: [(left_name, right_name), ...]; a name may appear in one pair only.
        where: the config key or file the pairs come from, for error messages.

    Raises:
        ValueError: a pair that is not two different known names, or a name in two pairs.
    """
    index = {name: k for k, name in enumerate(names)}
    flip = list(range(len(names)))
    seen: set[str] = set()
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ValueError(f"{where}: {list(pair)} is not a pair of two different keypoints")
        for name in pair:
            if name not in index:
                raise ValueError(f"{where}: unknown keypoint '{name}' (keypoints: {list(names)})")
            if name in seen:
                raise ValueError(f"{where}: keypoint '{name}' is in more than one pair")
            seen.add(name)
        first, second = index[pair[0]], index[pair[1]]
        flip[first], flip[second] = second, first
    return tuple(flip)


class Keypoints:
    """N instances x K keypoints, Tensor[N, K, 3] of (x, y, v), with an optional flip map."""

    def __init__(self, tensor: Tensor, flip_indices: Sequence[int] | None = None) -> None:
        """Args:
        tensor: Tensor[N, K, 3] (converted to float32), or array-like of that shape.
        flip_indices: K indices, the keypoint each one becomes in a horizontal flip (a
            permutation that is its own inverse); None: the keypoints cannot be flipped.
        """
        tensor = torch.as_tensor(tensor, dtype=torch.float32)
        if tensor.dim() != 3 or tensor.shape[-1] != 3:
            raise ValueError(f"Keypoints: expected a (N, K, 3) tensor, got {tuple(tensor.shape)}")
        self.tensor = tensor
        self.flip_indices = None if flip_indices is None else tuple(int(k) for k in flip_indices)
        if self.flip_indices is not None:
            self._check_flip_indices(self.flip_indices, tensor.shape[1])

    @staticmethod
    def _check_flip_indices(flip: tuple[int, ...], num_keypoints: int) -> None:
        if len(flip) != num_keypoints or sorted(flip) != list(range(num_keypoints)):
            raise ValueError(
                f"Keypoints: flip_indices {list(flip)} is not a permutation of the "
                f"{num_keypoints} keypoints"
            )
        if any(flip[flip[k]] != k for k in range(num_keypoints)):
            raise ValueError(f"Keypoints: flip_indices {list(flip)} does not pair keypoints up")

    # -- container protocol ----------------------------------------------------------------
    def __len__(self) -> int:
        return self.tensor.shape[0]

    @property
    def num_keypoints(self) -> int:
        """K."""
        return self.tensor.shape[1]

    def __getitem__(self, item: int | slice | Tensor | Sequence[int]) -> Keypoints:
        """The instances selected by an index (kept as one instance), a slice, a bool mask or
        indices."""
        if isinstance(item, int):
            item = slice(item, item + 1) if item != -1 else slice(item, None)
        return Keypoints(self.tensor[item], self.flip_indices)

    def __repr__(self) -> str:
        return f"Keypoints(num_instances={len(self)}, num_keypoints={self.num_keypoints})"

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def to(self, device: torch.device | str) -> Keypoints:
        return Keypoints(self.tensor.to(device), self.flip_indices)

    @staticmethod
    def cat(keypoints_list: Sequence[Keypoints]) -> Keypoints:
        """Concatenates keypoints with the same K and flip map."""
        first = keypoints_list[0]
        for other in keypoints_list[1:]:
            if other.num_keypoints != first.num_keypoints:
                raise ValueError("Keypoints.cat: different numbers of keypoints")
        return Keypoints(torch.cat([k.tensor for k in keypoints_list]), first.flip_indices)

    # -- geometry --------------------------------------------------------------------------
    def scale(self, scale_x: float, scale_y: float) -> Keypoints:
        """Coordinates scaled as the image is resized (x by scale_x, y by scale_y)."""
        tensor = self.tensor.clone()
        tensor[..., 0] *= scale_x
        tensor[..., 1] *= scale_y
        return Keypoints(tensor, self.flip_indices)

    def flip(self, image_width: float) -> Keypoints:
        """The keypoints of the horizontally flipped image: x -> width - x, and each keypoint
        swapped with its partner of the flip map."""
        if self.flip_indices is None:
            raise ValueError(
                "Keypoints.flip: these keypoints have no flip map (left/right pairs); declare one "
                "for the dataset (DATASETS.CUSTOM.<name>.KEYPOINT_FLIP_MAP)"
            )
        tensor = self.tensor[:, list(self.flip_indices)].clone()  # swap left and right
        tensor[..., 0] = image_width - tensor[..., 0]
        return Keypoints(tensor, self.flip_indices)

    def flip_vertical(self, image_height: float) -> Keypoints:
        """Refused: a vertical flip would need a top/bottom map that datasets do not have."""
        raise ValueError(
            "keypoints cannot be flipped vertically (there is no top/bottom keypoint map); set "
            "INPUT.VERTICAL_FLIP_PROB_TRAIN 0 for keypoint datasets"
        )
