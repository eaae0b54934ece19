"""COCO documents checked before pycocotools sees them: ground truth and predictions either read as COCO
defines them or refused with a message naming the file and the entry; nothing is evaluated on a guess.

Ground truth: ``images`` and ``categories`` are required, ``annotations`` may be absent (no objects); every
annotation needs an ``id``, a known ``image_id`` and ``category_id``, and a ``segmentation`` that is RLE of
its image's size or polygons of at least 3 points; a missing ``area`` is computed, a missing ``iscrowd``
is 0. Category names and image file names must be unique (matching goes by name).

Predictions: a full COCO document (``annotations.json``, an export) whose images must have the ground
truth's sizes, or a results list whose image ids are the ground truth's. A result needs a ``segmentation``;
in a document a missing ``score`` is 1.0 (an object a reviewer drew), in a results list it is an error.
"""

from __future__ import annotations

import json
import math
from numbers import Real
from pathlib import Path

from ..errors import ClearCLIPError


def _read_json(path: Path, what: str):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ClearCLIPError(f"cannot read {what} {path} as JSON ({error})") from None


def _number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _segmentation_problem(segmentation, height: int, width: int) -> str | None:
    """Why ``segmentation`` is not COCO RLE of (height, width) or polygons of 3+ points; None when it is."""
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
            return "RLE without a [height, width] size"
        if not isinstance(counts, (str, list)):
            return "RLE without counts"
        if list(size) != [height, width]:
            return f"RLE of size {size[0]}x{size[1]} on an image of {height}x{width}"
        return None
    if isinstance(segmentation, list) and segmentation:
        for polygon in segmentation:
            if not (isinstance(polygon, list) and all(_number(v) for v in polygon)):
                return "a polygon that is not a list of numbers"
            if len(polygon) < 6 or len(polygon) % 2:
                return f"a polygon of {len(polygon)} numbers (COCO needs x,y pairs, at least 3 points)"
        return None
    return "no segmentation (RLE or polygons)" if not segmentation else f"segmentation of type {type(segmentation).__name__}"


