"""From a segmentation to filtered regions: the pixel threshold, then connected regions per class,
then the region filters (mean score, area), with per-class overrides, and each region's COCO RLE.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from .errors import ClearCLIPError
from .vocabulary import Vocabulary

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
    """One pseudo-annotation: a class, its box (x, y, w, h), mean score, area and the COCO RLE of its mask
    (compressed, ``counts`` a string, over the whole image)."""

    class_index: int
    bbox: tuple[int, int, int, int]
    score: float
    area: int
    rle: dict

    def mask_in_box(self) -> np.ndarray:
        """The region's boolean mask inside its box (the way FiftyOne stores instance masks)."""
        x, y, w, h = self.bbox
        return mask_utils.decode(self.rle).astype(bool)[y : y + h, x : x + w]


def _stable_argsort(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` of non-negative integers; as uint16 where they fit, which numpy
    radix-sorts about 8x faster than it merge-sorts wider integers."""
    if len(keys) and keys.max() < 1 << 16:
        keys = keys.astype(np.uint16)
    return np.argsort(keys, kind="stable")


def _row_runs(categories: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal values along each row, in raster order: (start, end) as flat indices, and value."""
    width = categories.shape[1]
    flat = categories.ravel()
    change = np.empty(flat.size, bool)
    change[0] = True
    np.not_equal(flat[1:], flat[:-1], out=change[1:])
    change[::width] = True
    starts = np.flatnonzero(change)
    return starts, np.append(starts[1:], flat.size), flat[starts]


def _join_runs(starts: np.ndarray, ends: np.ndarray, values: np.ndarray, width: int, height: int) -> np.ndarray:
    """Component of each run: runs of one non-zero value that touch between adjacent rows (8-connectivity,
    diagonals included) are one region. Components are numbered in raster order of their first pixel."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    rows = starts // width
    first_col, end_col = starts - rows * width, ends - rows * width
    key_first, key_end = rows * (width + 1) + first_col, rows * (width + 1) + end_col
    above = np.flatnonzero((rows < height - 1) & (values != 0))
    next_row = (rows[above] + 1) * (width + 1)
    lo = np.searchsorted(key_end, next_row + first_col[above], "left")  # first run below that reaches x0 - 1
    hi = np.searchsorted(key_first, next_row + end_col[above], "right")  # past the last that starts by x1
    touching = hi - lo
    i = np.repeat(above, touching)
    j = np.repeat(lo - np.cumsum(touching) + touching, touching) + np.arange(touching.sum())
    same = values[i] == values[j]
    i, j = i[same], j[same]  # edges from each run to the runs it joins in the next row, i ascending
    runs = len(starts)
    index_type = np.int32 if runs < 1 << 31 else np.int64
    row_starts = np.zeros(runs + 1, index_type)
    np.cumsum(np.bincount(i, minlength=runs), out=row_starts[1:])
    # built as CSR with float64 weights, the form connected_components works on (half the time of a COO)
    graph = csr_matrix((np.ones(len(j)), j.astype(index_type), row_starts), shape=(runs, runs))
    return connected_components(graph, directed=False)[1]


def _run_sums(scores: np.ndarray, starts: np.ndarray, band_pixels: int = 1 << 21) -> np.ndarray:
    """Sum of the scores of each run, in float64, a band of rows at a time (runs never cross rows)."""
    flat = scores.ravel()
    sums = np.empty(len(starts), np.float64)
    band = max(1, band_pixels // scores.shape[1]) * scores.shape[1]
    for begin in range(0, flat.size, band):
        inside = slice(*np.searchsorted(starts, [begin, begin + band]))
        sums[inside] = np.add.reduceat(flat[begin : begin + band].astype(np.float64), starts[inside] - begin)
    return sums


def _column_rles(components: np.ndarray, wanted: np.ndarray) -> list[str]:
    """Compressed COCO RLE ``counts`` of the mask of each ``wanted`` component of a map of component ids, in
    that order: one pass over the map's columns for all of them."""
    sequence = components.T.ravel()
    change = np.empty(sequence.size, bool)
    change[0] = True
    np.not_equal(sequence[1:], sequence[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    rank = np.full(int(components.max()) + 1, len(wanted))
    rank[wanted] = np.arange(len(wanted))
    ranks = rank[sequence[starts]]
    chosen = np.flatnonzero(ranks < len(wanted))
    chosen = chosen[_stable_argsort(ranks[chosen])]  # by mask, each in column-major order
    ends = np.append(starts[1:], sequence.size)[chosen]
    starts, ranks = starts[chosen], ranks[chosen]
    runs = np.bincount(ranks, minlength=len(wanted))
    first = np.cumsum(runs) - runs
    last_end = ends[first + runs - 1]
    tails = last_end < sequence.size  # a trailing run of zeros
    length = 2 * runs + tails
    offset = np.cumsum(length) - length
    previous_end = np.empty_like(ends)
    previous_end[1:] = ends[:-1]
    previous_end[first] = 0
    at = np.repeat(offset - 2 * first, runs) + 2 * np.arange(len(starts))
    counts = np.empty(int(length.sum()), np.int64)  # per mask: zeros, ones, zeros, ..., as uncompressed COCO RLE
    counts[at], counts[at + 1] = starts - previous_end, ends - starts
    counts[(offset + 2 * runs)[tails]] = sequence.size - last_end[tails]
    return _rle_strings(counts, offset, length)


_CHARACTER_LIMITS = 1 << np.arange(4, 64, 5)  # a value takes k characters when -limit[k-1] <= value < limit[k-1]


def _rle_strings(counts: np.ndarray, offset: np.ndarray, length: np.ndarray) -> list[str]:
    """pycocotools' ``rleToString`` for many masks at once (mask k's counts are ``counts[offset[k]:][:length[k]]``):
    each count from the third on less the count two before it, in 5-bit groups, low first, 0x20 marking a group
    that more follow, offset by 48."""
    values = counts.copy()
    later = np.flatnonzero(np.arange(len(counts)) - np.repeat(offset, length) > 2)
    values[later] -= counts[later - 2]
    magnitude = np.where(values < 0, ~values, values)
    chars = np.ones(len(values), np.int64)
    for limit in _CHARACTER_LIMITS[: np.searchsorted(_CHARACTER_LIMITS, magnitude.max(), "right")]:
        chars += magnitude >= limit
    ends = np.cumsum(chars)
    digit = np.arange(int(ends[-1])) - np.repeat(ends - chars, chars)
    text = (np.repeat(values, chars) >> (5 * digit)) & 0x1F | 0x20
    text[ends - 1] &= 0x1F  # a value's last group
    text += 48
    text = text.astype(np.uint8).tobytes().decode("ascii")
    bounds = np.concatenate(([0], ends[offset + length - 1])).tolist()
    return [text[begin:end] for begin, end in zip(bounds[:-1], bounds[1:])]


def extract_regions(
    categories: np.ndarray, scores: np.ndarray, vocabulary: Vocabulary, region_filter: RegionFilter
) -> list[Region]:
    """Regions of a category map that pass the filters, ordered by class, then by their first pixel in
    row-major order. ``scores`` is the segmentation's per-pixel probability.

    One pass over the map finds every region of every class (8-connected runs), with area, score sum
    and box; one pass over its transpose gives every kept region's RLE. Memory stays a few copies of
    the map, whatever the number of regions.
    """
    height, width = categories.shape
    starts, ends, values = _row_runs(categories)
    if region_filter.instances == "semantic":
        component_of_run = values.astype(np.int64)
    else:
        component_of_run = _join_runs(starts, ends, values, width, height)
    order = _stable_argsort(component_of_run)
    group = np.flatnonzero(np.diff(component_of_run[order], prepend=-1))
    first_run = order[group]  # runs are in raster order, so a component's lowest run holds its first pixel
    components = component_of_run[first_run]
    category = values[first_run]
    area = np.add.reduceat((ends - starts)[order], group)
    score = np.add.reduceat(_run_sums(scores, starts)[order], group) / area
    rows = starts // width
    top, bottom = np.minimum.reduceat(rows[order], group), np.maximum.reduceat(rows[order], group) + 1
    left = np.minimum.reduceat((starts - rows * width)[order], group)
    right = np.maximum.reduceat((ends - rows * width)[order], group)

    class_of_category = np.zeros(max(vocabulary.category_ids(), key=lambda c: c or 0) + 1, np.int64)
    for index, cid in enumerate(vocabulary.category_ids()):
        if cid is not None:
            class_of_category[cid] = index
    thresholds = [region_filter.for_class(name) for name in vocabulary.names]
    min_pixels = np.array([t.min_pixels(categories.size) for t in thresholds])
    min_score = np.array([t.min_score for t in thresholds])
    classes = class_of_category[category]
    kept = np.flatnonzero((category != 0) & (area >= min_pixels[classes]) & (score >= min_score[classes]))
    kept = kept[np.lexsort((first_run[kept], classes[kept]))]
    if not len(kept):
        return []
    painted = np.repeat(component_of_run, ends - starts).reshape(height, width)
    rles = _column_rles(painted, components[kept])
    regions = []
    for k, counts in zip(kept.tolist(), rles):
        box = (int(left[k]), int(top[k]), int(right[k] - left[k]), int(bottom[k] - top[k]))
        rle = {"size": [height, width], "counts": counts}
        regions.append(Region(int(classes[k]), box, float(score[k]), int(area[k]), rle))
    return regions
