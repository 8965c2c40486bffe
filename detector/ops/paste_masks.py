"""Pasting the mask head's M x M predictions into the image, many masks at once.

`paste_masks_in_image` gives torchvision's `paste_masks_in_image` result (Mask R-CNN inference in
torchvision.models.detection) without its per-mask Python loop. The numerics, step by step:

1. Each mask is zero-padded by `padding` pixels on every side: M -> S = M + 2 * padding, so the
   pasted mask fades to 0 at its border instead of being cut.
2. Each box is scaled about its centre by S / M (so the padded mask still covers the box), then
   truncated towards zero to integers (x0, y0, x1, y1); the box covers the pixel columns
   x0..x1 and rows y0..y1 inclusive: w = max(x1 - x0 + 1, 1), h = max(y1 - y0 + 1, 1).
3. The padded mask is resized to h x w with bilinear interpolation, align_corners=False
   (`F.interpolate`): output column d samples the input at s = max((S / w) * (d + 0.5) - 0.5, 0),
   between columns floor(s) and min(floor(s) + 1, S - 1) with weights 1 - frac and frac.
4. The resized mask is written at (y0, x0) in an H x W zero image, cropped to the image.

Here steps 3 and 4 are one separable gather: every image column x inside [x0, x1] samples the
padded mask at the column that step 3 gives to d = x - x0 (rows likewise); columns and rows
outside the box get weight 0. Only a window around each box is computed: the masks are sorted by
box size and processed in chunks; a chunk's windows all have the chunk's largest box extent
(clipped to the image), and a chunk holds as many masks as fit in `max_chunk_bytes` of working
memory (1 GiB), at most `chunk_size`. The windows are then scattered into the (R, H, W) output.

On the CPU the compiled kernel `torch.ops.detector.paste_masks` (ops/cpu/paste_masks_kernel.cpp)
does steps 3 and 4 instead, mask by mask in parallel, writing each output plane once (zeros
outside the box) in the same order of operations, and reads float16/bfloat16 masks natively
(float32 arithmetic, each result rounded once); the PyTorch form above serves other devices.

Shapes: R masks, M x M each, S = M + 2 * padding, (H, W) the image, c masks in a chunk whose
windows are h_c x w_c pixels.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

# _library registers torch.ops.detector.paste_masks
from detector.ops import _library  # noqa: F401  # pyright: ignore[reportUnusedImport]

__all__ = ["paste_masks_in_image"]

# Working memory allowed for one chunk of pasted windows, in bytes.
DEFAULT_CHUNK_BYTES = 1 << 30


def _expanded_integer_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Boxes (R, 4) scaled about their centres by `scale`, truncated towards zero: int64 (R, 4).

    The arithmetic runs in the boxes' dtype, in the order torchvision uses, so that the truncation
    lands on the same integers.
    """
    half_width = (boxes[:, 2] - boxes[:, 0]) * 0.5
    half_height = (boxes[:, 3] - boxes[:, 1]) * 0.5
    center_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    center_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    half_width = half_width * scale
    half_height = half_height * scale
    x0, x1 = center_x - half_width, center_x + half_width
    y0, y1 = center_y - half_height, center_y + half_height
    return torch.stack([x0, y0, x1, y1], dim=1).to(torch.int64)


def _visible_extent(start: Tensor, end: Tensor, length: int) -> Tensor:
    """Pixels of [start, end] (Tensor[R] int64, inclusive) inside [0, length): Tensor[R]."""
    return (end.clamp(max=length - 1) - start.clamp(min=0) + 1).clamp(min=0)


def _window_pixels(start: Tensor, end: Tensor, length: int, window: int) -> Tensor:
    """Per box, `window` consecutive pixels inside [0, length) covering the box's visible part.

    The window starts at the box's first visible pixel, moved back where it would cross the
    image's end, so that all its pixels are distinct and inside the image.

    Returns:
        Tensor[c, window] int64 pixel coordinates.
    """
    first = torch.minimum(start.clamp(min=0), torch.full_like(start, length - window))
    return first[:, None] + torch.arange(window, device=start.device)[None, :]


