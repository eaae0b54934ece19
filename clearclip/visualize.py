"""Pictures a person can look at: label maps as PNG, colour overlays with a legend."""

from __future__ import annotations

import colorsys
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_path, write_bytes


def palette(count: int) -> np.ndarray:
    """(count, 3) uint8 distinct colours; index 0 is black-ish grey for background-like classes."""
    colours = [(64, 64, 64)]
    for i in range(1, count):
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95 if i % 2 else 0.75)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.array(colours[:count], dtype=np.uint8).reshape(-1, 3)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_label_png(labels: np.ndarray) -> bytes:
    """A grayscale PNG (8-bit, or 16-bit past 255) of a label map, lossless.

    Label maps are long runs of a few values: every row unfiltered and deflated with zlib's run-length
    strategy encodes them at a third of libpng's time (its adaptive filtering costs the most), as small.
    """
    depth = 8 if labels.max(initial=0) < 256 else 16
    height, width = labels.shape
    rows = np.zeros((height, 1 + width * depth // 8), np.uint8)  # each row: filter type 0, then the pixels
    rows[:, 1:] = labels.astype(">u2" if depth == 16 else np.uint8).view(np.uint8).reshape(height, -1)
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    data = deflate.compress(rows.tobytes()) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)  # grayscale, no interlace
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def save_label_png(labels: np.ndarray, path: str | Path) -> None:
    """Write ``encode_label_png(labels)`` atomically."""
    write_bytes(path, encode_label_png(labels))


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
