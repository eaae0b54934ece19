"""Image folders written to disk for tests: ordinary photos-like images and hostile ones."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A blobby RGB image, so that label maps have several regions."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (max(2, h // 12), max(2, w // 12), 3), dtype=np.uint8)
    return np.array(Image.fromarray(base).resize((w, h), Image.BICUBIC))


def write_plain_folder(root: Path, count: int, size=(48, 64)) -> list[str]:
    """``count`` PNG images in two subfolders; returns their relative paths."""
    names = []
    for i in range(count):
        name = f"{'ab'[i % 2]}/img_{i:03d}.png"
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_image(size[0] + i % 3, size[1] + i % 5, i)).save(path)
        names.append(name)
    return sorted(names)


def write_hostile_folder(root: Path) -> dict:
    """Every kind of file a real dataset folder holds; returns what a labeler should make of it."""
    root.mkdir(parents=True, exist_ok=True)
    img = smooth_image(40, 56, 1)
    Image.fromarray(img).save(root / "plain.jpg")
    nested = root / "deep" / "er" / "ünïcødé 名前"
    nested.mkdir(parents=True)
    Image.fromarray(img).save(nested / "photo é.png")
    Image.fromarray(img).save(root / "UPPER.JPG")
    Image.fromarray(img).save(root / "also.TIF")
    Image.fromarray(img).save(root / "web.webp")
    Image.fromarray(img).save(root / "bitmap.BMP")
    Image.fromarray(img).convert("CMYK").save(root / "cmyk.jpg")
    gray16 = (np.linspace(0, 65535, 40 * 56).reshape(40, 56)).astype(np.uint16)
    Image.fromarray(gray16).save(root / "gray16.png")
    Image.fromarray(img[:, :, 0]).save(root / "gray8.png")
    rgba = np.dstack([img, np.full(img.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba).save(root / "rgba.png")
    palette = Image.fromarray(img).convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(root / "palette.png", transparency=0)
    # stored 40 high x 56 wide, EXIF orientation 6 (rotate 90 CW): displayed 56 high x 40 wide
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(img).save(root / "exif_rotated.jpg", exif=exif)
    Image.fromarray(np.array([[[10, 200, 30]]], np.uint8)).save(root / "one_pixel.png")
    buffer = io.BytesIO()
    Image.fromarray(smooth_image(80, 80, 2)).save(buffer, format="JPEG")
    (root / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "not_an_image.jpg").write_text("this is text, not a JPEG")
    (root / "notes.txt").write_text("ignored")
    (root / ".hidden").mkdir()
    Image.fromarray(img).save(root / ".hidden" / "skip.png")
    return {
        "readable": sorted(["plain.jpg", "deep/er/ünïcødé 名前/photo é.png", "UPPER.JPG", "also.TIF", "web.webp",
                            "bitmap.BMP", "cmyk.jpg", "gray16.png", "gray8.png", "rgba.png", "palette.png",
                            "exif_rotated.jpg", "one_pixel.png"]),
        "broken": {"truncated.jpg": "truncated", "empty.png": "empty", "not_an_image.jpg": "not an image"},
        "sizes": {"exif_rotated.jpg": (40, 56), "one_pixel.png": (1, 1), "plain.jpg": (56, 40)},  # (width, height)
    }


def write_synthetic_run(root: Path, count: int, size=(30, 40), regions: int = 6, classes: int = 5) -> tuple[Path, Path]:
    """A dataset of ``count`` PNG images in nested folders and its finished run, written by the labeler's own
    writer (``finish_maps``, then the merge) from Voronoi label maps: no model. Returns (dataset, run folder)."""
    from clearclip.io.images import ImageFile, scan_images
    from clearclip.run.finish import finish_maps
    from clearclip.run.folder import RUN_MARKER, RunFolder
    from clearclip.run.job import LabelJob
    from clearclip.run.merge import merge_run

    dataset, run = root / "data", root / "run"
    height, width = size
    job = LabelJob(["background"] + [f"class {i}" for i in range(classes)], pretrained=None, min_area=1, min_area_fraction=0.0)
    config = job.label_config()
    folder = RunFolder(run)
    folder.prepare(job.info(config))
    yy, xx = np.mgrid[:height, :width]
    for index in range(count):
        name = f"{index % 3}/{index % 7}/img{index:05d}.png"
        (dataset / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_image(height, width, index)).save(dataset / name)
        rng = np.random.default_rng(index)
        seeds = rng.random((regions, 2)) * (height, width)
        cell = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1)
        categories = rng.integers(1, classes + 1, regions)[cell].astype(np.uint8)
        scores = (0.3 + 0.7 * rng.random(regions)[cell]).astype(np.float32)
        stat = (dataset / name).stat()
        finish_maps(folder, ImageFile(name, stat.st_size, stat.st_mtime_ns), categories, scores, config.vocabulary,
                    config.region_filter, "fp32")
    listing = scan_images(dataset, exclude=(run,), marker=RUN_MARKER)
    merge_run(folder, listing.images, config.vocabulary, job.info(config), {"dataset": str(dataset)}, exclusive=True)
    return dataset, run
