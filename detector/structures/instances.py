"""Per-image instances: ground truth, proposals and detections, as declared, typed fields.

One `Instances` holds N instances of one image. It is not a free-form bag: only the fields
declared below exist, each with its type, and every field that is set has the same length N.
Unset fields are None.

    targets = Instances((480, 640), gt_boxes=Boxes(boxes), gt_classes=labels)
    kept = targets[targets.gt_boxes.nonempty()]
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from detector.structures.boxes import Boxes
from detector.structures.keypoints import Keypoints
from detector.structures.masks import BitMasks, PolygonMasks
from detector.structures.sizes import Size, as_size

__all__ = ["Instances"]


@dataclass(eq=False, repr=False, slots=True)
class Instances:
    """The instances of one image of size `image_size` (height, width)."""

    image_size: tuple[int, int]
    # Ground truth (targets).
    gt_boxes: Boxes | None = None  # N boxes, xyxy in the image
    gt_classes: Tensor | None = None  # Tensor[N] int64, 1..K (0 is the background)
    gt_masks: PolygonMasks | BitMasks | None = None
    difficult: Tensor | None = None  # Tensor[N] bool (Pascal VOC's "difficult" flag)
    gt_keypoints: Keypoints | None = None  # N x K keypoints (x, y, v)
    # Proposals (RPN outputs).
    proposal_boxes: Boxes | None = None
    objectness_logits: Tensor | None = None  # Tensor[N] float
    # Sampled RoIs (ProposalTargetCreator): proposal_boxes plus gt_classes (0: background),
    # gt_boxes (the matched ground truth) and the matched ground truth's index in the targets.
    matched_gt_idx: Tensor | None = None  # Tensor[N] int64
    # Detections (results).
    pred_boxes: Boxes | None = None
    scores: Tensor | None = None  # Tensor[N] float
    pred_classes: Tensor | None = None  # Tensor[N] int64
    pred_masks: Tensor | None = None  # Tensor[N, 1, M, M] probabilities or Tensor[N, H, W]
    # Tensor[N, K, 3]: (x, y, score) per keypoint, score the heatmap logit at (x, y).
    pred_keypoints: Tensor | None = None
    # Tensor[N, K, S, S]: keypoint heatmap logits in box coordinates (exported models).
    pred_keypoint_heatmaps: Tensor | None = None

    # ----------------------------------------------------------------------------------------
    # Checked fields
    # ----------------------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _FIELD_NAMES:
            raise AttributeError(_unknown_field_message(name))
        if name == "image_size":
            value = _check_image_size(value)
        elif value is not None:
            _check_field(name, value)
            self._check_length(name, _num_entries(value))
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # Called only when normal lookup fails, i.e. for names that are not fields.
        raise AttributeError(_unknown_field_message(name))

    def _check_length(self, name: str, length: Size) -> None:
        for other, value in self._set_fields().items():
            if other == name:
                continue
            other_length = _num_entries(value)
            if isinstance(length, Tensor) or isinstance(other_length, Tensor):
                continue  # sizes recorded by torch.jit.trace: a check would fix them
            if isinstance(length, int) and isinstance(other_length, int):
                if length != other_length:
                    raise ValueError(_length_message(name, length, other, other_length))
            else:  # traced sizes: a deferred runtime assertion instead of a guard
                torch._check(  # pyright: ignore[reportPrivateUsage]
                    length == other_length,
                    lambda o=other, n=other_length: _length_message(name, length, o, n),
                )

    def _set_fields(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in _INSTANCE_FIELDS:
            try:
                value = object.__getattribute__(self, name)
            except AttributeError:  # not yet assigned (during __init__ or unpickling)
                continue
            if value is not None:
                values[name] = value
        return values

    def fields(self) -> dict[str, Any]:
        """The fields that are set (not None), by name, excluding image_size."""
        return self._set_fields()

    def has(self, name: str) -> bool:
        """Whether field `name` is set (an unknown name is an error)."""
        if name not in _INSTANCE_FIELDS:
            raise AttributeError(_unknown_field_message(name))
        return getattr(self, name) is not None

    # ----------------------------------------------------------------------------------------
    # Container protocol
    # ----------------------------------------------------------------------------------------
    @property
    def num_instances(self) -> Size:
        """N, as `len()`, but a symbolic size stays symbolic while torch.export or
        torch.compile traces (`len()` must return an int, which would specialize it), and a
        0-dim tensor while torch.jit.trace records a graph."""
        fields = self._set_fields()
        return _num_entries(next(iter(fields.values()))) if fields else 0

    def __len__(self) -> int:
        """N, the number of instances (0 when no field is set)."""
        lengths = {name: len(value) for name, value in self._set_fields().items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Instances: fields of different lengths {lengths}")
        return next(iter(lengths.values()), 0)

    def __getitem__(self, item: int | slice | Tensor | Sequence[int]) -> Instances:
        """The instances selected by an index (kept as one instance), a slice, a bool mask
        Tensor[N] or indices, from every field."""
        if isinstance(item, int):
            length = len(self)
            if not -length <= item < length:
                raise IndexError(f"Instances index {item} out of range for {length} instances")
            item = slice(item, item + 1) if item != -1 else slice(item, None)
        selected = {name: value[item] for name, value in self._set_fields().items()}
        return Instances(self.image_size, **selected)

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={_short_repr(value)}" for name, value in self._set_fields().items()
        )
        return f"Instances(num_instances={len(self)}, image_size={self.image_size}, {fields})"

    def to(self, device: torch.device | str) -> Instances:
        """A copy with every field on `device` (polygon masks stay on the CPU)."""
        moved = {name: value.to(device) for name, value in self._set_fields().items()}
        return Instances(self.image_size, **moved)

    @staticmethod
    def cat(instances_list: Sequence[Instances]) -> Instances:
        """Concatenates instances of the same image that have the same fields set."""
        if len(instances_list) == 0:
            raise ValueError("Instances.cat needs at least one Instances")
        first = instances_list[0]
        names = list(first.fields())
        for i, other in enumerate(instances_list[1:], start=1):
            if other.image_size != first.image_size:
                raise ValueError(
                    f"Instances.cat: item {i} has image_size {other.image_size}, item 0 has "
                    f"{first.image_size}"
                )
            if list(other.fields()) != names:
                raise ValueError(
                    f"Instances.cat: item {i} has fields {list(other.fields())}, item 0 has {names}"
                )
        merged: dict[str, Any] = {}
        for name in names:
            values = [getattr(inst, name) for inst in instances_list]
            if isinstance(values[0], Tensor):
                merged[name] = torch.cat(values, dim=0)
            else:
                first_value: Boxes | Keypoints | PolygonMasks | BitMasks = values[0]
                merged[name] = type(first_value).cat(values)
        return Instances(first.image_size, **merged)


# --------------------------------------------------------------------------------------------
# Field declarations and checks
# --------------------------------------------------------------------------------------------
_FIELD_NAMES: frozenset[str] = frozenset(f.name for f in dataclasses.fields(Instances))
_INSTANCE_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Instances) if f.name != "image_size"
)

# name -> (accepted types, required dtype or None, "floating" for any floating dtype)
_FIELD_SPECS: dict[str, tuple[tuple[type, ...], Any]] = {
    "gt_boxes": ((Boxes,), None),
    "gt_classes": ((Tensor,), torch.int64),
    "gt_masks": ((PolygonMasks, BitMasks), None),
    "difficult": ((Tensor,), torch.bool),
    "gt_keypoints": ((Keypoints,), None),
    "proposal_boxes": ((Boxes,), None),
    "objectness_logits": ((Tensor,), "floating"),
    "matched_gt_idx": ((Tensor,), torch.int64),
    "pred_boxes": ((Boxes,), None),
    "scores": ((Tensor,), "floating"),
    "pred_classes": ((Tensor,), torch.int64),
    "pred_masks": ((Tensor,), None),
    "pred_keypoints": ((Tensor,), "floating"),
    "pred_keypoint_heatmaps": ((Tensor,), "floating"),
}
assert set(_FIELD_SPECS) == set(_INSTANCE_FIELDS)


def _num_entries(value: Any) -> Size:
    """The number of entries of a field value, without `len()` for tensors and Boxes (a
    symbolic size stays symbolic)."""
    if isinstance(value, Tensor):
        return as_size(value.shape[0])
    if isinstance(value, (Boxes, Keypoints)):
        return as_size(value.tensor.shape[0])
    return len(value)


def _length_message(name: str, length: Any, other: str, other_length: Any) -> str:
    return (
        f"Instances: {name} has {length} entries but {other} has {other_length}; "
        "all fields must have one entry per instance"
    )


def _unknown_field_message(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(_FIELD_NAMES), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"Instances has no field '{name}'.{hint} Fields: {', '.join(sorted(_FIELD_NAMES))}"


def _check_image_size(value: Any) -> tuple[Size, Size]:
    try:
        height, width = (as_size(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"Instances: image_size must be (height, width), got {value!r}") from None
    return height, width


def _check_field(name: str, value: Any) -> None:
    types, dtype = _FIELD_SPECS[name]
    if not isinstance(value, types):
        expected = " or ".join(t.__name__ for t in types)
        raise TypeError(f"Instances.{name} must be {expected}, got {type(value).__name__}")
    if isinstance(value, Tensor):
        if value.dim() == 0:
            raise ValueError(f"Instances.{name} must have one entry per instance, got a scalar")
        if dtype == "floating" and not value.is_floating_point():
            raise TypeError(f"Instances.{name} must be a floating tensor, got {value.dtype}")
        if isinstance(dtype, torch.dtype) and value.dtype != dtype:
            raise TypeError(
                f"Instances.{name} must be a {dtype} tensor, got {value.dtype} "
                f"(convert it with .to({dtype}))"
            )


def _short_repr(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"Tensor{list(value.shape)}"
    if isinstance(value, Boxes):
        return f"Boxes[{len(value)}]"
    return repr(value)
