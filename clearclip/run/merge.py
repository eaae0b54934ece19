"""The merge: every finished image's record into ``annotations.json``, and the run summary ``run.json``.

Streams: two chunks of records (READ_AHEAD images each; the next is read while one is checked) are in
memory at a time, and stored annotation lines are copied with their ids prepended, so the merge of a
million images costs time, not memory. Each line is parsed and
checked first: a record that does not hold what clearclip writes is left out (with a warning naming it) and
forgotten, so the next run labels its image again, and ``annotations.json`` is always valid COCO.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from ..annotations.coco import CocoWriter, categories
from ..io.images import ImageFile
from ..vocabulary import Vocabulary
from .folder import DONE, FAILED, TODO, RunFolder

READ_AHEAD = 256  # records read at once (concurrently on object storage); one chunk is in memory at a time


def merge_run(
    folder: RunFolder,
    images: Sequence[ImageFile],
    vocabulary: Vocabulary,
    info: dict,
    extra: dict | None = None,
    problems: Sequence[dict] = (),
    exclusive: bool = False,
) -> dict:
    """Write ``annotations.json`` (the done ``images``, in this order, ids from 1) and ``run.json``.

    ``problems`` (files the listing could not take) are reported with the failures. With
    ``exclusive`` (the caller holds the folder exclusively), records of images no longer listed, records of
    another version of an image than the listed one or without their label map (the next pass labels the
    image) and temp files of killed writers are removed. Returns the summary that ``run.json`` holds.
    """
    info = {**info, "precision": folder.claimed_precision()}
    run_categories = categories(vocabulary)
    known = {c["id"] for c in run_categories}
    per_category: Counter[int] = Counter()
    failures, missing = [dict(p) for p in problems], []
    labels = folder.listed_labels()
    with folder.written_through(folder.annotations_path) as path, CocoWriter(path, info, run_categories) as coco:
        for chunk, records in _read_ahead(folder, images):
            for image in chunk:
                data = records[f"records/{image.name}.json"]
                header, lines = folder.parse_record(image.name, data) if data is not None else (None, [])
                state = folder.state(image, header, labels) if header is not None else TODO
                if state == DONE:
                    try:
                        lines = folder.verified_lines(image.name, header, known, lines)
                    except (OSError, ValueError) as error:
                        warnings.warn(f"{folder.record_path(image.name)} is not a record clearclip wrote ({error}); "
                                      "the image is left out and labeled again by the next run", stacklevel=2)
                        folder.forget_record(image.name)
                        missing.append(image.name)
                        continue
                    coco.add_image(image.name, header["width"], header["height"], lines)
                    per_category.update({int(k): v for k, v in header["per_category"].items()})
                elif state == FAILED:
                    failures.append({"file": image.name, "error": header["error"], "attempts": header["attempts"]})
                else:
                    if exclusive and header is not None:  # of another version, or without its label map: relabel
                        folder.forget_record(image.name)
                    missing.append(image.name)
    removed = 0
    if exclusive:
        listed = {image.name for image in images}
        for name in [n for n in folder.recorded_names() if n not in listed]:
            folder.remove(name)
            removed += 1
        folder.remove_temp_files()
    names = {c["id"]: c["name"] for c in run_categories}
    summary = {
        "info": info,
        "images_listed": len(images),
        "images_labeled": coco.images,
        "annotations": coco.annotations,
        "annotations_per_class": {name: per_category.get(cid, 0) for cid, name in names.items()},
        "failures": sorted(failures, key=lambda f: f["file"]),
        "missing": missing,
        "removed_records_of_deleted_images": removed,
        **(extra or {}),
    }
    folder.write_json(folder.summary_path, summary, indent=2)
    return summary


def _read_ahead(folder: RunFolder, images: Sequence[ImageFile]) -> Iterator[tuple[Sequence[ImageFile], dict]]:
    """The images in chunks of READ_AHEAD, each with its records' bytes (by key); the next chunk is read while
    the caller checks this one, so the waits on object storage overlap the parsing."""
    def read(chunk: Sequence[ImageFile]) -> dict:
        return folder.store.read_many(f"records/{image.name}.json" for image in chunk)

    chunks = [images[start : start + READ_AHEAD] for start in range(0, len(images), READ_AHEAD)]
    with ThreadPoolExecutor(1, thread_name_prefix="merge-read") as pool:
        ahead = pool.submit(read, chunks[0]) if chunks else None
        for index, chunk in enumerate(chunks):
            records = ahead.result()
            if index + 1 < len(chunks):
                ahead = pool.submit(read, chunks[index + 1])
            yield chunk, records


def summary_table(summary: dict) -> str:
    """The end-of-run table: images, annotations per class, failures."""
    lines = [
        f"images labeled  {summary['images_labeled']} of {summary['images_listed']}",
        f"annotations     {summary['annotations']}",
        f"failures        {len(summary['failures'])}",
    ]
    if summary.get("images_per_second"):
        lines.append(f"images/s        {summary['images_per_second']:.2f}")
    lines.append("")
    lines.append(f"{'class':<30} {'annotations':>11}")
    for name, count in summary["annotations_per_class"].items():
        lines.append(f"{name:<30} {count:>11}")
    for failure in summary["failures"]:
        lines.append(f"failed: {failure['file']}: {failure['error']}")
    return "\n".join(lines)
