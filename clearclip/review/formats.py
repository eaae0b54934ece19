"""Exports in the formats labelers use: YOLO segmentation, CVAT for images 1.1, PNG label maps, COCO.

YOLO and CVAT store polygons, which cannot hold a hole or two parts. Every connected part of an instance
mask becomes its own polygon, and each hole is joined to its part's outer boundary by a zero-width cut
through the object's own pixels, so filling the polygon leaves the hole empty. Vertices are the exact
pixel contours (OpenCV's ``CHAIN_APPROX_SIMPLE`` only drops points inside straight runs): no tolerance.
FiftyOne's own mask-to-polygon conversion is not used: it turns holes into separate filled polygons and
drops regions under two pixels wide. FiftyOne's exporters then write the polygons (one YOLO row or CVAT
polygon per part) and the label maps. Read back, every instance has IoU 1.0 with its mask (tested).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..errors import ClearCLIPError
from .export import export_coco, tagged_view
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


def detection_polylines(detections, width: int, height: int):
    """fo.Polylines with one closed, filled Polyline per part of each detection's mask, keeping the detection's
    label and confidence. Each vertex sits a quarter pixel into its pixel, so readers that round coordinates
    (FiftyOne, CVAT) and readers that truncate them (Ultralytics) both land on that pixel."""
    import fiftyone as fo

    polylines = []
    for detection in detections.detections if detections is not None else []:
        mask, x, y = detection_mask(detection, width, height)
        for polygon in mask_polygons(mask, x, y):
            points = [((px + 0.25) / width, (py + 0.25) / height) for px, py in polygon.tolist()]
            polylines.append(fo.Polyline(label=detection.label, points=[points], closed=True, filled=True,
                                         confidence=detection.confidence))
    return fo.Polylines(polylines=polylines)


def _samples(dataset_name: str, field: str, tags, exclude_tags):
    view = tagged_view(dataset_name, tags, exclude_tags)
    dataset = view._dataset
    check_detections_field(dataset, field, "--field names the Detections field to export")
    classes = [c["name"] for c in dataset.info.get("clearclip", {}).get("categories", [])]
    extra = sorted(set(view.distinct(f"{field}.detections.label")) - set(classes))
    view.compute_metadata()
    return view.select_fields(field), classes + extra


def _empty_folder(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ClearCLIPError(f"{out} exists and is not an empty folder; give a new folder for this format")
    if not out.parent.is_dir():
        raise ClearCLIPError(f"the folder of {out} does not exist; create it first")
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
    import fiftyone.utils.cvat as fouc
    import fiftyone.utils.data as foud

    if not 0.0 <= val_fraction < 1.0:
        raise ClearCLIPError(f"--val-fraction must be at least 0 and below 1 (got {val_fraction})")
    out = _empty_folder(Path(out))
    view, classes = _samples(dataset_name, field, tags, exclude_tags)
    if format == "yolo":
        return _export_yolo(view, out, field, classes, val_fraction)
    if format == "cvat":
        exporter = fouc.CVATImageDatasetExporter(str(out), export_media="symlink")
    else:
        targets = {i + 1: name for i, name in enumerate(classes)}
        exporter = foud.ImageSegmentationDirectoryExporter(str(out), export_media="symlink", mask_targets=targets)
    count = _export_samples(exporter, view, field, classes, format)
    if format == "masks":
        (out / "classes.txt").write_text("\n".join(["background", *classes]) + "\n", encoding="utf-8")
    return count


def _export_samples(exporter, view, field: str, classes: list[str], format: str) -> int:
    count = 0
    with exporter:
        exporter.log_collection(view)
        for sample in view.iter_samples():
            width, height = sample.metadata.width, sample.metadata.height
            if format == "masks":
                label = _label_map(sample[field], width, height, classes)
            else:
                label = detection_polylines(sample[field], width, height)
            exporter.export_sample(sample.filepath, label, metadata=sample.metadata)
            count += 1
    return count


def _export_yolo(view, out: Path, field: str, classes: list[str], val_fraction: float) -> int:
    """Each split through FiftyOne's YOLOv5 exporter into ``out``, then ``data.yaml`` made to hold both splits
    and no ``path`` (Ultralytics then reads the splits relative to the YAML file, wherever it is moved)."""
    import fiftyone.utils.yolo as fouy
    import yaml

    root = view._dataset.info.get("clearclip", {}).get("dataset_dir")  # names relative to it, on any machine
    ids, filepaths = view.values("id"), view.values("filepath")
    val = [i for i, path in zip(ids, filepaths) if in_val_split(os.path.relpath(path, root) if root else path, val_fraction)]
    count = 0
    for split, samples in (("train", view.exclude(val)), ("val", view.select(val))):
        if split == "val" and not val:
            continue
        exporter = fouy.YOLOv5DatasetExporter(str(out), split=split, classes=classes, export_media="symlink",
                                              yaml_path="data.yaml")
        count += _export_samples(exporter, samples, field, classes, "yolo")
    data_yaml = out / "data.yaml"
    spec = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    spec.pop("path", None)
    spec.setdefault("val", spec["train"])  # no held-out images: validation on the training images
    data_yaml.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return count


def _label_map(detections, width: int, height: int, classes: list[str]):
    """fo.Segmentation of class index + 1 per pixel, instances painted in order (later ones on top)."""
    import fiftyone as fo

    value = {name: i + 1 for i, name in enumerate(classes)}
    label_map = np.zeros((height, width), np.uint8 if len(classes) < 255 else np.uint16)
    for detection in detections.detections if detections is not None else []:
        mask, x, y = detection_mask(detection, width, height)
        region = label_map[y : y + mask.shape[0], x : x + mask.shape[1]]
        region[mask] = value[detection.label]
    return fo.Segmentation(mask=label_map)
