"""Precision/recall curves per class drawn into one PNG, a grid of small panels.

matplotlib is not part of the environment, so the panels are drawn with PIL's ImageDraw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["PRCurve", "draw_pr_curves"]

_PANEL = (300, 240)  # width, height of one panel in pixels
_MARGIN = (40, 28, 12, 30)  # left, top, right, bottom margin of the axes inside a panel
_COLUMNS = 4


@dataclass
class PRCurve:
    """One class's curve: `recall` and `precision` are float arrays [P] of the same length."""

    recall: np.ndarray
    precision: np.ndarray
    ap: float


def draw_pr_curves(curves: Mapping[str, PRCurve], path: str | Path, title: str = "") -> Path:
    """Draws one panel per class (precision against recall, both 0..1, AP in the panel title)
    and saves the grid as a PNG at `path`."""
    names = list(curves)
    columns = max(1, min(_COLUMNS, len(names)))
    rows = max(1, math.ceil(len(names) / columns))
    header = 24 if title else 0
    image = Image.new("RGB", (columns * _PANEL[0], rows * _PANEL[1] + header), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    if title:
        draw.text((8, 6), title, fill="black", font=font)
    for index, name in enumerate(names):
        origin = ((index % columns) * _PANEL[0], (index // columns) * _PANEL[1] + header)
        _draw_panel(draw, font, origin, name, curves[name])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _draw_panel(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    origin: tuple[int, int],
    name: str,
    curve: PRCurve,
) -> None:
    left = origin[0] + _MARGIN[0]
    top = origin[1] + _MARGIN[1]
    right = origin[0] + _PANEL[0] - _MARGIN[2]
    bottom = origin[1] + _PANEL[1] - _MARGIN[3]

    def to_pixel(recall: float, precision: float) -> tuple[float, float]:
        return left + recall * (right - left), bottom - precision * (bottom - top)

    ap = "-" if math.isnan(curve.ap) else f"{curve.ap:.3f}"
    draw.text((left, origin[1] + 8), f"{name}  AP={ap}", fill="black", font=font)
    for tick in np.linspace(0.0, 1.0, 6):
        x, y = to_pixel(tick, tick)
        draw.line([(x, top), (x, bottom)], fill=(225, 225, 225))
        draw.line([(left, y), (right, y)], fill=(225, 225, 225))
        draw.text((x - 8, bottom + 4), f"{tick:.1f}", fill="gray", font=font)
        draw.text((left - 30, y - 6), f"{tick:.1f}", fill="gray", font=font)
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((right - 40, bottom + 16), "recall", fill="black", font=font)
    points = [
        to_pixel(float(r), float(p)) for r, p in zip(curve.recall, curve.precision, strict=True)
    ]
    if len(points) >= 2:
        draw.line(points, fill=(31, 119, 180), width=2)
    elif len(points) == 1:
        x, y = points[0]
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(31, 119, 180))
