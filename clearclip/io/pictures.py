"""Pictures a person can look at: class colours, and colour overlays with a legend."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_path


def palette(count: int) -> np.ndarray:
    """(count, 3) uint8 distinct colours; index 0 is black-ish grey for background-like classes."""
    colours = [(64, 64, 64)]
    for i in range(1, count):
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95 if i % 2 else 0.75)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.array(colours[:count], dtype=np.uint8).reshape(-1, 3)


def overlay(image: np.ndarray, labels: np.ndarray, names: list[str], alpha: float = 0.5) -> Image.Image:
    """The image with each class tinted in its colour, and a legend of the classes present, largest first."""
    colours = palette(len(names))
    blended = (image.astype(np.float32) * (1 - alpha) + colours[labels].astype(np.float32) * alpha).astype(np.uint8)
    counts = np.bincount(labels.ravel(), minlength=len(names))
    present = [int(i) for i in np.argsort(-counts) if counts[i] > 0]
    font = ImageFont.load_default()
    line = 16
    legend_w = 12 + max((int(font.getlength(f"{names[i]}  100.0%")) for i in present), default=0) + 24
    height = max(image.shape[0], line * len(present) + 8)
    canvas = Image.new("RGB", (image.shape[1] + legend_w, height), (255, 255, 255))
    canvas.paste(Image.fromarray(blended), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = image.shape[1] + 8
    for row, i in enumerate(present):
        y = 4 + row * line
        draw.rectangle([x, y + 2, x + 10, y + 12], fill=tuple(int(c) for c in colours[i]))
        draw.text((x + 16, y), f"{names[i]}  {100 * counts[i] / labels.size:.1f}%", fill=(0, 0, 0), font=font)
    return canvas


def save_overlay(image: np.ndarray, labels: np.ndarray, names: list[str], path: str | Path) -> None:
    """Write ``overlay(...)`` as a PNG, atomically."""
    with atomic_path(path) as tmp:
        overlay(image, labels, names).save(tmp, format="PNG")
