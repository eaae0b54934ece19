"""COCO pseudo-annotations: compressed RLE masks, categories from the vocabulary, and a streaming writer."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import numpy as np
from pycocotools import mask as mask_utils

from .atomic import atomic_path
from .regions import Region
from .vocabulary import Vocabulary

SCORE_DIGITS = 6  # scores are rounded so that a resumed run writes byte-identical JSON


def encode_rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of a boolean (H, W) mask, ``counts`` as a string (JSON-serialisable)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


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


def annotation_lines(regions: list[Region], vocabulary: Vocabulary) -> list[str]:
    """COCO annotations of regions, one line of JSON each, without ``id`` and ``image_id`` (those are given
    when the run is merged): the text ``json.dumps(annotation, ensure_ascii=False)`` gives, written directly
    at a third of its cost (this runs for every region of every image)."""
    category_ids = vocabulary.category_ids()
    return [_annotation_line(category_ids[region.class_index], region) for region in regions]


def _annotation_line(category_id: int, region: Region) -> str:
    (height, width), (x, y, w, h) = region.rle["size"], region.bbox
    counts = region.rle["counts"].replace("\\", "\\\\")  # RLE characters are '0'..'o': a backslash is the one to escape
    score = round(region.score, SCORE_DIGITS)
    score_text = repr(score) if math.isfinite(score) else json.dumps(score)
    return (f'{{"category_id": {category_id}, "segmentation": {{"size": [{height}, {width}], "counts": "{counts}"}}, '
            f'"area": {region.area}, "bbox": [{x}, {y}, {w}, {h}], "iscrowd": 0, "score": {score_text}}}')


class CocoWriter:
    """Writes a COCO document one image at a time: ``{"info", "images", "categories", "annotations"}``.

    ``with CocoWriter(path, info, categories) as coco: coco.add_image(...)``. Images go straight to the
    file, annotations to a spool beside it that is appended at the end, so memory holds one image's
    annotations whatever the size of the dataset. Annotation ids (and image ids unless given) run from 1
    in the order of ``add_image`` calls. The file appears atomically when the block ends without an error.
    """

    def __init__(self, path: str | Path, info: dict, categories: list[dict]) -> None:
        self.path, self.info, self.categories = Path(path), info, categories
        self.images = 0
        self.annotations = 0

    def __enter__(self) -> "CocoWriter":
        self._stack = ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._file: IO[str] = self._stack.enter_context(open(tmp, "w", encoding="utf-8"))
        self._spool: IO[str] = self._stack.enter_context(
            tempfile.TemporaryFile("w+", encoding="utf-8", dir=self.path.parent))
        self._file.write('{"info": ' + json.dumps(self.info, ensure_ascii=False) + ', "images": [')
        return self

    def add_image(self, file_name: str, width: int, height: int, annotation_lines: Iterable[str],
                  image_id: int | None = None) -> int:
        """Add an image and its annotations (JSON objects without ids, one string each); returns its id
        (``image_id``, or its position from 1)."""
        self.images += 1
        image_id = image_id if image_id is not None else self.images
        image = {"id": image_id, "file_name": file_name, "width": width, "height": height}
        self._file.write(("\n" if self.images == 1 else ",\n") + json.dumps(image, ensure_ascii=False))
        for line in annotation_lines:
            self.annotations += 1
            prefix = "\n" if self.annotations == 1 else ",\n"
            self._spool.write(f'{prefix}{{"id": {self.annotations}, "image_id": {image_id}, {line[1:]}')
        return image_id

    def __exit__(self, *exc_info) -> bool | None:
        if exc_info[0] is None:
            self._file.write('\n], "categories": ' + json.dumps(self.categories, ensure_ascii=False)
                             + ', "annotations": [')
            self._spool.seek(0)
            shutil.copyfileobj(self._spool, self._file, 1 << 20)
            self._file.write("\n]}\n")
        return self._stack.__exit__(*exc_info)
