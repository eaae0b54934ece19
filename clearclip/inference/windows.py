"""Sliding-window geometry of the official evaluation: resize rule, window grid, centred padding."""

from __future__ import annotations

from typing import NamedTuple


class Window(NamedTuple):
    """A crop ``[y1:y2, x1:x2]`` of the resized image."""

    y1: int
    y2: int
    x1: int
    x2: int


class Padding(NamedTuple):
    """Zero padding that brings a window to a multiple of the patch size (odd pixel right/bottom)."""

    left: int
    right: int
    top: int
    bottom: int


def resized_size(height: int, width: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """(h, w) after ``scale = min(short_side / short, max_long_side / long)``, rounded to nearest.

    Rounds like mmcv's ``rescale_size`` (``int(x * scale + 0.5)``); ``short_side <= 0`` keeps the size.
    """
    if short_side <= 0:
        return height, width
    scale = min(short_side / min(height, width), max_long_side / max(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def sliding_windows(height: int, width: int, crop: int, stride: int) -> list[Window]:
    """Windows covering the image: ``n = max(size - crop + stride - 1, 0) // stride + 1`` per axis.

    Window i starts at ``i * stride``, is clipped to the image and shifted back to be ``crop``
    long where the image allows.
    """
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    windows = []
    for i in range(rows):
        for j in range(cols):
            y1, x1 = i * stride, j * stride
            y2, x2 = min(y1 + crop, height), min(x1 + crop, width)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            windows.append(Window(y1, y2, x1, x2))
    return windows


def center_padding(height: int, width: int, patch: int) -> Padding:
    """Padding to the next multiple of ``patch``, split evenly with the odd pixel on the right/bottom."""
    pad_h = -height % patch
    pad_w = -width % patch
    return Padding(pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)


def padded_size(window: Window, pad: Padding) -> tuple[int, int]:
    """(height, width) of a window with its padding."""
    return window.y2 - window.y1 + pad.top + pad.bottom, window.x2 - window.x1 + pad.left + pad.right
