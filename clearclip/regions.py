"""From a segmentation to filtered regions: the pixel threshold, then connected regions per class,
then the region filters (mean score, area), with per-class overrides.

Memory stays at the label map plus small buffers: each class is searched inside its own bounding box,
and each region keeps its mask inside its own box.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from scipy import ndimage

from .errors import ClearCLIPError
from .vocabulary import Vocabulary

if TYPE_CHECKING:
    from .segmentation import Segmentation

INSTANCE_MODES = ("components", "semantic")


@dataclass(frozen=True)
class Thresholds:
    """Confidence filters: pixels below ``pixel_threshold`` are unlabeled; a region needs a mean score of
    ``min_score`` and an area of ``min_area`` pixels and of ``min_area_fraction`` of the image."""

    pixel_threshold: float = 0.0
    min_score: float = 0.0
    min_area: int = 0
    min_area_fraction: float = 0.001

    def __post_init__(self) -> None:
        for name in ("pixel_threshold", "min_score", "min_area_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ClearCLIPError(f"{name} must be a number from 0 to 1, got {value!r}")
        if isinstance(self.min_area, bool) or not isinstance(self.min_area, int) or self.min_area < 0:
            raise ClearCLIPError(f"min_area must be a whole number of pixels, 0 or more, got {self.min_area!r}")

    def min_pixels(self, image_pixels: int) -> int:
        """The smallest area a region of an image of ``image_pixels`` pixels may have."""
        return max(self.min_area, math.ceil(self.min_area_fraction * image_pixels))


@dataclass(frozen=True)
class RegionFilter:
    """Default thresholds, per-class overrides (by class name) and how regions are formed."""

    default: Thresholds = Thresholds()
    per_class: dict[str, Thresholds] = field(default_factory=dict)
    instances: str = "components"

    def __post_init__(self) -> None:
        if self.instances not in INSTANCE_MODES:
            raise ClearCLIPError(f"unknown instances '{self.instances}'; choose components or semantic")

    def for_class(self, name: str) -> Thresholds:
        return self.per_class.get(name, self.default)

    def to_dict(self) -> dict:
        return {"instances": self.instances, **vars(self.default),
                "per_class": {name: vars(t) for name, t in sorted(self.per_class.items())}}


def load_class_thresholds(path: str | Path, default: Thresholds, vocabulary: Vocabulary) -> dict[str, Thresholds]:
    """Read ``{"class name": {"min_score": .., "min_area": .., ...}}`` from JSON or YAML and check every value.

    Raises ClearCLIPError naming the file, the class and the problem.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError) as error:  # ValueError covers JSON and UnicodeDecodeError
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise ClearCLIPError(f"cannot read class thresholds {path}: {reason}") from error
    if not isinstance(data, dict):
        raise ClearCLIPError(f"{path}: expected a mapping from class name to thresholds")
    known = [f.name for f in fields(Thresholds)]
    labelable = [name for i, name in enumerate(vocabulary.names) if vocabulary.category_ids()[i] is not None]
    result = {}
    for name, values in data.items():
        if name not in labelable:
            hint = " (the background class is never labeled)" if name in vocabulary.names else ""
            raise ClearCLIPError(f"{path}: '{name}' is not a class to label{hint}; classes: {', '.join(labelable)}")
        if not isinstance(values, dict) or set(values) - set(known):
            raise ClearCLIPError(f"{path}: thresholds of '{name}' must be a mapping with keys from {', '.join(known)}")
        try:
            result[name] = replace(default, **values)
        except ClearCLIPError as error:
            raise ClearCLIPError(f"{path}: '{name}': {error}") from error
    return result


@dataclass
class Region:
    """One pseudo-annotation: a class, its mask inside its box, the box (x, y, w, h), mean score and area."""

    class_index: int
    mask: np.ndarray  # (h, w) bool, the box's pixels that belong to the region
    bbox: tuple[int, int, int, int]
    score: float
    area: int


def category_map(segmentation: Segmentation, vocabulary: Vocabulary, region_filter: RegionFilter) -> np.ndarray:
    """Label map of COCO category ids (uint8, or uint16 past 255); 0 where background or below the class's
    pixel threshold."""
    ids = np.array([cid or 0 for cid in vocabulary.category_ids()], dtype=np.uint8 if len(vocabulary) < 256 else np.uint16)
    result = ids[segmentation.labels]
    thresholds = np.array([region_filter.for_class(name).pixel_threshold for name in vocabulary.names], np.float32)
    if thresholds.any():
        result[segmentation.scores < thresholds[segmentation.labels]] = 0
    return result


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """8-connected components of a boolean mask, numbered in raster order of their first pixel (as
    ``scipy.ndimage.label`` numbers them; OpenCV's other algorithms number them differently)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
        mask.view(np.uint8), 8, cv2.CV_32S, cv2.CCL_WU
    )
    return count, labels, stats


def _component_sums(labels: np.ndarray, scores: np.ndarray, count: int, band_pixels: int = 1 << 20) -> np.ndarray:
    """Sum of ``scores`` per label 0..count-1, in row bands: bincount's float64 copy of the weights stays
    one band. Float32 scores of at least 2^-8 (a softmax maximum over at most 256 queries) add up exactly in
    float64 over up to 4 million pixels, so summing band by band gives the same bits as one pass."""
    rows = max(1, band_pixels // max(1, labels.shape[1]))
    sums = np.zeros(count, np.float64)
    for start in range(0, labels.shape[0], rows):
        sums += np.bincount(labels[start : start + rows].ravel(), weights=scores[start : start + rows].ravel(),
                            minlength=count)
    return sums


def extract_regions(
    categories: np.ndarray, scores: np.ndarray, vocabulary: Vocabulary, region_filter: RegionFilter
) -> list[Region]:
    """Regions of a category map that pass the filters, ordered by class, then by their first pixel in
    row-major order. ``scores`` is the segmentation's per-pixel probability."""
    class_of_category = {cid: i for i, cid in enumerate(vocabulary.category_ids()) if cid is not None}
    image_pixels = categories.size
    regions = []
    for index, box in enumerate(ndimage.find_objects(categories)):
        if box is None:
            continue
        class_index = class_of_category[index + 1]
        thresholds = region_filter.for_class(vocabulary.names[class_index])
        min_pixels = thresholds.min_pixels(image_pixels)
        inside = categories[box] == index + 1
        box_scores = scores[box]
        rows, cols = box
        if region_filter.instances == "semantic":
            count, labels = 2, inside.view(np.uint8)  # the class's box is its one region's box
            stats = np.array([[0, 0, 0, 0, 0], [0, 0, inside.shape[1], inside.shape[0], np.count_nonzero(inside)]])
        else:
            count, labels, stats = _components(inside)
        sums = _component_sums(labels, box_scores, count)
        for k in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[k])
            score = float(sums[k] / area)
            if area < min_pixels or score < thresholds.min_score:
                continue
            mask = labels[y : y + h, x : x + w] == k
            regions.append(Region(class_index, mask, (cols.start + x, rows.start + y, w, h), score, area))
    return regions