def to_rle(segmentation, height: int, width: int) -> dict:
    """Compressed RLE of a checked segmentation (polygons merged, uncompressed RLE compressed)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, dict) and isinstance(segmentation["counts"], str):
        return segmentation
    rle = mask_utils.frPyObjects(segmentation, height, width)
    return mask_utils.merge(rle) if isinstance(rle, list) else rle


def _indexed(entries, key: str, path: Path, what: str) -> dict:
    if not isinstance(entries, list) or not all(isinstance(e, dict) and key in e for e in entries):
        raise ClearCLIPError(f"{path}: '{what}' must be a list of objects with '{key}'")
    index = {}
    for entry in entries:
        if entry[key] in index:
            raise ClearCLIPError(f"{path}: two {what} share the {key} {entry[key]!r}; matching goes by {key}")
        index[entry[key]] = entry
    return index


def read_ground_truth(path: str | Path) -> dict:
    """The checked ground-truth document, with ``area`` and ``iscrowd`` filled in where missing."""
    path = Path(path)
    document = _read_json(path, "ground truth")
    if not isinstance(document, dict) or "images" not in document or "categories" not in document:
        raise ClearCLIPError(f"ground truth {path} is not a COCO document (an object with 'images' and 'categories')")
    images = _indexed(document["images"], "id", path, "images")
    _indexed(document["images"], "file_name", path, "images")
    categories = _indexed(document["categories"], "id", path, "categories")
    _indexed(document["categories"], "name", path, "categories")
    for image in images.values():
        if not (isinstance(image.get("height"), int) and isinstance(image.get("width"), int)):
            raise ClearCLIPError(f"{path}: image {image['id']!r} has no integer width and height")
    annotations = document.get("annotations", [])
    if not isinstance(annotations, list):
        raise ClearCLIPError(f"{path}: 'annotations' must be a list")
    for index, annotation in enumerate(annotations):
        where = f"{path}: annotation {annotation.get('id', f'#{index}') if isinstance(annotation, dict) else f'#{index}'!r}"
        if not isinstance(annotation, dict) or "id" not in annotation:
            raise ClearCLIPError(f"{where} has no id")
        image = images.get(annotation.get("image_id"))
        if image is None:
            raise ClearCLIPError(f"{where} names an unknown image {annotation.get('image_id')!r}")
        if annotation.get("category_id") not in categories:
            raise ClearCLIPError(f"{where} names an unknown category {annotation.get('category_id')!r}")
        problem = _segmentation_problem(annotation.get("segmentation"), image["height"], image["width"])
        if problem:
            raise ClearCLIPError(f"{where} has {problem}")
        annotation.setdefault("iscrowd", 0)
        if not _number(annotation.get("area")):
            from pycocotools import mask as mask_utils

            annotation["area"] = float(mask_utils.area(to_rle(annotation["segmentation"], image["height"], image["width"])))
    return {**document, "annotations": annotations}


def read_predictions(path: str | Path, ground_truth: dict) -> list[dict]:
    """Results (``image_id``, ``category_id``, ``segmentation``, ``score``) in the ground truth's ids; a full
    document is matched by file name and category name, and only its matched images are kept."""
    path = Path(path)
    document = _read_json(path, "predictions")
    gt_images = {image["id"]: image for image in ground_truth["images"]}
    if isinstance(document, dict):
        results = _matched_document(document, ground_truth, path)
    elif isinstance(document, list):
        results = []
        for index, result in enumerate(document):
            if not isinstance(result, dict):
                raise ClearCLIPError(f"{path}: result #{index} is not an object")
            if result.get("image_id") not in gt_images:
                raise ClearCLIPError(f"{path}: result #{index} names image {result.get('image_id')!r}, which the "
                                     "ground truth does not have; a results list must use the ground truth's image ids")
            if not _number(result.get("score")):
                raise ClearCLIPError(f"{path}: result #{index} has no numeric score")
            results.append(result)
    else:
        raise ClearCLIPError(f"predictions {path} are neither a COCO document nor a results list")
    gt_categories = {category["id"] for category in ground_truth["categories"]}
    for index, result in enumerate(results):
        image = gt_images[result["image_id"]]
        if result.get("category_id") not in gt_categories:
            raise ClearCLIPError(f"{path}: result #{index} names category {result.get('category_id')!r}, "
                                 "which the ground truth does not have")
        problem = _segmentation_problem(result.get("segmentation"), image["height"], image["width"])
        if problem:
            raise ClearCLIPError(f"{path}: result #{index} (on {image['file_name']!r}) has {problem}")
        segmentation = to_rle(result["segmentation"], image["height"], image["width"])
        if isinstance(segmentation["counts"], bytes):
            segmentation = {**segmentation, "counts": segmentation["counts"].decode("ascii")}
        results[index] = {"image_id": result["image_id"], "category_id": result["category_id"],
                          "segmentation": segmentation, "score": float(result["score"])}
    return results


def _matched_document(document: dict, ground_truth: dict, path: Path) -> list[dict]:
    gt_images = {image["file_name"]: image for image in ground_truth["images"]}
    gt_categories = {category["name"]: category["id"] for category in ground_truth["categories"]}
    images = _indexed(document.get("images", []), "id", path, "images")
    categories = _indexed(document.get("categories", []), "id", path, "categories")
    _indexed(document.get("categories", []), "name", path, "categories")
    ours = {}
    for image_id, image in images.items():
        gt_image = gt_images.get(image.get("file_name"))
        if gt_image is None:
            continue
        if (image.get("height"), image.get("width")) != (gt_image["height"], gt_image["width"]):
            raise ClearCLIPError(f"{path}: {image.get('file_name')!r} is {image.get('width')}x{image.get('height')} "
                                 f"but {gt_image['width']}x{gt_image['height']} in the ground truth: not the same image")
        ours[image_id] = gt_image["id"]
    annotations = document.get("annotations")
    if not isinstance(annotations, list):
        raise ClearCLIPError(f"{path}: 'annotations' must be a list")
    results = []
    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            raise ClearCLIPError(f"{path}: annotation #{index} is not an object")
        if annotation.get("image_id") not in images:
            raise ClearCLIPError(f"{path}: annotation #{index} names an unknown image {annotation.get('image_id')!r}")
        category = categories.get(annotation.get("category_id"))
        if category is None:
            raise ClearCLIPError(f"{path}: annotation #{index} names an unknown category {annotation.get('category_id')!r}")
        image_id, category_id = ours.get(annotation["image_id"]), gt_categories.get(category["name"])
        if image_id is None or category_id is None:
            continue
        score = annotation.get("score", 1.0)
        if not _number(score):
            raise ClearCLIPError(f"{path}: annotation #{index} has a score that is not a number")
        results.append({"image_id": image_id, "category_id": category_id, "segmentation": annotation.get("segmentation"),
                        "score": float(score)})
    return results
