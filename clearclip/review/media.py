"""Viewable copies of the images a browser cannot show, in a media cache the App reads.

The FiftyOne App shows media through the browser, which cannot decode TIFF (and not every 16-bit PNG): such
a tile is broken. For those images review writes a PNG of the image as the model saw it
(``io.images.load_image``: EXIF orientation applied, 16-bit scaled to 8 bits, CMYK to RGB, so the masks sit
where the model put them) into ``<cache>/media`` (``$CLEARCLIP_CACHE_DIR``, default ``~/.cache/clearclip``),
named by a hash of the image's path, size and modification time: a rerun reuses the copy, a changed image
gets a new one. The sample's ``viewable_filepath`` names what the App shows (the original, for every other
image); exports, evaluation and the model read ``filepath``.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from ..io.atomic import write_bytes
from ..io.cache import default_cache_dir
from ..io.images import ImageLoadError, load_image

VIEWABLE_FIELD = "viewable_filepath"
BROWSER_FORMATS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".avif"})


def media_cache_dir() -> Path:
    """Where viewable copies are kept."""
    return default_cache_dir() / "media"


def needs_viewable_copy(filepath: str) -> bool:
    """Whether a browser may fail to show the image: a format outside ``BROWSER_FORMATS``, or a 16-bit PNG."""
    suffix = os.path.splitext(filepath)[1].lower()
    if suffix != ".png":
        return suffix not in BROWSER_FORMATS
    try:
        with open(filepath, "rb") as f:
            header = f.read(25)
    except OSError:
        return False
    return len(header) == 25 and header[12:16] == b"IHDR" and header[24] == 16


def viewable_path(filepath: str) -> str:
    """What the App should show for ``filepath``: the file itself, or its PNG copy in the media cache (written
    now unless already there). An image that cannot be read is shown as it is (its tile says it is broken)."""
    if not needs_viewable_copy(filepath):
        return filepath
    try:
        stat = os.stat(filepath)
    except OSError:
        return filepath
    key = hashlib.sha1(f"{filepath}\0{stat.st_size}\0{stat.st_mtime_ns}".encode("utf-8", "surrogateescape"))
    copy = media_cache_dir() / key.hexdigest()[:2] / f"{key.hexdigest()}.png"
    if not copy.exists():
        from PIL import Image

        try:
            pixels = load_image(filepath)
        except ImageLoadError:
            return filepath
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
        copy.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(copy, buffer.getvalue())
    return str(copy)
