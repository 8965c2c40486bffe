"""Instance masks: COCO polygons (`PolygonMasks`) and bitmaps (`BitMasks`).

Both hold N instances and share an interface: len, indexing, `cat`, `to`, `area`, `scale`,
`flip`, `get_bounding_boxes`, `to_bitmasks` and `crop_and_resize`, which makes the mask head's
targets. Coordinates are continuous pixel coordinates: pixel (row i, column j) covers
[j, j + 1) x [i, i + 1), so flipping maps x to `width - x` for polygons, boxes and bitmaps alike.

Shapes: N instances, H x W the image, M the side of the mask head's targets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from torch import Tensor

from detector.ops import roi_align
from detector.structures.boxes import Boxes
from detector.utils.arrays import from_numpy, tolist

__all__ = ["BitMasks", "PolygonMasks", "polygons_to_bitmask"]

Index = int | slice | Tensor | np.ndarray | Sequence[int]
# (x, y) arrays of a polygon -> new (x, y) arrays
_XYMap = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _to_index_list(item: Tensor | np.ndarray | Sequence[int], length: int) -> list[int]:
    """A bool mask or integer indices as a list of ints."""
    array = item.detach().cpu().numpy() if isinstance(item, Tensor) else np.asarray(item)
    if array.dtype == bool:
        if array.shape != (length,):
            raise IndexError(f"bool mask of shape {array.shape} for {length} masks")
        return np.nonzero(array)[0].tolist()
    return [int(i) for i in array.reshape(-1)]


def _as_boxes_tensor(boxes: Boxes | Tensor) -> Tensor:
    return boxes.tensor if isinstance(boxes, Boxes) else boxes


def _mask_indices(indices: Tensor | None, num_boxes: int, num_masks: int) -> Tensor:
    """The mask index of each box (int64, N,): `indices` checked, or 0..N-1 when None."""
    if indices is None:
        if num_boxes != num_masks:
            raise ValueError(f"crop_and_resize: {num_boxes} boxes for {num_masks} masks")
        return torch.arange(num_masks)
    if indices.shape != (num_boxes,):
        raise ValueError(
            f"crop_and_resize: `indices` must be Tensor[{num_boxes}] (one mask index per box), "
            f"got shape {tuple(indices.shape)}"
        )
    if num_boxes and (int(indices.min()) < 0 or int(indices.max()) >= num_masks):
        raise IndexError(f"crop_and_resize: `indices` outside the {num_masks} masks")
    return indices.long()


def polygons_to_bitmask(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterizes one instance's polygons (their union) into a bool array[height, width]."""
    if len(polygons) == 0:
        return np.zeros((height, width), dtype=bool)
    rles = mask_util.frPyObjects([np.asarray(p, dtype=np.float64).tolist() for p in polygons],
                                 height, width)  # fmt: skip
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


