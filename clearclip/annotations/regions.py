"""From a map of category ids to filtered regions: connected regions per class (or one per class), the region
filters (mean score, area) with per-class overrides, and each kept region's COCO RLE, all in a few passes.
"""

from __future__ import annotations

import numpy as np

from ..vocabulary import Vocabulary
from .record import Annotation, stored_score
from .thresholds import RegionFilter


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
) -> list[Annotation]:
    """Annotations of the regions of a category map that pass the filters, ordered by class, then by their first
    pixel in row-major order. ``scores`` is the segmentation's per-pixel probability.

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
    labeled = np.flatnonzero(category != 0)
    classes = class_of_category[category[labeled]]
    stored = np.array([stored_score(s) for s in score[labeled].tolist()], np.float64)
    passing = region_filter.keeps(vocabulary.names, classes, area[labeled], stored, categories.size)
    kept, classes, stored = labeled[passing], classes[passing], stored[passing]
    by_class = np.lexsort((first_run[kept], classes))
    kept, classes, stored = kept[by_class], classes[by_class], stored[by_class]
    if not len(kept):
        return []
    painted = np.repeat(component_of_run, ends - starts).reshape(height, width)
    rles = _column_rles(painted, components[kept])
    annotations = []
    for k, counts, value in zip(kept.tolist(), rles, stored.tolist()):
        box = (int(left[k]), int(top[k]), int(right[k] - left[k]), int(bottom[k] - top[k]))
        annotations.append(Annotation(int(category[k]), box, int(area[k]), value,
                                      {"size": [height, width], "counts": counts}))
    return annotations
