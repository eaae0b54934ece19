"""From a segmentation to filtered regions: the pixel threshold, then connected regions per class,
then the region filters (mean score, area), with per-class overrides."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import ClearCLIPError
from .segmentation import Segmentation
from .vocabulary import Vocabulary

INSTANCE_MODES = ("components", "semantic")


@dataclass(frozen=True)
class Thresholds:
    """Confidence filters: pixels below ``pixel_threshold`` are unlabeled; regions need ``min_score`` and ``min_area``."""

    pixel_threshold: float = 0.0
    min_score: float = 0.0
    min_area: int = 0


@dataclass(frozen=True)
class RegionFilter:
    """Default thresholds, per-class overrides (by class name) and how regions are formed."""

    default: Thresholds = Thresholds()
    per_class: dict[str, Thresholds] = field(default_factory=dict)
    instances: str = "components"

    def __post_init__(self) -> None:
        if self.instances not in INSTANCE_MODES:
            raise ClearCLIPError(f"unknown --instances '{self.instances}'; choose components or semantic")

    def for_class(self, name: str) -> Thresholds:
        return self.per_class.get(name, self.default)

    def to_dict(self) -> dict:
        return {"instances": self.instances, **vars(self.default),
                "per_class": {name: vars(t) for name, t in sorted(self.per_class.items())}}


def load_class_thresholds(path: str | Path, default: Thresholds, vocabulary: Vocabulary) -> dict[str, Thresholds]:
    """Read ``{"class name": {"min_score": .., "min_area": .., "pixel_threshold": ..}}`` from JSON or YAML."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (OSError, ValueError) as error:
        raise ClearCLIPError(f"cannot read class thresholds {path}: {error}") from error
    if not isinstance(data, dict):
        raise ClearCLIPError(f"{path}: expected a mapping from class name to thresholds")
    known = {f.name for f in fields(Thresholds)}
    result = {}
    for name, values in data.items():
        if name not in vocabulary.names:
            raise ClearCLIPError(f"{path}: '{name}' is not a class of the vocabulary ({', '.join(vocabulary.names)})")
        if not isinstance(values, dict) or set(values) - known:
            raise ClearCLIPError(f"{path}: thresholds of '{name}' must use only {', '.join(sorted(known))}")
        result[name] = replace(default, **values)
    return result


@dataclass
class Region:
    """One pseudo-annotation: a class, a full-image boolean mask, its mean score, area and XYWH box."""

    class_index: int
    mask: np.ndarray
    score: float
    area: int
    bbox: tuple[int, int, int, int]


def category_map(segmentation: Segmentation, vocabulary: Vocabulary, region_filter: RegionFilter) -> np.ndarray:
    """Label map of COCO category ids; 0 where background or below the class's pixel threshold."""
    ids = np.array([cid or 0 for cid in vocabulary.category_ids()], dtype=np.int32)
    result = ids[segmentation.labels]
    thresholds = np.array([region_filter.for_class(name).pixel_threshold for name in vocabulary.names], np.float32)
    result[segmentation.scores < thresholds[segmentation.labels]] = 0
    return result


def extract_regions(
    segmentation: Segmentation, vocabulary: Vocabulary, region_filter: RegionFilter, categories: np.ndarray | None = None
) -> list[Region]:
    """Regions that pass the filters, ordered by class then by position (first pixel in row-major order)."""
    if categories is None:
        categories = category_map(segmentation, vocabulary, region_filter)
    class_of_category = {cid: i for i, cid in enumerate(vocabulary.category_ids()) if cid is not None}
    regions = []
    for category in np.unique(categories):
        if category == 0:
            continue
        class_index = class_of_category[int(category)]
        thresholds = region_filter.for_class(vocabulary.names[class_index])
        mask = categories == category
        if region_filter.instances == "semantic":
            components, count = mask.astype(np.int32), 1
        else:
            components, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        areas = np.bincount(components.ravel(), minlength=count + 1)
        sums = np.bincount(components.ravel(), weights=segmentation.scores.ravel(), minlength=count + 1)
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            if box is None:
                continue
            area = int(areas[index])
            score = float(sums[index] / area)
            if area < thresholds.min_area or score < thresholds.min_score:
                continue
            rows, cols = box
            bbox = (cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
            regions.append(Region(class_index, components == index, score, area, bbox))
    return regions
