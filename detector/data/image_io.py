"""Reading images: decoded to RGB uint8 with their EXIF orientation applied, and image sizes read
from the file header without decoding the pixels."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, read_file

from detector.data.errors import DatasetError

__all__ = ["check_decoded_size", "read_image", "read_image_size"]


def read_image(path: str | Path, max_pixels: int | None = None) -> Tensor:
    """Decodes an image file as RGB (grayscale and RGBA become RGB), EXIF orientation applied.

    Args:
        path: a JPEG, PNG, GIF or WebP file.
        max_pixels: refuse images with more pixels than this (decompression-bomb guard);
            checked on the header before decoding.

    Returns:
        uint8 Tensor[3, H, W] (16-bit images scaled to 8 bits).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image file not found: {path}")
    if max_pixels is not None:
        height, width = read_image_size(path)
        if height * width > max_pixels:
            raise DatasetError(
                f"{path}: {width}x{height} = {height * width} pixels exceeds "
                f"INPUT.MAX_IMAGE_PIXELS = {max_pixels}; raise that key if the image is genuine"
            )
    try:
        data = read_file(str(path))
        image = decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError as e:
        raise DatasetError(f"cannot decode image {path}: {e}") from None
    return _to_uint8(image, path)


def _to_uint8(image: Tensor, path: Path) -> Tensor:
    """8 bits per channel: 16-bit images (PNG) are scaled by 255 / 65535 with rounding; lower bit
    depths are already scaled up to 0..255 by the decoder."""
    if image.dtype == torch.uint8:
        return image
    if image.dtype == torch.uint16:
        return ((image.to(torch.int32) + 128) // 257).to(torch.uint8)
    raise DatasetError(f"{path}: decoded as {image.dtype}; only 8- and 16-bit images are read")


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header (EXIF orientation applied, so it
    matches `read_image`); the pixels are not decoded."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = _exif_orientation(image)
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except Image.DecompressionBombError as e:  # PIL refuses to open more than 2x its limit
        raise DatasetError(
            f"{path}: refused before decoding, a possible decompression bomb ({e}); "
            "INPUT.MAX_IMAGE_PIXELS cannot admit images past PIL's limit"
        ) from None
    except OSError as e:
        raise DatasetError(f"cannot read image header of {path}: {e}") from None
    if orientation in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
        width, height = height, width
    return int(height), int(width)


def check_decoded_size(image: Tensor, expected: tuple[int, int], path: str | Path) -> None:
    """Raises a DatasetError when a decoded image's size differs from the annotated one."""
    got = (int(image.shape[-2]), int(image.shape[-1]))
    if got != tuple(expected):
        raise DatasetError(
            f"{path}: decoded image is {got[1]}x{got[0]} (width x height, EXIF orientation "
            f"applied) but the annotation says {expected[1]}x{expected[0]}; fix the annotation's "
            "width/height (or the image's EXIF orientation)"
        )


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation tag (1 when absent). A PNG's EXIF chunk is read only when it comes
    before the pixels (as PIL reports it at open), so the pixels are never decoded."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    return int(image.getexif().get(0x0112, 1))
