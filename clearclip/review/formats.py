"""Exports in the formats labelers use: YOLO segmentation, CVAT for images 1.1, PNG label maps, COCO.

YOLO and CVAT store polygons, which cannot hold a hole or two parts. Every connected part of an instance
mask becomes its own polygon, and each hole is joined to its part's outer boundary by a zero-width cut
through the object's own pixels, so filling the polygon leaves the hole empty. Vertices are the exact
pixel contours (OpenCV's ``CHAIN_APPROX_SIMPLE`` only drops points inside straight runs): no tolerance.
FiftyOne's own mask-to-polygon conversion is not used: it turns holes into separate filled polygons and
drops regions under two pixels wide. Read back with FiftyOne's importers, every instance has IoU 1.0 with
its mask (tested).

Every format streams: images come from the database one at a time (``export.iter_labeled_images``) and
each is written before the next is read, so memory stays flat in the number of images (FiftyOne's CVAT
exporter held the whole document). Each image keeps its path in the run's dataset folder under the
format's media and label folders (``images/train/a/b.jpg``, ``labels/train/a/b.txt``), so two images of one
name in two folders never collide. Label files are named by the image's stem, as the tools expect; where two
images share a stem in one folder (``a.jpg``, ``a.png``), the later one is exported as ``a-png.png`` (then
``a-png-2.png``...), media and label alike. Media are symlinks to the originals.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from xml.sax.saxutils import escape, quoteattr

import cv2
import numpy as np

from ..errors import ClearCLIPError
from ..io.label_png import save_label_png
from ..run.paths import contained
from .export import LabeledImage, export_coco, iter_labeled_images, tagged_view
from .fields import EXCLUDED_TAGS, PRED_FIELD, check_detections_field, detection_mask

FORMATS = ("coco", "yolo", "cvat", "masks")


def _keyhole(outer: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """One polygon: ``outer`` with each hole spliced in at the closest pair of points (a zero-width cut)."""
    polygon = outer
    for hole in holes:
        distances = ((polygon[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(np.argmin(distances), distances.shape)
        polygon = np.concatenate([polygon[: i + 1], hole[j:], hole[: j + 1], polygon[i:]])
    return polygon


def mask_polygons(mask: np.ndarray, x: int = 0, y: int = 0) -> list[np.ndarray]:
    """Polygons ((N, 2) pixel coordinates, x then y, offset by (x, y)) that fill exactly ``mask``: one per
    connected part (8-connected), holes kept by keyhole cuts. Polygons under 3 points repeat their points."""
    contours, hierarchy = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_CCOMP,
                                           cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    polygons = []
    for index, (_, _, child, parent) in enumerate(hierarchy[0]):
        if parent != -1:
            continue  # a hole: spliced into its outer boundary below
        holes = []
        while child != -1:
            holes.append(contours[child][:, 0, :])
            child = hierarchy[0][child][0]
        polygon = _keyhole(contours[index][:, 0, :], holes)
        if len(polygon) < 3:
            polygon = np.resize(polygon, (3, 2))
        polygons.append(polygon + (x, y))
    return polygons


def instance_polygons(detection, width: int, height: int) -> list[np.ndarray]:
    """The polygons of one detection's mask in relative coordinates (x / width, y / height), each vertex a
    quarter pixel into its pixel, so readers that round coordinates (FiftyOne, CVAT) and readers that truncate
    them (Ultralytics) both land on that pixel."""
    mask, x, y = detection_mask(detection, width, height)
    return [(polygon + 0.25) / (width, height) for polygon in mask_polygons(mask, x, y)]


def _samples(dataset_name: str, field: str, tags, exclude_tags):
    view = tagged_view(dataset_name, tags, exclude_tags)
    dataset = view._dataset
    check_detections_field(dataset, field, "--field names the Detections field to export")
    classes = [c["name"] for c in dataset.info.get("clearclip", {}).get("categories", [])]
    extra = sorted(set(view.distinct(f"{field}.detections.label")) - set(classes))
    return view, classes + extra


def _empty_folder(out: Path) -> Path:
    """``out``, created, if it is missing or an empty folder in an existing folder; else a ClearCLIPError."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ClearCLIPError(f"{out} exists and is not an empty folder; give a new folder for this format")
    if not out.parent.is_dir():
        raise ClearCLIPError(f"the folder of {out} does not exist; create it first")
    out.mkdir(exist_ok=True)
    return out


