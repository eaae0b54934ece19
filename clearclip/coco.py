"""COCO pseudo-annotations: compressed RLE masks, categories from the vocabulary, the dataset document."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from .regions import Region
from .vocabulary import Vocabulary

SCORE_DIGITS = 6  # scores are rounded so that a resumed run writes byte-identical JSON


def encode_rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of a boolean (H, W) mask, ``counts`` as a string (JSON-serialisable)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def decode_rle(rle: dict) -> np.ndarray:
    """Boolean (H, W) mask of a compressed or uncompressed COCO RLE."""
    if isinstance(rle.get("counts"), list):
        rle = mask_utils.frPyObjects(rle, *rle["size"])
    counts = rle["counts"]
    rle = {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(rle).astype(bool)


def categories(vocabulary: Vocabulary) -> list[dict]:
    """COCO categories: ids 1..K in vocabulary order, background skipped, ``name`` the first synonym."""
    return [
        {"id": cid, "name": synonyms[0], "supercategory": "", "synonyms": list(synonyms)}
        for cid, synonyms in zip(vocabulary.category_ids(), vocabulary.classes)
        if cid is not None
    ]


def region_annotation(region: Region, vocabulary: Vocabulary) -> dict:
    """A COCO annotation without ``id`` and ``image_id`` (those are given when the run is merged)."""
    return {
        "category_id": vocabulary.category_ids()[region.class_index],
        "segmentation": encode_rle(region.mask),
        "area": region.area,
        "bbox": [int(v) for v in region.bbox],
        "iscrowd": 0,
        "score": round(region.score, SCORE_DIGITS),
    }


def assemble(image_records: list[dict], vocabulary: Vocabulary, info: dict) -> dict:
    """The COCO document from per-image records ``{"file_name", "width", "height", "annotations"}``.

    Image ids follow the records' order from 1; annotation ids run from 1 in the same order.
    """
    images, annotations = [], []
    for image_id, record in enumerate(image_records, start=1):
        images.append({"id": image_id, "file_name": record["file_name"], "width": record["width"], "height": record["height"]})
        for annotation in record["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
    return {"info": info, "images": images, "categories": categories(vocabulary), "annotations": annotations}
