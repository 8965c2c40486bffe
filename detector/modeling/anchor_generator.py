"""Anchors per feature level, and their visibility (MODEL.RPN.STRADDLE_THRESH).

Shape glossary: L levels; A_l anchors per location of level l (sizes x ratios); H_l x W_l the
level's grid; boxes are (x1, y1, x2, y2) in input-image pixels.

Cell anchors are zero-centred and rounded, and the anchor of grid cell (y, x) is centred on
(x * stride, y * stride), exactly as torchvision.models.detection.anchor_utils.AnchorGenerator, so
proposals can be compared with torchvision's. Within a location, anchors run over ratios (outer)
and sizes (inner); locations run row-major. torchvision takes each level's stride as the padded
input size // the level's size, which differs from the nominal stride where a level's size was
rounded up (P6 of an 800-pixel side: 61, not 64); MODEL.RPN.ANCHOR_STRIDE_FROM_INPUT_SIZE
(`stride_from_input_size`) does the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from detector.config import Config
from detector.structures import as_size

# A grid size: an int, symbolic while torch.export traces, a 0-dim tensor while torch.jit.trace
# records (see detector.structures.as_size).
_Size = int | torch.SymInt | Tensor


def generate_cell_anchors(
    sizes: Sequence[float], aspect_ratios: Sequence[float], dtype: torch.dtype = torch.float32
) -> Tensor:
    """Zero-centred anchors ``(len(ratios) * len(sizes), 4)`` of area size^2 and h/w = ratio."""
    scales = torch.as_tensor(sizes, dtype=dtype)
    ratios = torch.as_tensor(aspect_ratios, dtype=dtype)
    h_ratios = ratios.sqrt()
    w_ratios = 1 / h_ratios
    # (R, 1) * (1, S) -> (R*S,): ratios outer, sizes inner
    widths = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    heights = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-widths, -heights, widths, heights], dim=1) / 2).round()


class AnchorGenerator(nn.Module):
    """Anchors for each feature level.

    Args:
        sizes: per level, the anchor sizes (sqrt of the area), e.g. ((32,), (64,), ...) for FPN
            or ((128, 256, 512),) for C4 / VGG-16.
        aspect_ratios: the h/w ratios, shared by all levels, or one sequence per level.
        strides: per level, the feature stride in pixels (MODEL.RPN.ANCHOR_STRIDE).
        straddle_thresh: anchors crossing the image border by more than this many pixels are
            invisible (`visibility`); a negative value keeps all anchors.
        stride_from_input_size: torchvision's rule: when `forward` is given the padded input's
            (H, W), each level's stride is (H // H_l, W // W_l) instead of `strides` (they differ
            where a level's size was rounded up, e.g. P6 of an 800-pixel side: 800 // 13 = 61).
    """

    def __init__(
        self,
        *,
        sizes: Sequence[Sequence[float]] = ((128.0, 256.0, 512.0),),
        aspect_ratios: Sequence[float] | Sequence[Sequence[float]] = (0.5, 1.0, 2.0),
        strides: Sequence[int] = (16,),
        straddle_thresh: float = 0.0,
        stride_from_input_size: bool = False,
    ) -> None:
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(
                f"AnchorGenerator: {len(sizes)} levels of sizes but {len(strides)} strides "
                "(MODEL.RPN.ANCHOR_SIZES / ANCHOR_STRIDE)"
            )
        ratios: Sequence[Sequence[float]]
        if not isinstance(aspect_ratios[0], Sequence):  # shared by all levels
            ratios = [cast(Sequence[float], aspect_ratios)] * len(sizes)
        else:
            ratios = cast(Sequence[Sequence[float]], aspect_ratios)
        if len(ratios) != len(sizes):
            raise ValueError("AnchorGenerator: give one aspect-ratio sequence per level")
        self.strides = [int(s) for s in strides]
        self.straddle_thresh = float(straddle_thresh)
        self.stride_from_input_size = bool(stride_from_input_size)
        self._num_levels = len(sizes)
        for level, (level_sizes, level_ratios) in enumerate(zip(sizes, ratios, strict=True)):
            cell = generate_cell_anchors(list(level_sizes), list(level_ratios))
            self.register_buffer(f"cell_anchors_{level}", cell, persistent=False)

    @property
    def cell_anchors(self) -> list[Tensor]:
        """Per level, the zero-centred anchors ``(A_l, 4)``."""
        return [getattr(self, f"cell_anchors_{level}") for level in range(self._num_levels)]

    def num_anchors_per_location(self) -> list[int]:
        """A_l for each level."""
        return [len(cell) for cell in self.cell_anchors]

    def grid_anchors(
        self,
        grid_sizes: Sequence[tuple[_Size, _Size]],
        strides: Sequence[tuple[_Size, _Size]] | None = None,
    ) -> list[Tensor]:
        """Per level, the anchors ``(H_l * W_l * A_l, 4)`` of a ``(H_l, W_l)`` grid, with the
        level's (stride_y, stride_x) from `strides` (default: `self.strides` on both axes)."""
        if len(grid_sizes) != self._num_levels:
            raise ValueError(
                f"AnchorGenerator: {len(grid_sizes)} feature maps for {self._num_levels} levels"
            )
        if strides is None:
            strides = [(s, s) for s in self.strides]
        anchors: list[Tensor] = []
        for (height, width), (stride_y, stride_x), cell in zip(
            grid_sizes, strides, self.cell_anchors, strict=True
        ):
            shifts_x = _shifts(width, stride_x, cell.device)
            shifts_y = _shifts(height, stride_y, cell.device)
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            # (H, W) -> (H*W, 4) centre offsets (x, y, x, y), row-major
            shifts = torch.stack(
                [
                    shift_x.reshape(-1),
                    shift_y.reshape(-1),
                    shift_x.reshape(-1),
                    shift_y.reshape(-1),
                ],
                dim=1,
            ).to(cell.dtype)
            # (H*W, 1, 4) + (1, A, 4) -> (H*W*A, 4)
            anchors.append((shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4))
        return anchors

    def forward(
        self, features: Sequence[Tensor], input_size: tuple[int, int] | None = None
    ) -> list[Tensor]:
        """Per level l, the anchors ``(H_l * W_l * A_l, 4)`` of feature map ``(N, C, H_l, W_l)``
        (the same for every image of the batch), in the features' dtype and device.

        `input_size`: the padded batch's (H, W); used only with `stride_from_input_size`.
        """
        grid_sizes = [(as_size(f.shape[-2]), as_size(f.shape[-1])) for f in features]  # (H_l, W_l)
        strides = None
        if self.stride_from_input_size and input_size is not None:
            strides = [(input_size[0] // h, input_size[1] // w) for h, w in grid_sizes]
        anchors = self.grid_anchors(grid_sizes, strides)
        return [
            a.to(dtype=f.dtype, device=f.device) for a, f in zip(anchors, features, strict=True)
        ]

    def visibility(self, anchors: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Bool ``(M,)``: anchors ``(M, 4)`` inside the ``(height, width)`` image, allowing
        `straddle_thresh` pixels beyond each border; all True when straddle_thresh < 0."""
        return anchor_visibility(anchors, image_size, self.straddle_thresh)


def _shifts(length: _Size, stride: _Size, device: torch.device) -> Tensor:
    """``(length,)`` int32 offsets 0, stride, 2 * stride, ... (torch.arange's stubs take no
    traced 0-dim size, nor pyright a SymInt stride as a Tensor factor)."""
    return torch.arange(length, device=device, dtype=torch.int32) * stride  # pyright: ignore[reportCallIssue, reportArgumentType, reportUnknownVariableType]


def anchor_visibility(
    anchors: Tensor, image_size: tuple[int, int], straddle_thresh: float
) -> Tensor:
    """See `AnchorGenerator.visibility` (no "+1": x2 == width is on the border, inside)."""
    if straddle_thresh < 0:
        return torch.ones(anchors.shape[0], dtype=torch.bool, device=anchors.device)
    height, width = image_size
    return (
        (anchors[:, 0] >= -straddle_thresh)
        & (anchors[:, 1] >= -straddle_thresh)
        & (anchors[:, 2] <= width + straddle_thresh)
        & (anchors[:, 3] <= height + straddle_thresh)
    )


def build_anchor_generator(cfg: Config) -> AnchorGenerator:
    """Reads MODEL.RPN.ANCHOR_SIZES, ASPECT_RATIOS, ANCHOR_STRIDE, STRADDLE_THRESH and
    ANCHOR_STRIDE_FROM_INPUT_SIZE.

    One stride (C4, VGG-16): all sizes on that level. Several strides (FPN): one size per level.
    """
    rpn = cfg.MODEL.RPN
    sizes = [float(s) for s in rpn.ANCHOR_SIZES]
    strides = [int(s) for s in rpn.ANCHOR_STRIDE]
    if len(strides) == 1:
        level_sizes: list[list[float]] = [sizes]
    elif len(sizes) == len(strides):
        level_sizes = [[s] for s in sizes]
    else:
        raise ValueError(
            f"MODEL.RPN.ANCHOR_SIZES has {len(sizes)} sizes for {len(strides)} strides in "
            "MODEL.RPN.ANCHOR_STRIDE: give one size per FPN level, or a single stride"
        )
    return AnchorGenerator(
        sizes=level_sizes,
        aspect_ratios=[float(r) for r in rpn.ASPECT_RATIOS],
        strides=strides,
        straddle_thresh=rpn.STRADDLE_THRESH,
        stride_from_input_size=rpn.ANCHOR_STRIDE_FROM_INPUT_SIZE,
    )