def in_val_split(name: str, val_fraction: float) -> bool:
    """Whether an image goes to the ``val`` split: a hash of its name below ``val_fraction``, so the split of
    an image never changes between exports."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def export_dataset(dataset_name: str, out: str | Path, format: str = "coco", field: str = PRED_FIELD,
                   tags: Sequence[str] | None = None, exclude_tags: Sequence[str] = EXCLUDED_TAGS,
                   overwrite: bool = False, val_fraction: float = 0.0) -> int:
    """Export the Detections of ``field`` in ``format``; returns the number of images written.

    coco: one JSON file (``out``; an existing file only with ``overwrite``). yolo: ``out/`` in Ultralytics'
    segmentation layout (images/{train,val}, labels/{train,val}/*.txt, ``out/data.yaml`` with ``train`` and
    ``val``), images linked; ``val_fraction`` of the images (by ``in_val_split``) form ``val``, and with 0
    ``val`` is the training images; an image's split is stable (its name in the run's dataset folder hashed).
    cvat: ``out/labels.xml`` (CVAT for images 1.1, polygons) and ``out/data/``.
    masks: ``out/data/``, ``out/labels/*.png`` (pixel value = class index + 1, 0 = background) and
    ``out/classes.txt`` (line i = the class of value i).
    """
    if format not in FORMATS:
        raise ClearCLIPError(f"unknown format '{format}'; choose one of {', '.join(FORMATS)}")
    if format == "coco":
        return export_coco(dataset_name, out, field, tags, exclude_tags, overwrite)[0]
    if not 0.0 <= val_fraction < 1.0:
        raise ClearCLIPError(f"--val-fraction must be at least 0 and below 1 (got {val_fraction})")
    out = _empty_folder(Path(out))
    view, classes = _samples(dataset_name, field, tags, exclude_tags)
    images = iter_labeled_images(view, field)
    if format == "yolo":
        return _write_yolo(images, out, classes, val_fraction)
    if format == "cvat":
        return _write_cvat(images, out, classes, len(view), view._dataset.name)
    return _write_masks(images, out, classes)


def _labeled(out: Path, folder: str, image: LabeledImage, suffix: str) -> tuple[LabeledImage, Path]:
    """The image, renamed if another image of its stem already took its label file, and that label file
    (``out/folder/<stem><suffix>``). The export folder starts empty, so a label already there is this
    export's: ``a.jpg`` took ``a.txt``, so ``a.png`` becomes ``a-png.png`` (``a-png.txt``), then
    ``a-png-2.png``."""
    name = PurePosixPath(image.name)
    renamed = (name.with_name(f"{name.stem}-{name.suffix[1:] or 'file'}{'' if n == 1 else f'-{n}'}{name.suffix}")
               for n in itertools.count(1))
    for candidate in itertools.chain([name], renamed):
        label = contained(out, out / folder / candidate).with_suffix(suffix)
        if not label.exists():
            return (image if candidate == name else dataclasses.replace(image, name=str(candidate))), label


def _link(out: Path, folder: str, image: LabeledImage) -> None:
    """``out/folder/<image name>``: a symlink to the image."""
    link = contained(out, out / folder / image.name)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.abspath(image.filepath))


def fixed_point(values: np.ndarray, decimals: int, separators: np.ndarray) -> str:
    """Non-negative ``values`` written with ``decimals`` decimals (as ``%.Nf`` writes them, up to the rounding
    of the last digit), each followed by its byte of ``separators``. Vectorised: the vertices of exact pixel
    contours are thousands of numbers per image."""
    scaled = np.round(np.asarray(values, np.float64) * 10**decimals).astype(np.int64)
    if len(scaled) == 0:
        return ""
    digits = max(len(str(int(scaled.max()))), decimals + 1)
    whole = digits - decimals
    matrix = (scaled[:, None] // 10 ** np.arange(digits - 1, -1, -1, dtype=np.int64)) % 10 + ord("0")
    chars = np.empty((len(scaled), digits + 2), np.uint8)
    chars[:, :whole], chars[:, whole], chars[:, whole + 1 : -1] = matrix[:, :whole], ord("."), matrix[:, whole:]
    chars[:, -1] = separators
    keep = np.ones(chars.shape, bool)
    keep[:, : whole - 1] = np.cumprod(matrix[:, : whole - 1] == ord("0"), axis=1) == 0  # no leading zeros
    return chars[keep].tobytes().decode("ascii")


def polygon_rows(polygons: list[np.ndarray], decimals: int, pair: bytes, point: bytes) -> list[str]:
    """One line per polygon: ``x<pair>y<point>x<pair>y...``, all of an image's polygons formatted at once."""
    if not polygons:
        return []
    values = np.concatenate([polygon.ravel() for polygon in polygons])
    separators = np.resize(np.frombuffer(pair + point, np.uint8), len(values))
    separators[np.cumsum([polygon.size for polygon in polygons]) - 1] = ord("\n")
    return fixed_point(values, decimals, separators).split("\n")[:-1]


def _write_yolo(images: Iterable[LabeledImage], out: Path, classes: list[str], val_fraction: float) -> int:
    """Ultralytics' segmentation layout: ``images/{train,val}/<name>``, ``labels/{train,val}/<name>.txt`` (one
    row per polygon: class index, then x y pairs) and ``data.yaml`` with ``train``, ``val`` and ``names``, no
    ``path`` (Ultralytics reads the splits relative to the YAML file, wherever the export is moved)."""
    import yaml

    index = {name: i for i, name in enumerate(classes)}
    count, has_val = 0, False
    for image in images:
        split = "val" if in_val_split(image.name, val_fraction) else "train"
        has_val |= split == "val"
        image, label = _labeled(out, f"labels/{split}", image, ".txt")
        _link(out, f"images/{split}", image)
        parts = [(index[detection.label], polygon) for detection in image.detections
                 for polygon in instance_polygons(detection, image.width, image.height)]
        rows = polygon_rows([polygon for _, polygon in parts], 6, b" ", b" ")
        text = "".join(f"{class_index} {row}\n" for (class_index, _), row in zip(parts, rows))
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text(text, encoding="utf-8")
        count += 1
    spec = {"train": "images/train", "val": "images/val" if has_val else "images/train",
            "nc": len(classes), "names": dict(enumerate(classes))}
    (out / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return count


def _write_cvat(images: Iterable[LabeledImage], out: Path, classes: list[str], size: int, name: str) -> int:
    """``out/labels.xml`` in CVAT for images 1.1, written as the images stream by, and ``out/data/<name>``.
    Each part of an instance is a polygon; the parts of one instance share a ``group_id``; the model's score
    is the polygon's ``confidence`` attribute (declared on every label)."""
    (out / "data").mkdir()
    confidence = ("<attributes><attribute><name>confidence</name><mutable>True</mutable><input_type>number"
                  "</input_type><default_value>0</default_value><values>0\n1\n0.000001</values></attribute>"
                  "</attributes>")
    labels = "".join(f"<label><name>{escape(c)}</name><type>polygon</type>{confidence}</label>" for c in classes)
    count, group = 0, 0
    with open(out / "labels.xml", "w", encoding="utf-8") as xml:
        xml.write(f'<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n<version>1.1</version>\n<meta><task>'
                  f"<name>{escape(name)}</name><size>{size}</size><mode>annotation</mode>"
                  f"<labels>{labels}</labels></task></meta>\n")
        for image in images:
            _link(out, "data", image)
            xml.write(f'<image id="{count}" name={quoteattr(image.name)} width="{image.width}" height="{image.height}">\n')
            parts = [(group + number, detection, polygon) for number, detection in enumerate(image.detections, 1)
                     for polygon in instance_polygons(detection, image.width, image.height)]
            group += len(image.detections)
            scale = (image.width, image.height)
            for (number, detection, _), points in zip(parts, polygon_rows([p * scale for _, _, p in parts], 2, b",", b";")):
                score = "" if detection.confidence is None else \
                    f'<attribute name="confidence">{detection.confidence:.6f}</attribute>'
                xml.write(f'<polygon label={quoteattr(detection.label)} source="auto" occluded="0" '
                          f'points="{points}" z_order="0" group_id="{number}">{score}</polygon>\n')
            xml.write("</image>\n")
            count += 1
        xml.write("</annotations>\n")
    return count


def _write_masks(images: Iterable[LabeledImage], out: Path, classes: list[str]) -> int:
    """``out/data/<name>``, ``out/labels/<name>.png`` (pixel value = class index + 1, 0 = background, later
    instances on top) and ``out/classes.txt`` (line i = the class of value i)."""
    value = {name: i + 1 for i, name in enumerate(classes)}
    count = 0
    for image in images:
        image, label = _labeled(out, "labels", image, ".png")
        _link(out, "data", image)
        label_map = np.zeros((image.height, image.width), np.uint8 if len(classes) < 255 else np.uint16)
        for detection in image.detections:
            mask, x, y = detection_mask(detection, image.width, image.height)
            label_map[y : y + mask.shape[0], x : x + mask.shape[1]][mask] = value[detection.label]
        label.parent.mkdir(parents=True, exist_ok=True)
        save_label_png(label_map, label)
        count += 1
    (out / "classes.txt").write_text("\n".join(["background", *classes]) + "\n", encoding="utf-8")
    return count