class PolygonMasks:
    """N instance masks as COCO polygons: `polygons[i]` is a list of float64 arrays
    `[x0, y0, x1, y1, ...]` (at least 3 points each), whose union is instance i."""

    def __init__(self, polygons: Sequence[Sequence[Sequence[float] | np.ndarray]]) -> None:
        """Args:
        polygons: per instance, a list of polygons, each a flat sequence of x, y coordinates
            (the COCO "segmentation" format).
        """
        if isinstance(polygons, PolygonMasks):
            polygons = polygons.polygons
        self.polygons: list[list[np.ndarray]] = []
        for i, instance in enumerate(polygons):
            if isinstance(instance, np.ndarray) or not isinstance(instance, (list, tuple)):
                raise ValueError(
                    f"PolygonMasks: instance {i} must be a list of polygons (COCO format "
                    f"[[x0, y0, x1, y1, ...], ...]), got {type(instance).__name__}"
                )
            arrays = [np.asarray(p, dtype=np.float64).reshape(-1) for p in instance]
            for j, p in enumerate(arrays):
                if len(p) % 2 or len(p) < 6:
                    raise ValueError(
                        f"PolygonMasks: instance {i}, polygon {j} has {len(p)} coordinates; a "
                        "polygon needs an even number, at least 6 (3 points)"
                    )
            self.polygons.append(arrays)

    # ----------------------------------------------------------------------------------------
    # Container protocol
    # ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.polygons)

    def __getitem__(self, item: Index) -> PolygonMasks:
        """Masks selected by an index (kept as one mask), a slice, a bool mask or indices."""
        if isinstance(item, int):
            return PolygonMasks([self.polygons[item]])
        if isinstance(item, slice):
            return PolygonMasks(self.polygons[item])
        return PolygonMasks([self.polygons[i] for i in _to_index_list(item, len(self))])

    def __repr__(self) -> str:
        return f"PolygonMasks(num_instances={len(self)})"

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> PolygonMasks:
        """Polygons stay on the CPU (as numpy arrays); returns self."""
        return self

    @staticmethod
    def cat(masks_list: Sequence[PolygonMasks]) -> PolygonMasks:
        return PolygonMasks([p for masks in masks_list for p in masks.polygons])

    # ----------------------------------------------------------------------------------------
    # Geometry
    # ----------------------------------------------------------------------------------------
    def area(self) -> Tensor:
        """Tensor[N] float32: the summed area of each instance's polygons (shoelace formula)."""
        areas: list[float] = []
        for instance in self.polygons:
            total = 0.0
            for p in instance:
                x, y = p[0::2], p[1::2]
                total += 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
            areas.append(total)
        return torch.tensor(areas, dtype=torch.float32)

    def get_bounding_boxes(self) -> Boxes:
        """Boxes[N] enclosing each instance's polygons (zeros for an instance without any)."""
        boxes = torch.zeros(len(self), 4, dtype=torch.float32)
        for i, instance in enumerate(self.polygons):
            if instance:
                xy = np.concatenate(instance).reshape(-1, 2)
                boxes[i] = from_numpy(np.concatenate([xy.min(0), xy.max(0)]))
        return Boxes(boxes)

    def _map_xy(self, fn: _XYMap) -> PolygonMasks:
        """New masks with every polygon's (x, y) arrays passed through fn(x, y) -> (x, y)."""
        mapped: list[list[np.ndarray]] = []
        for instance in self.polygons:
            new_instance: list[np.ndarray] = []
            for p in instance:
                x, y = fn(p[0::2], p[1::2])
                new_instance.append(np.stack([x, y], axis=1).reshape(-1))
            mapped.append(new_instance)
        return PolygonMasks(mapped)

    def scale(self, scale_x: float, scale_y: float) -> PolygonMasks:
        """Masks with x multiplied by `scale_x` and y by `scale_y` (as when resizing the image)."""
        return self._map_xy(lambda x, y: (x * scale_x, y * scale_y))

    def flip(self, image_width: float) -> PolygonMasks:
        """Masks of the horizontally flipped image: x -> image_width - x."""
        return self._map_xy(lambda x, y: (image_width - x, y))

    def flip_vertical(self, image_height: float) -> PolygonMasks:
        """Masks of the vertically flipped image: y -> image_height - y."""
        return self._map_xy(lambda x, y: (x, image_height - y))

    # ----------------------------------------------------------------------------------------
    # Rasterization
    # ----------------------------------------------------------------------------------------
    def to_bitmasks(self, height: int, width: int) -> BitMasks:
        """The masks rasterized in an image of size (height, width)."""
        return BitMasks.from_polygons(self, height, width)

    def crop_and_resize(
        self, boxes: Boxes | Tensor, mask_size: int, indices: Tensor | None = None
    ) -> Tensor:
        """Mask targets: instance indices[i] (i by default) cropped to box i and rasterized at
        mask_size x mask_size.

        Rasterizes the polygons directly in each box's frame (as Detectron does), which is
        sharper and cheaper than cropping a full-image bitmap.

        Args:
            boxes: N boxes (Boxes or Tensor[N, 4]), one per instance without `indices`.
            mask_size: M.
            indices: optional Tensor[N] int64, the instance each box crops (a box per RoI,
                several RoIs per instance).

        Returns:
            Tensor[N, M, M] float32 of 0 and 1, on the boxes' device.
        """
        box_tensor = _as_boxes_tensor(boxes)
        index: list[int] = tolist(_mask_indices(indices, len(box_tensor), len(self)))
        instances = [self.polygons[i] for i in index]
        targets: list[Tensor] = []
        for instance, box in zip(instances, box_tensor.detach().cpu().double(), strict=True):
            coords: list[float] = tolist(box)
            x0, y0, x1, y1 = coords
            scale_x = mask_size / max(x1 - x0, 1e-6)
            scale_y = mask_size / max(y1 - y0, 1e-6)
            local: list[np.ndarray] = []
            for p in instance:
                q = p.copy()
                q[0::2] = (q[0::2] - x0) * scale_x
                q[1::2] = (q[1::2] - y0) * scale_y
                local.append(q)
            targets.append(from_numpy(polygons_to_bitmask(local, mask_size, mask_size)))
        if not targets:
            return torch.zeros(0, mask_size, mask_size, device=box_tensor.device)
        return torch.stack(targets).to(device=box_tensor.device, dtype=torch.float32)


