"""Export: reviewed FiftyOne labels back to COCO JSON with the run's categories and compressed RLE masks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .atomic import write_json
from .coco import SCORE_DIGITS, encode_rle
from .errors import ClearCLIPError
from .review import PRED_FIELD


def detection_mask(detection, width: int, height: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Full-size boolean mask of a detection (its instance mask, or its filled box) and its top-left corner."""
    bx, by, bw, bh = detection.bounding_box
    x, y = int(round(bx * width)), int(round(by * height))
    w, h = max(1, int(round(bw * width))), max(1, int(round(bh * height)))
    full = np.zeros((height, width), dtype=bool)
    crop = detection.get_mask() if hasattr(detection, "get_mask") else detection.mask
    if crop is None:
        full[y : y + h, x : x + w] = True
    else:
        crop = np.asarray(crop).astype(bool)
        if crop.ndim == 3:
            crop = crop[:, :, 0]
        region = full[y : y + crop.shape[0], x : x + crop.shape[1]]
        region |= crop[: region.shape[0], : region.shape[1]]
    return full, (x, y)


def export_coco(
    dataset_name: str,
    out: str | Path,
    field: str = PRED_FIELD,
    tags: Sequence[str] | None = None,
    exclude_tags: Sequence[str] = ("rejected",),
) -> dict:
    """Write the labels of ``field`` as COCO JSON; returns the document.

    Categories keep the run's ids and names (a label renamed to a new name gets the next id);
    samples tagged with any of ``exclude_tags`` are left out; with ``tags``, only samples with one of them.
    """
    import fiftyone as fo
    from pycocotools import mask as mask_utils

    if not fo.dataset_exists(dataset_name):
        raise ClearCLIPError(f"no FiftyOne dataset named '{dataset_name}'; known: {', '.join(fo.list_datasets())}")
    dataset = fo.load_dataset(dataset_name)
    if not dataset.has_sample_field(field):
        raise ClearCLIPError(f"dataset '{dataset_name}' has no field '{field}'")
    run = dataset.info.get("clearclip", {})
    categories = [dict(c) for c in run.get("categories", [])]
    category_ids = {c["name"]: c["id"] for c in categories}

    view = dataset.view()
    if tags:
        view = view.match_tags(list(tags))
    if exclude_tags:
        view = view.match_tags(list(exclude_tags), bool=False)
    view = view.sort_by("coco_image_id") if dataset.has_sample_field("coco_image_id") else view

    images, annotations, pending = [], [], []
    used_ids: set[int] = set()
    for sample in view.select_fields([field, "coco_image_id", "file_name", "metadata"]):
        if sample.metadata is None or sample.metadata.width is None:
            sample.compute_metadata()
        width, height = sample.metadata.width, sample.metadata.height
        image_id = sample["coco_image_id"] if sample.has_field("coco_image_id") and sample["coco_image_id"] else len(images) + 1
        file_name = sample["file_name"] if sample.has_field("file_name") and sample["file_name"] else Path(sample.filepath).name
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        labels = sample[field]
        for detection in (labels.detections if labels is not None else []):
            if detection.label not in category_ids:
                category_ids[detection.label] = max(category_ids.values(), default=0) + 1
                categories.append({"id": category_ids[detection.label], "name": detection.label, "supercategory": ""})
            mask, _ = detection_mask(detection, width, height)
            rle = encode_rle(mask)
            annotation = {
                "image_id": image_id,
                "category_id": category_ids[detection.label],
                "segmentation": rle,
                "area": int(mask.sum()),
                "bbox": [int(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            }
            if detection.confidence is not None:
                annotation["score"] = round(float(detection.confidence), SCORE_DIGITS)
            coco_id = detection.get_field("coco_id") if detection.has_field("coco_id") else None
            if coco_id is not None and coco_id not in used_ids:
                used_ids.add(coco_id)
                annotations.append({"id": coco_id, **annotation})
            else:
                pending.append(annotation)
    next_id = max(used_ids, default=0) + 1
    for annotation in pending:  # detections added in review get fresh ids after the run's
        annotations.append({"id": next_id, **annotation})
        next_id += 1
    annotations.sort(key=lambda a: a["id"])
    document = {
        "info": {**run.get("info", {}), "exported_from": dataset_name, "field": field},
        "images": images,
        "categories": categories,
        "annotations": annotations,
    }
    write_json(out, document)
    return document
