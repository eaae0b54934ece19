"""COCO RLE of a mask given inside its box, both ways: the work costs the box, not the image."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def box_run_lengths(mask: np.ndarray, x: int, y: int, height: int, width: int) -> list[int]:
    """Uncompressed COCO RLE counts of an (height, width) image that is zero outside the box at (x, y)
    holding ``mask``: column-major runs, starting with a run of zeros. Costs the box, not the image."""
    h, w = mask.shape
    column_break = h < height  # unless the box spans whole columns, runs never continue into the next column
    stride = h + column_break
    flat = np.zeros(w * stride + 2, bool)  # the box column by column, between two zeros
    flat[1:-1].reshape(w, stride)[:, :h] = mask.T
    edges = np.flatnonzero(flat[1:] != flat[:-1])  # run starts and (exclusive) ends, alternating
    columns, rows = np.divmod(edges, stride)
    positions = (columns + x) * height + rows + y
    bounds = np.concatenate(([0], positions, [height * width]))
    counts = np.diff(bounds).tolist()
    return counts[:-1] if len(counts) > 1 and counts[-1] == 0 else counts  # a mask ending on its last pixel


def encode_rle_in_box(mask: np.ndarray, x: int, y: int, height: int, width: int) -> dict:
    """Compressed COCO RLE of the full (height, width) image of a mask given inside its box at (x, y)."""
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": box_run_lengths(mask, x, y, height, width)},
                                 height, width)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _segmented_cumsum(values: np.ndarray, segment_starts: np.ndarray) -> np.ndarray:
    """Cumulative sums of ``values`` restarting at each index of ``segment_starts`` (which holds 0)."""
    total = np.cumsum(values)
    before = np.repeat(total[segment_starts] - values[segment_starts], np.diff(np.append(segment_starts, len(values))))
    return total - before


def run_lengths(counts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The run lengths (int64) of many compressed COCO RLE counts strings, and where each string's lengths
    start: pycocotools' ``rleFrString``, vectorised over all strings at once.

    Each length is 5-bit groups, least significant first, 0x20 meaning "more groups follow" and 0x10 in the
    last group the sign; from the fourth length on, each is stored as its difference to the length two before."""
    codes = np.frombuffer("".join(counts).encode("ascii"), np.uint8).astype(np.int64) - 48
    ends = np.flatnonzero((codes & 0x20) == 0)  # the last group of each length
    starts = np.concatenate(([0], ends[:-1] + 1))
    groups = ends - starts + 1
    position = np.arange(len(codes)) - np.repeat(starts, groups)
    values = np.bincount(np.repeat(np.arange(len(ends)), groups), weights=(codes & 0x1F) << (5 * position),
                         minlength=len(ends)).astype(np.int64)
    negative = (codes[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * groups[negative])
    string_ends = np.cumsum([len(c) for c in counts]) - 1  # the last character of each string ends a length
    first = np.concatenate(([0], np.searchsorted(ends, string_ends[:-1]) + 1))  # each string's first length
    index = np.arange(len(values)) - np.repeat(first, np.diff(np.append(first, len(values))))
    for parity, start in ((1, 1), (0, 2)):  # lengths 1, 3, 5...: running sums; 2, 4, 6...: running sums
        chain = np.flatnonzero((index % 2 == parity) & (index >= start))
        if len(chain):
            values[chain] = _segmented_cumsum(values[chain], np.flatnonzero(index[chain] == start))
    return values, first


def decode_rles_in_boxes(rles: list[dict], bboxes: list[tuple[int, int, int, int]]) -> list[np.ndarray]:
    """The boolean mask inside each box (x, y, w, h) of compressed COCO RLE over the whole image: the same
    pixels as ``pycocotools.mask.decode(rle)[y:y+h, x:x+w]``, decoded for the boxes only and all at once.
    Each mask is a transposed view (Fortran order) of one shared buffer."""
    if not rles:
        return []
    lengths, first = run_lengths([rle["counts"] for rle in rles])
    height = np.array([int(rle["size"][0]) for rle in rles], np.int64)
    x, y, w, h = (np.array(v, np.int64) for v in zip(*bboxes))
    owner = np.repeat(np.arange(len(rles)), np.diff(np.append(first, len(lengths))))
    ends = _segmented_cumsum(lengths, first)
    ones = np.flatnonzero((np.arange(len(lengths)) - first[owner]) % 2 == 1)  # each run of ones follows zeros
    ones_start, ones_end, owner = ends[ones - 1], ends[ones], owner[ones]
    # a run of ones never wraps into the next column unless the box spans whole columns: rows in a
    # (w, h + 1) grid per box, or the column-major positions themselves
    stride = np.where(h < height, h + 1, height)
    size = w * stride + 1
    offset = np.cumsum(size) - size
    column = ones_start // height[owner]
    wraps = h[owner] >= height[owner]
    row = np.where(wraps, ones_start - x[owner] * height[owner],
                   (column - x[owner]) * stride[owner] + ones_start - column * height[owner] - y[owner])
    begin = offset[owner] + row
    end = begin + ones_end - ones_start
    zeros = np.diff(np.concatenate(([0], end)))[: len(begin)] - (end - begin)  # the gap before each run of ones
    runs = np.column_stack([zeros, end - begin]).ravel()
    pixels = np.zeros(int(size.sum()), bool)
    filled = int(runs.sum())
    pixels[:filled] = np.repeat(np.tile(np.array([False, True]), len(begin)), runs)
    return [pixels[o : o + ww * ss].reshape(ww, ss)[:, :hh].T
            for o, ww, ss, hh in zip(offset.tolist(), w.tolist(), stride.tolist(), h.tolist())]

