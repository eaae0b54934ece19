"""Listing a dataset folder and decoding its files: what is followed, skipped and reported."""

import io
import os
import struct

import numpy as np
import pytest
from PIL import Image

import clearclip.io.images as images_module
from clearclip.io.images import ImageLoadError, load_image, scan_images
from clearclip.run.folder import RUN_MARKER
from folders import smooth_image


def save(path, size=(20, 30), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(smooth_image(*size, seed)).save(path)


def test_symlinked_folders_inside_are_followed_once_and_outside_ones_reported(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    save(data / "real" / "a.png")
    save(data / "other" / "b.png")
    save(outside / "c.png")
    (data / "linked").symlink_to(data / "other")  # the same folder as other/: listed once, under its own name
    (data / "elsewhere").symlink_to(outside)
    (data / "real" / "loop").symlink_to(data)  # a loop back to the root
    (data / "only-by-link").mkdir()
    save(tmp_path / "hidden-real" / "d.png")
    os.rename(tmp_path / "hidden-real", data / ".hidden-real")
    (data / "visible").symlink_to(data / ".hidden-real")
    (data / "secret.png").symlink_to(outside / "c.png")  # a file link out is refused like a folder link out
    (data / "alias.png").symlink_to(data / "real" / "a.png")  # one inside is an image like any other
    listing = scan_images(data)
    assert listing.names == ["alias.png", "other/b.png", "real/a.png", "visible/d.png"]
    assert [p["file"] for p in listing.problems] == ["elsewhere", "secret.png"]
    assert all("outside the dataset: not followed" in p["error"] for p in listing.problems)


def test_unreadable_folders_are_reported(tmp_path, monkeypatch):
    save(tmp_path / "ok" / "a.png")
    save(tmp_path / "locked" / "b.png")
    real_scandir = os.scandir

    def scandir(path):  # root reads any folder whatever its mode, so the refusal is simulated
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(images_module.os, "scandir", scandir)
    listing = scan_images(tmp_path)
    assert listing.names == ["ok/a.png"]
    assert listing.problems == [{"file": "locked", "error": "folder cannot be read (Permission denied)"}]


def test_names_that_are_not_utf8_are_reported_not_listed(tmp_path):
    save(tmp_path / "good.png")
    bad = os.fsdecode(b"caf\xe9.jpg")
    save(tmp_path / bad)
    listing = scan_images(tmp_path)
    assert listing.names == ["good.png"]
    assert listing.problems == [{"file": "caf\\xe9.jpg", "error": "file name is not valid UTF-8; rename it"}]


def test_run_folders_inside_the_dataset_are_never_listed(tmp_path):
    save(tmp_path / "a.png")
    save(tmp_path / "runs" / "old" / "labels" / "a.png")
    (tmp_path / "runs" / "old" / RUN_MARKER).touch()
    save(tmp_path / "out" / "labels" / "x.png")
    assert scan_images(tmp_path, exclude=(tmp_path / "out",), marker=RUN_MARKER).names == ["a.png"]


def test_a_jpeg_whose_header_promises_more_than_it_holds_is_a_failure(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(smooth_image(64, 64, 3)[:, :, 0]).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    start = data.find(b"\xff\xc0")
    data[start + 5 : start + 9] = struct.pack(">HH", 9000, 9000)  # the frame header now says 9000x9000
    (tmp_path / "fake.jpg").write_bytes(bytes(data))
    with pytest.raises(ImageLoadError, match="truncated: the header says 9000x9000"):
        load_image(tmp_path / "fake.jpg")
    save(tmp_path / "flat.jpg", size=(500, 400))  # a complete JPEG of a smooth picture is far above the bound
    assert load_image(tmp_path / "flat.jpg").shape == (500, 400, 3)
    Image.new("RGB", (400, 300), (90, 90, 90)).save(tmp_path / "gray.jpg")  # a uniform one too
    assert load_image(tmp_path / "gray.jpg").shape == (300, 400, 3)


def test_zeros_after_the_end_marker_do_not_hide_a_header_that_promises_more(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(smooth_image(64, 64, 3)[:, :, 0]).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    start = data.find(b"\xff\xc0")
    data[start + 5 : start + 9] = struct.pack(">HH", 9000, 9000)
    (tmp_path / "padded.jpg").write_bytes(bytes(data) + bytes(200_000))  # the file is now above the bound
    with pytest.raises(ImageLoadError, match="truncated: the header says 9000x9000 but the file holds only"):
        load_image(tmp_path / "padded.jpg")


def test_a_complete_jpeg_with_a_thumbnail_and_trailing_bytes_loads(tmp_path):
    thumbnail = io.BytesIO()
    Image.fromarray(smooth_image(16, 16, 3)).save(thumbnail, format="JPEG")
    exif = Image.Exif()
    exif[0x0112] = 1
    picture = Image.fromarray(smooth_image(300, 200, 3))
    picture.save(tmp_path / "photo.jpg", exif=exif.tobytes())
    data = (tmp_path / "photo.jpg").read_bytes()
    (tmp_path / "photo.jpg").write_bytes(data[:2] + b"\xff\xe1" + (len(thumbnail.getvalue()) + 8).to_bytes(2, "big")
                                         + b"Exif\0\0" + thumbnail.getvalue() + data[2:] + bytes(1000))
    assert load_image(tmp_path / "photo.jpg").shape == (300, 200, 3)


def test_images_above_the_pixel_limit_are_reported_before_decoding(tmp_path):
    save(tmp_path / "big.png", size=(100, 120))
    with pytest.raises(ImageLoadError, match="120x100 is 0 megapixels, above the limit of 0; raise --max-pixels"):
        load_image(tmp_path / "big.png", max_pixels=11_999)
    assert load_image(tmp_path / "big.png", max_pixels=12_000).shape == (100, 120, 3)


def test_a_png_truncated_in_its_data_is_a_failure(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(tmp_path / "cut.png")
