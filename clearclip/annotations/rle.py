"""COCO RLE of a mask given inside its box: the run lengths cost the box, not the image."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def box_run_lengths(mask: np.ndarray, x: int, y: int, height: int, width: int) -> list[int]:
    """Uncompressed COCO RLE counts of an (height, width) image that is zero outside the box at (x, y)
    holding ``mask``: column-major runs, starting with a run of zeros. Costs the box, not the image."""
    h, w = mask.shape
    column_break = h < height  # unless the box spans whole columns, runs never continue into the next column
    padded = np.zeros((w, h + column_break), np.int8)
    padded[:, :h] = mask.T
    flat = padded.ravel()
    edges = np.flatnonzero(np.diff(flat, prepend=0, append=0))  # run starts and (exclusive) ends, alternating
    columns, rows = np.divmod(edges, h + column_break)
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
