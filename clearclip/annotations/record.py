"""The one annotation record: a region's category, box, area, score and compressed COCO RLE, with its COCO line
and dict. A run writes it, ``refilter`` and review read it back, export builds it from a reviewer's labels.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

SCORE_DIGITS = 6  # scores are stored rounded, so that a resumed run writes byte-identical JSON


def stored_score(score: float) -> float:
    """A score as a run stores it (and as the keep rule compares it): rounded to ``SCORE_DIGITS``."""
    return round(float(score), SCORE_DIGITS)


@dataclass(frozen=True, slots=True)
class Annotation:
    """One pseudo-annotation. ``bbox`` is (x, y, w, h) in pixels; ``rle`` is compressed COCO RLE over the whole
    image (``{"size": [H, W], "counts": str}``); ``score`` the stored mean score, or None (drawn by a reviewer)."""

    category_id: int
    bbox: tuple[int, int, int, int]
    area: int
    score: float | None
    rle: dict

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the image the mask covers."""
        height, width = self.rle["size"]
        return int(height), int(width)

    def line(self) -> str:
        """The annotation as one line of COCO JSON without ``id`` and ``image_id`` (given when a run is merged):
        exactly ``json.dumps(self.to_dict(), ensure_ascii=False)``, written directly at a third of its cost."""
        (height, width), (x, y, w, h) = self.rle["size"], self.bbox
        counts = self.rle["counts"].replace("\\", "\\\\")  # RLE characters are '0'..'o': only a backslash escapes
        text = (f'{{"category_id": {self.category_id}, "segmentation": {{"size": [{height}, {width}], '
                f'"counts": "{counts}"}}, "area": {self.area}, "bbox": [{x}, {y}, {w}, {h}], "iscrowd": 0')
        if self.score is None:
            return text + "}"
        score_text = repr(self.score) if math.isfinite(self.score) else json.dumps(self.score)
        return f'{text}, "score": {score_text}}}'

    def to_dict(self) -> dict:
        """The COCO annotation dict, without ``id`` and ``image_id``."""
        annotation = {"category_id": self.category_id, "segmentation": dict(self.rle), "area": self.area,
                      "bbox": list(self.bbox), "iscrowd": 0}
        if self.score is not None:
            annotation["score"] = self.score
        return annotation

    @classmethod
    def from_dict(cls, annotation: dict) -> "Annotation":
        """Read a COCO annotation as a run writes it (compressed RLE). Raises ValueError naming what is wrong."""
        segmentation = annotation.get("segmentation") if isinstance(annotation, dict) else None
        if not isinstance(segmentation, dict) or not isinstance(segmentation.get("counts"), str):
            raise ValueError("not a clearclip annotation (segmentation is not compressed RLE)")
        try:
            height, width = (int(v) for v in segmentation["size"])
            counts = segmentation["counts"]
            x, y, w, h = (int(v) for v in annotation["bbox"])
            score = annotation.get("score")
            record = cls(int(annotation["category_id"]), (x, y, w, h), int(annotation["area"]),
                         None if score is None else float(score), {"size": [height, width], "counts": counts})
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a clearclip annotation ({type(error).__name__}: {error})") from None
        return record

    def check(self, width: int, height: int, category_ids: set[int]) -> None:
        """Raise ValueError unless the annotation fits a ``width`` x ``height`` image with these categories: a
        known category, an RLE of the image's size, a box and area inside it, a finite score in [0, 1]."""
        x, y, w, h = self.bbox
        if self.category_id not in category_ids:
            raise ValueError(f"unknown category id {self.category_id}")
        if self.image_size != (height, width):
            raise ValueError(f"its mask is {self.image_size[1]}x{self.image_size[0]}, the image {width}x{height}")
        if min(x, y) < 0 or w < 1 or h < 1 or x + w > width or y + h > height or not 0 < self.area <= w * h:
            raise ValueError(f"box {list(self.bbox)} or area {self.area} does not fit the image")
        if self.score is not None and not (math.isfinite(self.score) and 0 <= self.score <= 1):
            raise ValueError(f"score {self.score} is not in [0, 1]")

    def mask_in_box(self) -> np.ndarray:
        """The boolean mask inside the box (the way FiftyOne stores instance masks)."""
        from pycocotools import mask as mask_utils

        x, y, w, h = self.bbox
        rle = {"size": self.rle["size"], "counts": self.rle["counts"].encode("ascii")}
        return mask_utils.decode(rle).astype(bool)[y : y + h, x : x + w]
