"""A run's images as FiftyOne sample documents, built directly and inserted in batches: review's first load.

FiftyOne's ``add_samples`` and ``set_values`` build and validate a mongoengine document per label and
compress each instance mask with zlib's default strategy: about 12 ms per image of 20 detections here, hours
per million images. The run's annotations were already read and checked, so the documents are built as plain
dicts in the layout FiftyOne stores (tests compare them with the documents FiftyOne writes for the same
sample), every mask of a batch is decoded at once for its box only, and each is stored as FiftyOne's
``serialize_numpy_array`` stores it (a zlib stream of the ``.npy`` bytes, read by ``deserialize_numpy_array``),
compressed with zlib's run-length strategy, 4x faster on masks. Batches are built (to BSON) in worker
processes, a few ahead of the one being inserted (``DocumentPipeline``); one ``insert_many`` per batch writes
whole samples, so a load that dies leaves no half-written sample.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
import bson
from bson import Binary, ObjectId
from bson.raw_bson import RawBSONDocument

from ..annotations.record import Annotation
from ..annotations.rle import decode_rles_in_boxes
from ..errors import ClearCLIPError
from ..io.helpers import helper_context, start_helper
from ..io.threads import available_cores
from ..run.folder import RunFolder
from .fields import (FILE_NAME_FIELD, IMAGE_ID_FIELD, PRED_FIELD, RUN_FIELD, RUN_HASH_FIELD, SEGMENTATION_FIELD,
                     WRITTEN_HASH_FIELD)
from .media import VIEWABLE_FIELD, viewable_path

@lru_cache(maxsize=4096)  # bounded: masks come in as many shapes as there are boxes
def _npy_header(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|b1", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def mask_bytes(mask: np.ndarray) -> bytes:
    """A C-contiguous boolean mask as FiftyOne stores it: ``zlib(numpy.save(mask))``, run-length compressed."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS, 8, zlib.Z_RLE)
    return compressor.compress(_npy_header(mask.shape)) + compressor.compress(mask) + compressor.flush()


