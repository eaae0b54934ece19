"""Export: reviewed FiftyOne labels back to COCO JSON with the run's categories and compressed RLE masks.

Samples stream from the database into the COCO writer, so an export holds one sample at a time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .coco import CocoWriter, SCORE_DIGITS, encode_rle_in_box
from .errors import ClearCLIPError
from .review import NOT_IN_RUN_TAG, PRED_FIELD


def detection_mask(detection, width: int, height: int) -> tuple[np.ndarray, int, int]:
    """A detection's mask inside its box, clipped to the image, and the box's top-left corner.

    The instance mask is scaled to its box as FiftyOne's ``Detection.to_segmentation`` scales it, so a box
    resized in the App carries its mask along; box corners are rounded to the nearest pixel (FiftyOne
    truncates, which moves some unedited masks by a pixel). A detection without a mask fills its box.
    """
    import eta.core.image as etai

    bx, by, bw, bh = detection.bounding_box
    x, y = int(round(bx * width)), int(round(by * height))
    w = max(1, int(round((bx + bw) * width)) - x)
    h = max(1, int(round((by + bh) * height)) - y)
    mask = detection.get_mask() if detection.has_mask else None
    if mask is None:
        mask = np.ones((h, w), bool)
    else:
        mask = np.asarray(mask)
        if mask.ndim == 3:
            mask = mask[:, :, 0]
        if mask.shape != (h, w):
            mask = etai.resize(mask.astype(np.uint8), width=w, height=h)
        mask = mask.astype(bool)
    top, left = max(0, -y), max(0, -x)
    mask = mask[top : max(top, height - y), left : max(left, width - x)]
    return mask, x + left, y + top


def _output_path(out: str | Path) -> Path:
    out = Path(out)
    if out.is_dir():
        raise ClearCLIPError(f"{out} is a folder; give a file name such as {out / 'reviewed.json'}")
    if not out.parent.is_dir():
        raise ClearCLIPError(f"the folder of {out} does not exist; create it first")
    return out


def export_coco(
    dataset_name: str,
    out: str | Path,
    field: str = PRED_FIELD,
    tags: Sequence[str] | None = None,
    exclude_tags: Sequence[str] = ("rejected", NOT_IN_RUN_TAG),
) -> tuple[int, int]:
    """Write the labels of ``field`` of ``tagged_view(dataset_name, tags, exclude_tags)`` as COCO JSON; returns
    (images, annotations) written. See ``export_view_coco``."""
    return export_view_coco(tagged_view(dataset_name, tags, exclude_tags), out, field)


def tagged_view(dataset_name: str, tags: Sequence[str] | None = None,
                exclude_tags: Sequence[str] = ("rejected", NOT_IN_RUN_TAG)):
    """The samples of a FiftyOne dataset that an export writes: those with none of ``exclude_tags`` and, when
    ``tags`` are given, with one of them."""
    import fiftyone as fo

    if not fo.dataset_exists(dataset_name):
        raise ClearCLIPError(f"no FiftyOne dataset named '{dataset_name}'; known: {', '.join(fo.list_datasets())}")
    view = fo.load_dataset(dataset_name).view()
    if tags:
        view = view.match_tags(list(tags))
    if exclude_tags:
        view = view.match_tags(list(exclude_tags), bool=False)
    return view


def export_view_coco(view, out: str | Path, field: str = PRED_FIELD) -> tuple[int, int]:
    """Write the Detections of ``field`` of the samples of ``view`` as COCO JSON; returns (images, annotations).

    Image ids are the run's (``coco_image_id``) where samples have them; annotation ids run from 1 in image
    order. Categories keep the run's ids and names (a label renamed to a new name gets the next id).
    """
    out = _output_path(out)
    dataset = view._dataset
    if not dataset.has_sample_field(field):
        raise ClearCLIPError(f"dataset '{dataset.name}' has no field '{field}'")
    run = dataset.info.get("clearclip", {})
    categories = [dict(c) for c in run.get("categories", [])]
    category_ids = {c["name"]: c["id"] for c in categories}
    has_ids = dataset.has_sample_field("coco_image_id")
    view = view.sort_by("coco_image_id") if has_ids else view

    info = {**run.get("info", {}), "exported_from": dataset.name, "field": field}
    with CocoWriter(out, info, categories) as coco:
        kept = [f for f in ("file_name", "coco_image_id") if dataset.has_sample_field(f)]
        for sample in view.select_fields([field, "metadata", *kept]):
            if sample.metadata is None or sample.metadata.width is None:
                sample.compute_metadata()
            width, height = sample.metadata.width, sample.metadata.height
            labels = sample[field]
            lines = []
            for detection in labels.detections if labels is not None else []:
                if detection.label not in category_ids:
                    category_ids[detection.label] = max(category_ids.values(), default=0) + 1
                    categories.append({"id": category_ids[detection.label], "name": detection.label, "supercategory": ""})
                mask, x, y = detection_mask(detection, width, height)
                area = int(np.count_nonzero(mask))
                if area == 0:
                    continue
                rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
                top, left = int(np.argmax(rows)), int(np.argmax(cols))
                bottom, right = len(rows) - int(np.argmax(rows[::-1])), len(cols) - int(np.argmax(cols[::-1]))
                annotation = {
                    "category_id": category_ids[detection.label],
                    "segmentation": encode_rle_in_box(mask, x, y, height, width),
                    "area": area,
                    "bbox": [x + left, y + top, right - left, bottom - top],
                    "iscrowd": 0,
                }
                if detection.confidence is not None:
                    annotation["score"] = round(float(detection.confidence), SCORE_DIGITS)
                lines.append(json.dumps(annotation, ensure_ascii=False))
            has_name = sample.has_field("file_name") and sample["file_name"]
            file_name = sample["file_name"] if has_name else Path(sample.filepath).name
            image_id = sample["coco_image_id"] if has_ids and sample["coco_image_id"] else None
            coco.add_image(file_name, width, height, lines, image_id=image_id)
    return coco.images, coco.annotations
