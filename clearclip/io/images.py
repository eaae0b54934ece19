"""Finding and decoding images: every supported file under a folder, decoded to upright 8-bit RGB.

Listing follows directory symlinks that resolve inside the dataset (each real folder is listed once, under
its own path when it has one; loops are cut) and reports what it could not list: unreadable folders,
symlinks that leave the dataset, names that are not valid UTF-8.
"""

from __future__ import annotations

import io
import mmap
import os
import stat
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ClearCLIPError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 100_000_000  # about 10000x10000; a run at this size peaks near 4 GB

Image.MAX_IMAGE_PIXELS = None  # the limit is ours (load_image's max_pixels), checked before decoding


@dataclass(frozen=True, slots=True)
class ImageFile:
    """An image of the dataset: ``/``-separated path relative to the root, byte size, modification time and,
    on object storage, its ETag (which tells versions apart where listed times have whole seconds)."""

    name: str
    size: int
    mtime_ns: int
    etag: str = ""


@dataclass
class ImageListing:
    """The images under a root, sorted by name, and the paths that could not be listed (``{"file", "error"}``)."""

    images: list[ImageFile] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [image.name for image in self.images]


class ImageLoadError(Exception):
    """An image that cannot be decoded; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # pickled by DataLoader workers and FiftyOne's: rebuilt from both arguments
        return type(self), (self.path, self.reason)


def printable(name: str) -> str:
    """A path as text that can be written anywhere: bytes that are not UTF-8 become ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def scan_images(root: str | Path, exclude: tuple[str | Path, ...] = (), marker: str | None = None) -> ImageListing:
    """The images under ``root`` (extensions in IMAGE_EXTENSIONS, any case), recursively.

    Hidden files and folders, folders in ``exclude`` and folders below ``root`` that hold a file named
    ``marker`` (clearclip run folders) are skipped. Raises ClearCLIPError when ``root`` is not a readable folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise ClearCLIPError(f"dataset folder {root} does not exist or is not a folder")
    real_root = os.path.realpath(root)
    excluded = {(info.st_dev, info.st_ino) for info in (os.stat(p) for p in exclude if os.path.isdir(p))}
    listing = ImageListing()
    visited: set[tuple[int, int]] = set()
    linked: list[tuple[str, str]] = []  # (relative path, absolute path) of directory symlinks, walked last

    def walk(relative: str, absolute: str) -> None:
        try:
            info = os.stat(absolute)
            if (info.st_dev, info.st_ino) in visited or (info.st_dev, info.st_ino) in excluded:
                return
            visited.add((info.st_dev, info.st_ino))
            with os.scandir(absolute) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as error:
            listing.problems.append({"file": printable(relative or "."), "error": f"folder cannot be read ({error.strerror})"})
            return
        if relative and marker is not None and any(e.name == marker for e in entries):
            return
        for entry in entries:
            name = f"{relative}/{entry.name}" if relative else entry.name
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    walk(name, entry.path)
                elif entry.is_symlink() and entry.is_dir():
                    linked.append((name, entry.path))
                elif Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                    info = entry.stat()
                    if not stat.S_ISREG(info.st_mode):
                        continue
                    if entry.is_symlink() and os.path.commonpath([os.path.realpath(entry.path), real_root]) != real_root:
                        listing.problems.append({"file": printable(name), "error": f"symlink to "
                                                 f"{printable(os.path.realpath(entry.path))}, outside the dataset: not followed"})
                        continue
                    if not _is_utf8(name):
                        listing.problems.append({"file": printable(name), "error": "file name is not valid UTF-8; rename it"})
                        continue
                    listing.images.append(ImageFile(name, info.st_size, info.st_mtime_ns))
            except OSError as error:  # a dangling symlink, a file removed while listing
                listing.problems.append({"file": printable(name), "error": f"cannot be read ({error.strerror})"})

    walk("", str(root))
    while linked:
        name, path = linked.pop(0)
        target = os.path.realpath(path)
        if os.path.commonpath([target, real_root]) != real_root:
            listing.problems.append({"file": printable(name), "error": f"symlink to {printable(target)}, outside the dataset: not followed"})
            continue
        walk(name, path)
    listing.images.sort(key=lambda image: image.name)
    listing.problems.sort(key=lambda problem: problem["file"])
    return listing


def list_objects(storage, exclude: tuple[str, ...] = (), marker: str | None = None) -> ImageListing:
    """The images under an object-storage root (``io.storage.ObjectStorage``), from one paged listing: keys
    with an image extension; hidden names, prefixes in ``exclude`` and prefixes holding a ``marker`` object
    (run folders) skipped."""
    objects = storage.list("", hidden=True)
    skipped = [f"{prefix.rstrip('/')}/" for prefix in exclude]
    skipped += [key[: -len(marker)] for key in objects if marker and key.endswith(f"/{marker}")]
    listing = ImageListing()
    for name, info in sorted(objects.items()):
        if Path(name).suffix.lower() not in IMAGE_EXTENSIONS or any(p.startswith(".") for p in name.split("/")):
            continue
        if not any(name.startswith(prefix) for prefix in skipped):
            listing.images.append(ImageFile(name, info.size, info.mtime_ns, info.etag))
    return listing


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
    return np.array(image if image.mode == "RGB" else image.convert("RGB"))  # convert would copy an RGB image


def _jpeg_scan_bytes(path: Path, content: bytes | None = None) -> int:
    """Bytes of entropy-coded data: from the first scan of the main image (after the marker segments, so not
    an EXIF thumbnail's) to its last end-of-image marker; bytes appended after that marker do not count.
    ``content``: the file's bytes, when read already (an object fetched from storage)."""
    with ExitStack() as stack:
        if content is None:
            file = stack.enter_context(open(path, "rb"))
            content = stack.enter_context(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))
        data = content
        position = 2  # after SOI
        while position + 4 <= len(data) and data[position] == 0xFF:
            marker = data[position + 1]
            if marker == 0xFF:  # fill byte
                position += 1
                continue
            length = int.from_bytes(data[position + 2 : position + 4], "big")
            position += 2 + length
            if marker == 0xDA:  # start of scan
                break
        end = data.rfind(b"\xff\xd9", position)
        return (end if end >= 0 else len(data)) - position