@lru_cache(maxsize=4096)
def _npy_layout(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    buffer = io.BytesIO(header)
    major, _ = np.lib.format.read_magic(buffer)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(buffer)
    return dtype, shape, fortran_order


def mask_from_bytes(data: bytes) -> np.ndarray:
    """A mask as FiftyOne stored it (``serialize_numpy_array``, any zlib level): ``deserialize_numpy_array``
    without parsing the same ``.npy`` header again for every mask."""
    raw = zlib.decompress(data)
    start = 10 + int.from_bytes(raw[8:10], "little") if raw[6] == 1 else 12 + int.from_bytes(raw[8:12], "little")
    dtype, shape, fortran_order = _npy_layout(raw[:start])
    return np.frombuffer(raw, dtype, offset=start).reshape(shape, order="F" if fortran_order else "C")


def labels_hash(labels: Iterable[tuple[str, list[float], float | None, np.ndarray | None]]) -> str:
    """A hash of (label, relative box, confidence, mask) items: what a Detections field holds."""
    digest = hashlib.sha1()
    for label, box, confidence, mask in labels:
        digest.update(json.dumps([label, [round(v, 6) for v in box], confidence]).encode())
        if mask is not None:
            digest.update(np.ascontiguousarray(mask))  # C order, whatever the array's layout
    return digest.hexdigest()


def annotations_hash(annotations: list[dict]) -> str:
    """A hash of an image's annotations without their ids (ids move when the dataset grows)."""
    content = [{k: v for k, v in a.items() if k not in ("id", "image_id")} for a in annotations]
    return hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()


def annotation_records(annotations: list[dict], classes_map: dict[int, str],
                       source: Path) -> list[tuple[Annotation, str]]:
    """The run's annotations of one image as (record, label); a ClearCLIPError names one that cannot be read."""
    records = []
    for annotation in annotations:
        try:
            record = Annotation.from_dict(annotation)
            records.append((record, classes_map[record.category_id]))
        except (ValueError, KeyError) as error:
            raise ClearCLIPError(f"{source}: annotation {annotation.get('id')!r} cannot be read ({error}); rerun "
                                 "clearclip label into this run folder to rewrite it") from None
    return records


def _detection_document(record: Annotation, label: str, run_index: int, mask: np.ndarray) -> dict:
    height, width = record.image_size
    x, y, w, h = record.bbox
    document = {"_id": ObjectId(), "_cls": "Detection", "tags": [], "attributes": {}, "label": label,
                "bounding_box": [x / width, y / height, w / width, h / height], "mask": Binary(mask_bytes(mask)),
                "iscrowd": 0, "run_index": run_index}
    if record.score is not None:
        document["confidence"] = record.score
    return document


def sample_documents(new: list[tuple[str, dict, list[dict]]], classes_map: dict[int, str], run_dir: str,
                     dataset_id: ObjectId, rands: list[float]) -> list[dict]:
    """The sample documents of ``(filepath, image, annotations)``: the run's labels in ``pseudo_labels_run``,
    the same detections (ids included) in ``pseudo_labels``, their hashes, the run's label map, the confidence
    summary, image id, file name and size; ``rands`` are FiftyOne's per-sample random numbers. A ClearCLIPError
    names an annotation that cannot be read."""
    folder = RunFolder(run_dir)
    records = [annotation_records(annotations, classes_map, folder.annotations_path) for _, _, annotations in new]
    flat = [record for image_records in records for record, _ in image_records]
    masks = iter(decode_rles_in_boxes([r.rle for r in flat], [r.bbox for r in flat]))
    now = datetime.now(timezone.utc)
    documents = []
    for (filepath, image, annotations), image_records, rand in zip(new, records, rands):
        detections, hashed = [], []
        for index, (record, label) in enumerate(image_records):
            mask = np.ascontiguousarray(next(masks))
            detection = _detection_document(record, label, index, mask)
            detections.append(detection)
            hashed.append((label, detection["bounding_box"], record.score, mask))
        labels = {"_cls": "Detections", "detections": detections}
        scores = [r.score for r, _ in image_records if r.score is not None]
        document = {
            "_id": ObjectId(), "filepath": filepath, "tags": [], "_media_type": "image", "_rand": rand,
            "_dataset_id": dataset_id, "created_at": now, "last_modified_at": now,
            "metadata": {"_cls": "ImageMetadata", "width": image["width"], "height": image["height"]},
            RUN_FIELD: labels, PRED_FIELD: labels, RUN_HASH_FIELD: annotations_hash(annotations),
            WRITTEN_HASH_FIELD: labels_hash(hashed),
            SEGMENTATION_FIELD: {"_id": ObjectId(), "_cls": "Segmentation", "tags": [],
                                 "mask_path": str(folder.label_path(image["file_name"]).resolve())},
            IMAGE_ID_FIELD: image["id"], FILE_NAME_FIELD: image["file_name"], VIEWABLE_FIELD: viewable_path(filepath),
        }
        if scores:
            document["min_confidence"], document["mean_confidence"] = min(scores), sum(scores) / len(scores)
        documents.append(document)
    return documents


def _encoded_documents(*args) -> tuple[list[str], list[bytes]]:
    """The ids and BSON of ``sample_documents`` (what a worker process sends back)."""
    documents = sample_documents(*args)
    return [str(d["_id"]) for d in documents], [bson.encode(d) for d in documents]


class DocumentPipeline:
    """New samples into a dataset: ``submit`` batches of ``(filepath, image, annotations)``; ``on_inserted(ids)``
    is called after each batch is in the database, in submission order. Full batches are built in
    worker processes, a few ahead of the insert; a load of one short batch is built in this process."""

    def __init__(self, dataset, classes_map: dict[int, str], run_dir: Path, full_batch: int,
                 on_inserted: Callable[[list[str]], None]) -> None:
        self.dataset, self.classes_map, self.run_dir = dataset, classes_map, str(run_dir)
        self.full_batch, self.on_inserted = full_batch, on_inserted
        self.workers = available_cores()  # this process mostly waits on them
        self.pool: ProcessPoolExecutor | None = None
        self.pending: deque[Future | tuple[list[str], list[bytes]]] = deque()

    def __enter__(self) -> "DocumentPipeline":
        if self.dataset.media_type is None:  # what add_samples sets on a dataset's first sample
            self.dataset.media_type = "image"
        return self

    def submit(self, batch: list[tuple[str, dict, list[dict]]]) -> None:
        from fiftyone.core.odm.sample import _generate_rand  # FiftyOne's own: its take() and shuffle() sort on it

        args = (batch, self.classes_map, self.run_dir, self.dataset._doc.id, [_generate_rand() for _ in batch])
        if self.pool is None and len(batch) < self.full_batch:
            self.pending.append(_encoded_documents(*args))
        else:
            if self.pool is None:
                self.pool = ProcessPoolExecutor(self.workers, mp_context=helper_context(), initializer=start_helper,
                                                initargs=(os.getpid(),))
            self.pending.append(self.pool.submit(_encoded_documents, *args))
        while len(self.pending) > 2 * self.workers:
            self._insert_oldest()

    def _insert_oldest(self) -> None:
        built = self.pending.popleft()
        ids, encoded = built.result() if isinstance(built, Future) else built
        self.dataset._sample_collection.insert_many([RawBSONDocument(d) for d in encoded])  # inserted_ids skips raw
        self.on_inserted(ids)

    def __exit__(self, exc_type, *exc_info) -> None:
        try:
            while exc_type is None and self.pending:
                self._insert_oldest()
        finally:
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)
