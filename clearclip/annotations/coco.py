"""COCO documents: categories from the vocabulary, a streaming writer, and streaming readers of a run's
``annotations.json`` (one image in memory at a time, whatever the run's size).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO

from ..errors import ClearCLIPError
from ..io.atomic import atomic_path
from ..vocabulary import Vocabulary


def categories(vocabulary: Vocabulary) -> list[dict]:
    """COCO categories: ids 1..K in vocabulary order, background skipped, ``name`` the first synonym."""
    return [
        {"id": cid, "name": synonyms[0], "supercategory": "", "synonyms": list(synonyms)}
        for cid, synonyms in zip(vocabulary.category_ids(), vocabulary.classes)
        if cid is not None
    ]


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


def read_coco_header(path: Path) -> tuple[dict, list[dict]]:
    """(info, categories) of a COCO document, read without loading its images and annotations."""
    import ijson

    with open(path, "rb") as f:
        info = next(ijson.items(f, "info", use_float=True), {})
    with open(path, "rb") as f:
        categories = next(ijson.items(f, "categories", use_float=True), None)
    if categories is None:
        raise ClearCLIPError(f"{path} has no categories; is it a COCO document?")
    return info, categories


def iter_coco_images(path: Path) -> Iterator[tuple[dict, list[dict]]]:
    """``(image, annotations)`` of a COCO document whose annotations are grouped by image in image order
    (as ``clearclip label`` writes them), streamed from two readers of the file: memory holds one image."""
    import ijson

    with open(path, "rb") as images_file, open(path, "rb") as annotations_file:
        annotations = ijson.items(annotations_file, "annotations.item", use_float=True)
        pending = next(annotations, None)
        for image in ijson.items(images_file, "images.item", use_float=True):
            own = []
            while pending is not None and pending["image_id"] == image["id"]:
                own.append(pending)
                pending = next(annotations, None)
            yield image, own
        if pending is not None:
            raise ClearCLIPError(f"{path}: annotation {pending['id']} is out of image order or names an unknown "
                                 f"image ({pending['image_id']}); review reads runs written by clearclip label")
