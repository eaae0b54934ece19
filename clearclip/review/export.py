"""Export: reviewed FiftyOne labels back to COCO JSON with the run's categories and compressed RLE masks.

Samples stream from the database as raw documents (``iter_labeled_images``: no FiftyOne Sample or Label
objects, which cost more than the export itself) into the COCO writer, so an export holds one sample at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..annotations.coco import CocoWriter
from ..errors import ClearCLIPError
from ..run.folder import RUN_MARKER
from ..run.paths import checked_name
from .documents import mask_from_bytes
from .fields import EXCLUDED_TAGS, FILE_NAME_FIELD, IMAGE_ID_FIELD, PRED_FIELD, check_detections_field, from_detection


@dataclass(frozen=True, slots=True)
class StoredDetection:
    """A detection as the database holds it, with what ``fields.detection_mask`` reads of a FiftyOne Detection."""

    label: str
    bounding_box: list[float]
    confidence: float | None
    mask: object  # the instance mask in its box, or None

    has_mask = property(lambda self: self.mask is not None)

    def get_mask(self):
        return self.mask


@dataclass(frozen=True, slots=True)
class LabeledImage:
    """One exported image: its file, its name inside the export (``name``), size, detections and run image id."""

    filepath: str
    name: str
    width: int
    height: int
    detections: list
    image_id: int | None


def _stored_detection(document: dict):
    import fiftyone as fo

    if document.get("mask") is None and document.get("mask_path"):
        return fo.Detection.from_dict(document)  # a mask kept in a file: FiftyOne reads it
    mask = document.get("mask")
    return StoredDetection(document.get("label"), document.get("bounding_box") or [0, 0, 0, 0],
                           document.get("confidence"), None if mask is None else mask_from_bytes(mask))


def iter_labeled_images(view, field: str) -> Iterator[LabeledImage]:
    """The images of ``view`` in its order with the Detections of ``field``, read as raw documents. ``name`` is
    the image's path in the run's dataset folder (``file_name``, through the path gate), or for samples without
    one the file name, made unique with ``-2``, ``-3``... Samples without a size get their metadata computed."""
    seen: dict[str, int] = {}
    missing = view.exists("metadata.width", False)
    if len(missing):
        missing.compute_metadata()
    kept = [f for f in (FILE_NAME_FIELD, IMAGE_ID_FIELD) if view._dataset.has_sample_field(f)]
    cursor = view.select_fields([field, "metadata", *kept])._aggregate()
    for document in cursor.batch_size(32):  # pymongo fetches up to 16 MB of samples at once by default
        name = document.get(FILE_NAME_FIELD)
        if name:
            name = checked_name(name, f"field {FILE_NAME_FIELD} of dataset '{view._dataset.name}'")
        else:
            base = PurePosixPath(document["filepath"]).name
            seen[base] = seen.get(base, 0) + 1
            stem, dot, suffix = base.rpartition(".")
            name = base if seen[base] == 1 else (f"{stem}-{seen[base]}.{suffix}" if dot else f"{base}-{seen[base]}")
        labels = document.get(field) or {}
        metadata = document["metadata"]
        yield LabeledImage(document["filepath"], name, metadata["width"], metadata["height"],
                           [_stored_detection(d) for d in labels.get("detections") or []], document.get(IMAGE_ID_FIELD))


def output_path(out: str | Path, overwrite: bool = False) -> Path:
    """The file an export may write: not a folder, in an existing folder, not a file of a run folder, and not
    an existing file unless ``overwrite``. Raises ClearCLIPError saying what to do."""
    out = Path(out)
    if out.is_dir():
        raise ClearCLIPError(f"{out} is a folder; give a file name such as {out / 'reviewed.json'}")
    if not out.parent.is_dir():
        raise ClearCLIPError(f"the folder of {out} does not exist; create it first")
    if (out.parent / RUN_MARKER).exists():
        raise ClearCLIPError(f"{out.parent} is a clearclip run folder; its files are the run's own: export elsewhere")
    if out.exists() and not overwrite:
        raise ClearCLIPError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
    return out


def export_root(dataset) -> Path:
    """Where the App's operators may write: ``$CLEARCLIP_EXPORT_ROOT``, else ``<run folder>-exports`` beside the
    dataset's run, else ``~/clearclip-exports/<dataset name>``."""
    if os.environ.get("CLEARCLIP_EXPORT_ROOT"):
        return Path(os.environ["CLEARCLIP_EXPORT_ROOT"])
    run_dir = dataset.info.get("clearclip", {}).get("run_dir")
    return Path(f"{run_dir}-exports") if run_dir else Path.home() / "clearclip-exports" / dataset.name


