"""Finding and decoding images: every supported file in a folder, decoded to upright 8-bit RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ClearCLIPError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class ImageLoadError(Exception):
    """An image that cannot be decoded; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def list_images(root: str | Path) -> list[str]:
    """Relative ``/``-separated paths of the images under ``root``, recursively, sorted.

    Matches the extensions in IMAGE_EXTENSIONS in any case; other files and hidden folders are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise ClearCLIPError(f"dataset folder {root} does not exist or is not a folder")
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            found.append(relative.as_posix())
    return sorted(found)


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode != "I" or array.max() > 255 else 255.0
        gray = np.clip(np.round(array * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        gray = np.zeros(array.shape, np.uint8) if high <= low else np.round((array - low) * (255.0 / (high - low))).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.array(image.convert("RGB"))


def load_image(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB, EXIF orientation applied; 16-bit, gray, palette, RGBA and CMYK converted.

    Raises ImageLoadError naming the file for empty, truncated, non-image and oversized files.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except FileNotFoundError as error:
        raise ImageLoadError(path, "file not found") from error
    except UnidentifiedImageError as error:
        reason = "empty file" if path.stat().st_size == 0 else "not an image PIL can decode"
        raise ImageLoadError(path, reason) from error
    except Image.DecompressionBombError as error:
        raise ImageLoadError(path, f"too large to decode safely ({error})") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(path, f"cannot decode ({error}); the file may be truncated or corrupt") from error