def _check_jpeg_length(image: Image.Image, path: Path, content: bytes | None) -> None:
    """A complete Huffman-coded JPEG spends at least one bit on every 8x8 block of luma; fewer coded bytes than
    that mean a header that promises more than the file holds (libjpeg pads such files with gray silently)."""
    if image.format == "JPEG" and image.width * image.height > 512 * (coded := _jpeg_scan_bytes(path, content)):
        raise ImageLoadError(path, f"truncated: the header says {image.width}x{image.height} but the file "
                                   f"holds only {coded} bytes of image data")


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS,
               reserve: Callable[[int], None] | None = None, content: bytes | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB, EXIF orientation applied; 16-bit, gray, palette, RGBA and CMYK converted.

    Raises ImageLoadError naming the file for empty, truncated, non-image files and for images of
    more than ``max_pixels`` pixels (checked from the header, before decoding). ``reserve(pixels)`` is
    called after those checks and before decoding (a ``PixelBudget`` turn waits there). ``content``: the
    file's bytes, fetched already (object storage); ``path`` then only names it.
    """
    path = Path(path) if content is None else path
    try:
        with Image.open(path if content is None else io.BytesIO(content)) as image:
            if image.width * image.height > max_pixels:
                raise ImageLoadError(path, f"{image.width}x{image.height} is {image.width * image.height / 1e6:.0f} "
                                           f"megapixels, above the limit of {max_pixels / 1e6:.0f}; raise --max-pixels to label it")
            _check_jpeg_length(image, path, content)
            if reserve is not None:
                reserve(image.width * image.height)
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except FileNotFoundError as error:
        raise ImageLoadError(path, "file not found") from error
    except UnidentifiedImageError as error:
        empty = len(content) == 0 if content is not None else Path(path).stat().st_size == 0
        reason = "empty file" if empty else "not an image PIL can decode"
        raise ImageLoadError(path, reason) from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageLoadError(path, f"cannot decode ({error}); the file may be truncated or corrupt") from error