def under_export_root(dataset, path: str) -> Path:
    """``path`` (relative to ``export_root(dataset)``, or absolute inside it) as the file an operator writes, its
    folders created; a path that leads out of the root (``..``, another absolute path, a symlink) is a
    ClearCLIPError. The App takes requests from any page a reviewer's browser opens, so it writes only here."""
    root = export_root(dataset)
    target = Path(path) if Path(path).is_absolute() else root / path
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(target)]) != real_root:
        raise ClearCLIPError(f"{path} is outside the export folder {root}; the App's operators write only there "
                             "(set CLEARCLIP_EXPORT_ROOT to choose it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def export_coco(
    dataset_name: str,
    out: str | Path,
    field: str = PRED_FIELD,
    tags: Sequence[str] | None = None,
    exclude_tags: Sequence[str] = EXCLUDED_TAGS,
    overwrite: bool = False,
) -> tuple[int, int]:
    """Write the labels of ``field`` of ``tagged_view(dataset_name, tags, exclude_tags)`` as COCO JSON; returns
    (images, annotations) written. See ``export_view_coco``."""
    return export_view_coco(tagged_view(dataset_name, tags, exclude_tags), out, field, overwrite)


def tagged_view(dataset_name: str, tags: Sequence[str] | None = None,
                exclude_tags: Sequence[str] = EXCLUDED_TAGS):
    """The samples of a FiftyOne dataset that an export writes: those with none of ``exclude_tags`` and, when
    ``tags`` are given, with one of them."""
    import fiftyone as fo

    if not fo.dataset_exists(dataset_name):
        raise ClearCLIPError(f"no FiftyOne dataset named '{dataset_name}'; known: {', '.join(fo.list_datasets())}")
    view = fo.load_dataset(dataset_name).view()
    if tags:
        view = view.match_tags(list(tags))
    if exclude_tags:
        view = view.match_tags(list(exclude_tags), bool=False)
    return view


def export_view_coco(view, out: str | Path, field: str = PRED_FIELD, overwrite: bool = False) -> tuple[int, int]:
    """Write the Detections of ``field`` of the samples of ``view`` as COCO JSON; returns (images, annotations).
    ``out`` is checked by ``output_path``.

    Image ids are the run's (``coco_image_id``) where samples have them; annotation ids run from 1 in image
    order. Categories keep the run's ids and names (a label renamed to a new name gets the next id).
    """
    out = output_path(out, overwrite)
    dataset = view._dataset
    check_detections_field(dataset, field, "--field names the Detections field to export")
    run = dataset.info.get("clearclip", {})
    categories = [dict(c) for c in run.get("categories", [])]
    category_ids = {c["name"]: c["id"] for c in categories}
    has_ids = dataset.has_sample_field(IMAGE_ID_FIELD)
    view = view.sort_by(IMAGE_ID_FIELD) if has_ids else view

    info = {**run.get("info", {}), "exported_from": dataset.name, "field": field}
    with CocoWriter(out, info, categories) as coco:
        for image in iter_labeled_images(view, field):
            lines = []
            for detection in image.detections:
                if detection.label not in category_ids:
                    category_ids[detection.label] = max(category_ids.values(), default=0) + 1
                    categories.append({"id": category_ids[detection.label], "name": detection.label, "supercategory": ""})
                annotation = from_detection(detection, category_ids[detection.label], image.width, image.height)
                if annotation is not None:
                    lines.append(annotation.line())
            coco.add_image(image.name, image.width, image.height, lines, image_id=image.image_id)
    return coco.images, coco.annotations