def _axis_sampling(
    pixels: Tensor, start: Tensor, end: Tensor, source_size: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bilinear sampling along one axis of the image pixels `pixels` for boxes start..end.

    Args:
        pixels: Tensor[c, L] int64 image pixel coordinates on this axis.
        start, end: Tensor[c] int64, the integer box's first and last pixel on this axis.
        source_size: S, the padded mask's size.
        dtype: the floating dtype of the computation.

    Returns:
        index0, index1: Tensor[c, L] int64 source indices (0 outside the box);
        weight0, weight1: Tensor[c, L] their weights (0 outside the box).
    """
    offset = pixels - start[:, None]  # (c, L): d, the pixel in the resized mask
    inside = (offset >= 0) & (pixels <= end[:, None])
    resized_size = (end - start + 1).clamp(min=1).to(dtype)  # (c,)
    # S / w in `dtype`, as F.interpolate computes it.
    scale = torch.full_like(resized_size, float(source_size)) / resized_size
    source = scale[:, None] * (offset.to(dtype) + 0.5) - 0.5
    # Clamping to [0, S - 1] equals interpolate's rule (index0 = min(floor(s), S - 1), weight of
    # index1 = min(s - index0, 1) with index1 = min(index0 + 1, S - 1)).
    source = source.clamp(min=0.0, max=float(source_size - 1))
    index0 = source.floor().to(torch.int64)
    weight1 = source - index0.to(dtype)
    index1 = (index0 + 1).clamp(max=source_size - 1)
    weight0 = 1.0 - weight1
    zero = torch.zeros((), dtype=dtype, device=pixels.device)
    index0 = torch.where(inside, index0, 0)
    index1 = torch.where(inside, index1, 0)
    return index0, index1, torch.where(inside, weight0, zero), torch.where(inside, weight1, zero)


def _paste_windows(padded: Tensor, boxes: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """The pasted values of c padded masks (c, S, S) at integer boxes (c, 4) on the image pixels
    rows (c, h_c) x cols (c, w_c): returns (c, h_c, w_c)."""
    num_masks, size = padded.shape[0], padded.shape[-1]
    dtype = padded.dtype
    col0, col1, col_w0, col_w1 = _axis_sampling(cols, boxes[:, 0], boxes[:, 2], size, dtype)
    row0, row1, row_w0, row_w1 = _axis_sampling(rows, boxes[:, 1], boxes[:, 3], size, dtype)
    # Columns first: (c, S, S) -> (c, S, w_c), each source row interpolated along x.
    shape_sw = (num_masks, size, cols.shape[1])
    columns = torch.gather(padded, 2, col0[:, None, :].expand(shape_sw)) * col_w0[:, None, :]
    columns.addcmul_(torch.gather(padded, 2, col1[:, None, :].expand(shape_sw)), col_w1[:, None, :])
    # Then rows: (c, S, w_c) -> (c, h_c, w_c).
    shape_hw = (num_masks, rows.shape[1], cols.shape[1])
    pasted = torch.gather(columns, 1, row0[:, :, None].expand(shape_hw))
    pasted.mul_(row_w0[:, :, None])
    pasted.addcmul_(torch.gather(columns, 1, row1[:, :, None].expand(shape_hw)), row_w1[:, :, None])
    return pasted


def _bytes_per_window_pixel(itemsize: int) -> int:
    """Working memory per window pixel: two value tensors, the int64 flat index, the output."""
    return 2 * itemsize + 8 + itemsize


def _chunks(
    heights: list[int], widths: list[int], max_masks: int, max_bytes: int, itemsize: int
) -> list[tuple[int, int, int, int]]:
    """Greedy chunks of the (size-sorted) masks: (begin, end, window height, window width)."""
    chunks: list[tuple[int, int, int, int]] = []
    begin, window_h, window_w = 0, 1, 1
    per_pixel = _bytes_per_window_pixel(itemsize)
    for index, (h, w) in enumerate(zip(heights, widths, strict=True)):
        grown_h, grown_w = max(window_h, h), max(window_w, w)
        count = index - begin + 1
        too_big = count * grown_h * grown_w * per_pixel > max_bytes or count > max_masks
        if too_big and count > 1:
            chunks.append((begin, index, window_h, window_w))
            begin, grown_h, grown_w = index, max(h, 1), max(w, 1)
        window_h, window_w = grown_h, grown_w
    if begin < len(heights):
        chunks.append((begin, len(heights), window_h, window_w))
    return chunks


def paste_masks_in_image(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float | None = 0.5,
    *,
    padding: int = 1,
    chunk_size: int | None = None,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Tensor:
    """Pastes M x M mask probabilities into the image at their boxes (see the module docstring).

    With `threshold` None the result equals torchvision's
    ``paste_masks_in_image(masks[:, None], boxes, image_size, padding)[:, 0]``, and unlike it
    boxes entirely outside the image give empty masks (torchvision raises an error).

    Args:
        masks: Tensor[R, M, M] (or [R, 1, M, M]) mask probabilities, in box coordinates.
        boxes: Tensor[R, 4], boxes (x1, y1, x2, y2) in image pixels.
        image_size: (H, W).
        threshold: None to return the pasted probabilities (in the masks' dtype); a float to
            return bool masks, True where the probability is > threshold (maskrcnn_benchmark's
            Masker and torchvision's COCO evaluation use 0.5).
        padding: zero pixels added around each mask before pasting (torchvision's 1).
        chunk_size: the most masks pasted at once by the PyTorch form (other devices than the
            CPU; None: no limit but `max_chunk_bytes`).
        max_chunk_bytes: the working memory allowed to a chunk of masks (beyond the output).

    Returns:
        Tensor[R, H, W], on the masks' device: float probabilities or bool masks.
    """
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]  # (R, 1, M, M) -> (R, M, M)
    if masks.dim() != 3 or masks.shape[1] != masks.shape[2]:
        raise ValueError(
            f"paste_masks_in_image: masks must be (R, M, M) or (R, 1, M, M), got "
            f"{tuple(masks.shape)}"
        )
    box_tensor = boxes
    if box_tensor.dim() != 2 or box_tensor.shape != (masks.shape[0], 4):
        raise ValueError(
            f"paste_masks_in_image: boxes must be ({masks.shape[0]}, 4) for {masks.shape[0]} "
            f"masks, got {tuple(box_tensor.shape)}"
        )
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"paste_masks_in_image: chunk_size must be >= 1, got {chunk_size}")
    height, width = (int(v) for v in image_size)
    out_dtype = masks.dtype if threshold is None else torch.bool
    # the CPU kernel reads float16/bfloat16 masks itself (computing in float32); the tensor-op
    # form computes them in float32
    native = masks.dtype in (torch.float32, torch.float64) or _uses_compiled_kernel(masks)
    compute_dtype = masks.dtype if native else torch.float32
    if masks.shape[0] == 0 or height == 0 or width == 0:
        return torch.zeros((masks.shape[0], height, width), dtype=out_dtype, device=masks.device)
    mask_size = masks.shape[-1]
    padded = F.pad(masks.to(compute_dtype), (padding,) * 4)  # (R, M, M) -> (R, S, S)
    int_boxes = _expanded_integer_boxes(
        box_tensor.to(masks.device), float(mask_size + 2 * padding) / mask_size
    )
    if _uses_compiled_kernel(padded):
        pasted = torch.ops.detector.paste_masks(padded, int_boxes, height, width, threshold)
    else:
        pasted = _paste_with_tensor_ops(
            padded, int_boxes, (height, width), threshold, chunk_size, max_chunk_bytes
        )
    return pasted.to(out_dtype)  # (R, H, W); a copy only for reduced masks off the CPU


def _int_list(values: Tensor) -> list[int]:
    """Tensor[R] int64 -> R Python ints (torch types `tolist` as a bare list)."""
    return cast(list[int], values.tolist())  # pyright: ignore[reportUnknownMemberType]


def _uses_compiled_kernel(masks: Tensor) -> bool:
    """Whether `torch.ops.detector.paste_masks` pastes these masks (it has a CPU kernel only)."""
    return masks.device.type == "cpu"


def _paste_with_tensor_ops(
    padded: Tensor,
    int_boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float | None,
    chunk_size: int | None,
    max_chunk_bytes: int,
) -> Tensor:
    """Steps 3 and 4 with PyTorch tensor ops, chunk by chunk (any device).

    Args:
        padded: Tensor[R, S, S] padded mask probabilities, float32 or float64, R >= 1.
        int_boxes: Tensor[R, 4] int64 integer boxes from `_expanded_integer_boxes`.
        image_size: (H, W), both >= 1.

    Returns:
        Tensor[R, H, W]: padded's dtype, or bool with a `threshold`.
    """
    height, width = image_size
    out_dtype = padded.dtype if threshold is None else torch.bool
    result = torch.zeros((padded.shape[0], height, width), dtype=out_dtype, device=padded.device)
    visible_w = _visible_extent(int_boxes[:, 0], int_boxes[:, 2], width)  # (R,)
    visible_h = _visible_extent(int_boxes[:, 1], int_boxes[:, 3], height)  # (R,)
    order = torch.argsort(visible_h * visible_w)
    itemsize = torch.finfo(padded.dtype).bits // 8
    chunks = _chunks(
        _int_list(visible_h[order]),
        _int_list(visible_w[order]),
        chunk_size or padded.shape[0],
        max_chunk_bytes,
        itemsize,
    )
    flat_result = result.view(-1)  # (R * H * W,)
    for begin, end, window_h, window_w in chunks:
        index = order[begin:end]  # (c,)
        chunk_boxes = int_boxes[index]
        rows = _window_pixels(chunk_boxes[:, 1], chunk_boxes[:, 3], height, window_h)
        cols = _window_pixels(chunk_boxes[:, 0], chunk_boxes[:, 2], width, window_w)
        pasted = _paste_windows(padded[index], chunk_boxes, rows, cols)  # (c, h_c, w_c)
        # Flat output positions: mask * H * W + row * W + col, (c, h_c, w_c), all distinct.
        flat = (index[:, None, None] * height + rows[:, :, None]) * width + cols[:, None, :]
        values = pasted if threshold is None else pasted > threshold
        flat_result.scatter_(0, flat.view(-1), values.view(-1))
    return result


# torch.library.register_fake is not fully annotated
@torch.library.register_fake("detector::paste_masks")  # pyright: ignore[reportUntypedFunctionDecorator, reportUnknownMemberType]
def _paste_masks_fake(
    padded: Tensor, boxes: Tensor, height: int, width: int, threshold: float | None
) -> Tensor:
    dtype = padded.dtype if threshold is None else torch.bool
    return padded.new_empty((padded.shape[0], height, width), dtype=dtype)