class BitMasks:
    """N instance masks as bitmaps: `tensor` is a bool Tensor[N, H, W]."""

    def __init__(self, tensor: Tensor | np.ndarray) -> None:
        device = tensor.device if isinstance(tensor, Tensor) else torch.device("cpu")
        tensor = torch.as_tensor(tensor, device=device)
        if tensor.dim() != 3:
            raise ValueError(f"BitMasks needs a Tensor[N, H, W], got shape {tuple(tensor.shape)}")
        self.tensor = tensor if tensor.dtype == torch.bool else tensor != 0

    @staticmethod
    def from_polygons(polygons: PolygonMasks, height: int, width: int) -> BitMasks:
        """Rasterizes PolygonMasks (pycocotools) in an image of size (height, width)."""
        bitmaps = [polygons_to_bitmask(p, height, width) for p in polygons.polygons]
        if not bitmaps:
            return BitMasks(torch.zeros(0, height, width, dtype=torch.bool))
        return BitMasks(from_numpy(np.stack(bitmaps)))

    @staticmethod
    def from_rle(rles: Sequence[dict[str, Any]], height: int | None = None,
                 width: int | None = None) -> BitMasks:  # fmt: skip
        """Decodes COCO run-length encodings, compressed (`counts` a string) or not (a list).

        Args:
            rles: one {"size": [h, w], "counts": ...} per instance.
            height, width: the image size, needed only when `rles` is empty.
        """
        bitmaps: list[np.ndarray] = []
        for i, rle in enumerate(rles):
            if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:  # pyright: ignore[reportUnnecessaryIsInstance]
                raise ValueError(f"RLE {i}: expected a dict with 'size' and 'counts'")
            h, w = rle["size"]
            # pycocotools' stubs take only their own TypedDict; any COCO RLE dict is accepted.
            encoded: Any = rle
            if isinstance(rle["counts"], list):
                encoded = cast(Any, mask_util.frPyObjects(encoded, h, w))
            bitmaps.append(mask_util.decode(encoded).astype(bool))
        if not bitmaps:
            if height is None or width is None:
                raise ValueError("BitMasks.from_rle: give height and width for an empty list")
            return BitMasks(torch.zeros(0, height, width, dtype=torch.bool))
        sizes = {b.shape for b in bitmaps}
        if len(sizes) > 1:
            raise ValueError(f"BitMasks.from_rle: RLEs of different sizes {sorted(sizes)}")
        return BitMasks(from_numpy(np.stack(bitmaps)))

    # ----------------------------------------------------------------------------------------
    # Container protocol
    # ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, item: Index) -> BitMasks:
        """Masks selected by an index (kept as one mask), a slice, a bool mask or indices."""
        if isinstance(item, int):
            return BitMasks(self.tensor[item][None])
        if isinstance(item, (list, tuple, np.ndarray)):
            item = torch.as_tensor(np.asarray(item), device=self.device)
        return BitMasks(self.tensor[item])

    def __repr__(self) -> str:
        return f"BitMasks(num_instances={len(self)}, image_size={self.image_size})"

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.tensor.shape[1]), int(self.tensor.shape[2])

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def to(self, device: torch.device | str) -> BitMasks:
        return BitMasks(self.tensor.to(device))

    @staticmethod
    def cat(masks_list: Sequence[BitMasks]) -> BitMasks:
        if not masks_list:
            raise ValueError("BitMasks.cat needs at least one BitMasks (for the image size)")
        return BitMasks(torch.cat([m.tensor for m in masks_list], dim=0))

    # ----------------------------------------------------------------------------------------
    # Geometry
    # ----------------------------------------------------------------------------------------
    def area(self) -> Tensor:
        """Tensor[N] float32: pixels in each mask."""
        return self.tensor.flatten(1).sum(dim=1).to(torch.float32)

    def get_bounding_boxes(self) -> Boxes:
        """Boxes[N] enclosing each mask's pixels (zeros for an empty mask)."""
        boxes = torch.zeros(len(self), 4, dtype=torch.float32, device=self.device)
        rows = self.tensor.any(dim=2)  # (N, H)
        cols = self.tensor.any(dim=1)  # (N, W)
        for i in range(len(self)):
            ys = torch.nonzero(rows[i]).flatten()
            xs = torch.nonzero(cols[i]).flatten()
            if len(xs):
                boxes[i] = torch.stack([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1]).float()
        return Boxes(boxes)

    def resize(self, height: int, width: int) -> BitMasks:
        """Masks resized to (height, width) by nearest-neighbour sampling of pixel centres."""
        if len(self) == 0:
            return BitMasks(self.tensor.new_zeros(0, height, width))
        resized = F.interpolate(
            self.tensor[:, None].to(torch.uint8), size=(height, width), mode="nearest-exact"
        )
        return BitMasks(resized[:, 0] != 0)

    def scale(self, scale_x: float, scale_y: float) -> BitMasks:
        """Masks of an image resized by (scale_x, scale_y): size rounded to whole pixels."""
        height, width = self.image_size
        return self.resize(round(height * scale_y), round(width * scale_x))

    def flip(self, image_width: int | None = None) -> BitMasks:
        """Masks of the horizontally flipped image (`image_width`, if given, must be W)."""
        if image_width is not None and image_width != self.image_size[1]:
            raise ValueError(
                f"BitMasks.flip: image_width {image_width} differs from the masks' width "
                f"{self.image_size[1]}"
            )
        return BitMasks(self.tensor.flip(-1))

    def flip_vertical(self, image_height: int | None = None) -> BitMasks:
        """Masks of the vertically flipped image (`image_height`, if given, must be H)."""
        if image_height is not None and image_height != self.image_size[0]:
            raise ValueError(
                f"BitMasks.flip_vertical: image_height {image_height} differs from the masks' "
                f"height {self.image_size[0]}"
            )
        return BitMasks(self.tensor.flip(-2))

    # ----------------------------------------------------------------------------------------
    # Mask targets
    # ----------------------------------------------------------------------------------------
    def to_bitmasks(self, height: int | None = None, width: int | None = None) -> BitMasks:
        """Returns self (for the interface shared with PolygonMasks)."""
        if (height, width) not in ((None, None), self.image_size):
            raise ValueError(f"BitMasks of size {self.image_size} asked for {(height, width)}")
        return self

    def crop_and_resize(
        self, boxes: Boxes | Tensor, mask_size: int, indices: Tensor | None = None
    ) -> Tensor:
        """Mask targets: mask indices[i] (i by default) cropped to box i and resampled at
        mask_size x mask_size.

        RoIAlign (aligned=True, adaptive sampling) over the bitmaps, thresholded at 0.5. With
        `indices`, each mask is converted once however many boxes crop it (the mask head's
        RoIs: G masks, not one full-image copy per RoI).

        Args:
            boxes: N boxes (Boxes or Tensor[N, 4]), one per mask without `indices`.
            mask_size: M.
            indices: optional Tensor[N] int64, the mask each box crops.

        Returns:
            Tensor[N, M, M] float32 of 0 and 1, on the boxes' device.
        """
        box_tensor = _as_boxes_tensor(boxes)
        index = _mask_indices(indices, len(box_tensor), len(self))
        out_device = box_tensor.device
        if len(box_tensor) == 0:
            return torch.zeros(0, mask_size, mask_size, device=out_device)
        box_tensor = box_tensor.to(device=self.device, dtype=torch.float32)
        batch_index = index.to(device=self.device, dtype=torch.float32)[:, None]
        rois = torch.cat([batch_index, box_tensor], dim=1)  # (N, 5)
        bitmaps = self.tensor[:, None].to(torch.float32)  # (G, 1, H, W)
        sampled = roi_align(bitmaps, rois, (mask_size, mask_size), 1.0, 0, aligned=True)
        targets = (sampled[:, 0] >= 0.5).to(torch.float32)  # (N, 1, M, M) -> (N, M, M)
        return targets.to(out_device)
