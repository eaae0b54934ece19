"""Review: stream a run into a persistent FiftyOne dataset, least confident first, keeping every edit.

Fields per sample (names in ``fields``):
- ``pseudo_labels``: what reviewers edit (delete, relabel, add) and ``clearclip export`` writes;
- ``pseudo_labels_run``: the run's pseudo-labels as the run wrote them, read-only in the App
  (``set_label_schemas``: the Annotate panel edits ``pseudo_labels`` only);
- ``pseudo_segmentation`` (the label map on disk), ``min_confidence``, ``mean_confidence``,
  ``coco_image_id``, ``file_name``; with ground truth, ``ground_truth`` or ``ground_truth_segmentation``.
Every detection carries ``run_index``, its position among the run's annotations of its image.

A rerun adds images that are new to the run and keeps everything a reviewer did: samples whose run
labels are unchanged are not touched; where the run relabeled an image, ``pseudo_labels_run`` is
refreshed, and ``pseudo_labels`` too unless a reviewer edited it (then the sample is tagged
``run-changed``). Samples whose image left the run are tagged ``not-in-run``. File names read from the
run go through the path gate: a name that is absolute or leaves the dataset is an error, never a sample.
A bad entry stops the load in one line: a rerun reads the whole ``annotations.json`` before it changes
anything; a first load checks each batch as it builds it (one pass, not two) and deletes its dataset.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import ijson

from ..annotations.coco import iter_coco_images, read_coco_header
from ..errors import ClearCLIPError
from ..io.storage import is_url
from ..run.folder import RunFolder
from ..run.paths import checked_name
from .app import app_config
from .documents import DocumentPipeline, annotation_records, annotations_hash, labels_hash
from .decisions import apply_decisions, mark_written, read_decisions, save_decisions
from .fields import (
    FILE_NAME_FIELD,
    IMAGE_ID_FIELD,
    LEAST_CONFIDENT_VIEW,
    NOT_IN_RUN_TAG,
    PRED_FIELD,
    REJECTED_TAG,
    REVIEWED_TAG,
    REVIEWED_VIEW,
    RUN_CHANGE_FIELD,
    RUN_CHANGED_TAG,
    RUN_FIELD,
    RUN_HASH_FIELD,
    SEGMENTATION_FIELD,
    TO_REVIEW_VIEW,
    WRITTEN_HASH_FIELD,
    BATCH,
    batched,
    to_detection,
)
from .ground_truth import load_ground_truth
from .media import VIEWABLE_FIELD, media_cache_dir, viewable_path


def default_dataset_name(run_dir: str | Path) -> str:
    """``clearclip-<run folder name>-<hash of its absolute path or URL>``: one dataset per run folder."""
    location = str(run_dir).rstrip("/") if is_url(run_dir) else str(Path(run_dir).resolve())
    return f"clearclip-{location.rsplit('/', 1)[-1]}-{hashlib.sha1(location.encode()).hexdigest()[:6]}"


def detections_hash(detections) -> str:
    """A hash of what a Detections field holds: labels, boxes, confidences and masks."""
    return labels_hash((d.label, d.bounding_box, d.confidence, d.mask)
                       for d in (detections.detections if detections is not None else []))


def run_detections(annotations: list[dict], classes_map: dict[int, str], source: Path):
    """The run's annotations of one image as FiftyOne Detections (``run_index`` = position in the image)."""
    import fiftyone as fo

    records = annotation_records(annotations, classes_map, source)
    return fo.Detections(detections=[to_detection(record, label, index) for index, (record, label) in enumerate(records)])


def _check_run_document(path: Path, classes_map: dict[int, str]) -> None:
    """Read every image name and annotation of the run's ``annotations.json`` once before anything is loaded,
    so that a bad entry stops the load with a message instead of leaving the dataset half-updated."""
    for image, annotations in iter_coco_images(path):
        checked_name(image.get("file_name"), path)
        annotation_records(annotations, classes_map, path)


def _sample_values(filepath: str, image: dict, annotations: list[dict], classes_map: dict[int, str],
                   folder: RunFolder) -> dict:
    import fiftyone as fo

    scores = [a["score"] for a in annotations if a.get("score") is not None]
    return {
        RUN_FIELD: run_detections(annotations, classes_map, folder.annotations_path),
        RUN_HASH_FIELD: annotations_hash(annotations),
        SEGMENTATION_FIELD: fo.Segmentation(mask_path=str(folder.label_path(image["file_name"]).resolve())),
        "min_confidence": float(min(scores)) if scores else None,
        "mean_confidence": float(sum(scores) / len(scores)) if scores else None,
        IMAGE_ID_FIELD: image["id"],
        FILE_NAME_FIELD: image["file_name"],
        "metadata": fo.ImageMetadata(width=image["width"], height=image["height"]),
        VIEWABLE_FIELD: viewable_path(filepath),
    }


def _editable_copy(run_labels):
    import fiftyone as fo

    return fo.Detections(detections=[detection.copy() for detection in run_labels.detections])


def set_label_schemas(dataset, class_names: list[str]) -> None:
    """Set up FiftyOne's Annotate panel: ``pseudo_labels`` editable and active, its classes the run's (first)
    and any a reviewer added, confidence read-only; ``pseudo_labels_run`` read-only. The originals are
    read-only through their label schema, not the field schema: a read-only label field breaks FiftyOne
    1.22's schema generation (it types the field 'str'), so the panel would never load."""
    run_field = dataset.get_field(RUN_FIELD)
    if run_field.read_only:  # set so by earlier versions
        run_field.read_only = False
        run_field.save()
    schemas = dataset.label_schemas
    editable = schemas.get(PRED_FIELD) or dataset.generate_label_schemas(fields=PRED_FIELD, scan_samples=False)
    editable["classes"] = list(dict.fromkeys([*class_names, *editable.get("classes", [])]))
    editable["component"] = "radio" if len(editable["classes"]) <= 5 else "dropdown"
    for attribute in editable.get("attributes", []):
        if attribute["name"] == "confidence":
            attribute["read_only"] = True  # the model's score: a reviewer's box has none
    originals = dataset.generate_label_schemas(fields=RUN_FIELD, scan_samples=False)
    originals["read_only"] = True
    dataset.set_label_schemas({**schemas, PRED_FIELD: editable, RUN_FIELD: originals})
    others = [field for field in dataset.active_label_schemas if field not in (PRED_FIELD, RUN_FIELD)]
    dataset.active_label_schemas = [PRED_FIELD, *others]


# ---------------------------------------------------------------------------------------------- loading
def _not_json(path: Path, run_dir: Path, error: Exception) -> ClearCLIPError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return ClearCLIPError(f"{path} is not valid JSON ({reason}); rerun clearclip label into {run_dir} to rewrite it")


def _declare_fields(dataset) -> None:
    """Every field the samples' documents hold, declared before any is written (documents go in directly)."""
    import fiftyone as fo

    kinds = {RUN_FIELD: (fo.EmbeddedDocumentField, fo.Detections), PRED_FIELD: (fo.EmbeddedDocumentField, fo.Detections),
             SEGMENTATION_FIELD: (fo.EmbeddedDocumentField, fo.Segmentation), RUN_HASH_FIELD: (fo.StringField, None),
             WRITTEN_HASH_FIELD: (fo.StringField, None), "min_confidence": (fo.FloatField, None),
             "mean_confidence": (fo.FloatField, None), IMAGE_ID_FIELD: (fo.IntField, None),
             FILE_NAME_FIELD: (fo.StringField, None), VIEWABLE_FIELD: (fo.StringField, None)}
    for field, (kind, document_type) in kinds.items():
        if not dataset.has_field(field):
            dataset.add_sample_field(field, kind, **({"embedded_doc_type": document_type} if document_type else {}))


def _apply_run_changes(dataset, changed: dict[str, tuple[dict, list[dict]]], classes_map, folder, counts) -> None:
    """Refresh the run's labels of samples whose image the run relabeled; edited samples keep their edits.
    A sample that an interrupted load left without its labels (no written hash) is finished."""
    for sample in dataset.select(list(changed)).iter_samples(autosave=True):
        image, annotations = changed[sample.id]
        values = _sample_values(sample.filepath, image, annotations, classes_map, folder)
        untouched = sample[WRITTEN_HASH_FIELD] in (None, detections_hash(sample[PRED_FIELD]))
        before = len(sample[RUN_FIELD].detections) if sample[RUN_FIELD] else 0
        for key, value in values.items():
            sample[key] = value
        if untouched:
            sample[PRED_FIELD] = _editable_copy(values[RUN_FIELD])
            sample[WRITTEN_HASH_FIELD] = detections_hash(sample[PRED_FIELD])
            counts["refreshed"] += 1
        else:
            sample.tags.append(RUN_CHANGED_TAG)
            sample[RUN_CHANGE_FIELD] = (f"the run relabeled this image ({before} regions before, "
                                        f"{len(values[RUN_FIELD].detections)} now, in {RUN_FIELD}); your edits in "
                                        f"{PRED_FIELD} were kept: compare, then remove the tag {RUN_CHANGED_TAG}")
            counts["edited, kept"] += 1


def load_run(run_dir: str | Path, name: str | None = None, gt: str | Path | None = None):
    """Create or update the persistent FiftyOne dataset of a run, in batches; returns (dataset, report).

    See the module docstring for what a rerun does. ``gt`` is a COCO JSON (matched with pycocotools as
    ``clearclip eval-coco`` matches, crowd regions included; outcomes in ``eval``) or a folder of label maps
    (``evaluate_segmentations`` as ``eval_seg``).
    """
    import fiftyone as fo
    from fiftyone import ViewField as F

    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    dataset_dir = Path(folder.read_summary()["dataset"])
    path = folder.annotations_path
    try:
        info, categories = read_coco_header(path)
    except ijson.JSONError as error:
        raise _not_json(path, run_dir, error) from error
    classes_map = {c["id"]: c["name"] for c in categories}
    name = name or default_dataset_name(run_dir)
    created = not fo.dataset_exists(name)
    if not created:  # a rerun must not half-update a dataset; a first load checks as it goes
        try:
            _check_run_document(path, classes_map)
        except ijson.JSONError as error:
            raise _not_json(path, run_dir, error) from error
        dataset = fo.load_dataset(name)
        if dataset.has_field(RUN_FIELD):
            save_decisions(dataset, run_dir)  # what reviewers did since the last load, before the load changes it
    else:
        dataset = fo.Dataset(name, persistent=True)
    decisions = read_decisions(run_dir)
    dataset.persistent = True
    dataset.mask_targets = {**dataset.mask_targets, SEGMENTATION_FIELD: {0: "background", **classes_map}}
    dataset.info["clearclip"] = {"run_dir": str(run_dir.resolve()), "dataset_dir": str(dataset_dir),
                                 "categories": categories, "info": info}
    dataset.save()

    existing = dict(zip(*dataset.values(["filepath", "id"]))) if len(dataset) else {}
    _declare_fields(dataset)
    run_hashes = dict(zip(*dataset.values(["id", RUN_HASH_FIELD])))
    counts: Counter[str] = Counter()

    def inserted(ids: list[str]) -> None:
        counts["added"] += len(ids)
        applied, missed = apply_decisions(dataset, ids, decisions)
        counts[f"with decisions from {folder.decisions_path.name}"] += applied
        counts["saved decisions about regions this run no longer has (not applied)"] += missed

    try:
        with DocumentPipeline(dataset, classes_map, run_dir, BATCH, inserted) as new_samples:
            for batch in batched(iter_coco_images(path)):
                new, image_ids, changed = [], {}, {}
                for image, annotations in batch:
                    filepath = str((dataset_dir / checked_name(image.get("file_name"), path)).resolve())
                    sample_id = existing.pop(filepath, None)
                    if sample_id is None:
                        new.append((filepath, image, annotations))
                        continue
                    image_ids[sample_id] = image["id"]
                    if run_hashes.get(sample_id) != annotations_hash(annotations):
                        changed[sample_id] = (image, annotations)
                if new:
                    new_samples.submit(new)
                if image_ids:
                    dataset.set_values(IMAGE_ID_FIELD, image_ids, key_field="id")
                    counts["unchanged"] += len(image_ids) - len(changed)
                if changed:
                    _apply_run_changes(dataset, changed, classes_map, folder, counts)
    except (ijson.JSONError, ClearCLIPError) as error:
        if created:
            dataset.delete()  # a first load that meets a bad entry leaves no dataset behind
        if isinstance(error, ijson.JSONError):
            raise _not_json(path, run_dir, error) from error
        raise
    older = dataset.exists(VIEWABLE_FIELD, False)  # samples of datasets made before the field existed
    if len(older):
        older.set_values(VIEWABLE_FIELD, [viewable_path(p) for p in older.values("filepath")])
    copies = len(dataset.match(F(VIEWABLE_FIELD) != F("filepath")))
    if copies:
        counts[f"shown from viewable copies in {media_cache_dir()} (TIFF, 16-bit)"] += copies
    set_label_schemas(dataset, [c["name"] for c in categories])
    app_config(dataset, categories)  # after the load: it names the fields the samples brought
    dataset.save()
    if existing:
        dataset.select(list(existing.values())).tag_samples(NOT_IN_RUN_TAG)
        counts["not in the run (tagged not-in-run)"] += len(existing)

    lines = [f"FiftyOne dataset '{dataset.name}': {len(dataset)} samples, "
             f"{dataset.count(PRED_FIELD + '.detections')} pseudo-labels, {review_progress(dataset)}; "
             + ", ".join(f"{value} {key}" for key, value in counts.items() if value)]
    if gt is not None:
        lines.append(load_ground_truth(dataset, Path(gt)))
    mark_written(dataset)  # what is modified later is a reviewer's work
    save_review_views(dataset)
    return dataset, "\n".join(lines)


def load_any_run(run_dir: str | Path, options: dict | None = None, name: str | None = None,
                 gt: str | Path | None = None):
    """``load_run`` of a folder, or of a run on object storage through its local copy (``run.copies``), whose
    decisions then go back to the bucket; returns (dataset, report, the folder loaded)."""
    if not is_url(run_dir):
        return (*load_run(run_dir, name, gt), run_dir)
    from ..run.copies import local_copy

    copy = local_copy(str(run_dir), options)
    local = copy.path / "run"
    dataset, report = load_run(local, name or default_dataset_name(run_dir), gt)
    keep_decisions(dataset, run_dir, local, options)  # the load saved what reviewers did since the last one
    return dataset, f"{copy.line()}\n{report}", local


def keep_decisions(dataset, run_dir: str | Path, local: str | Path, options: dict | None = None) -> str:
    """Save the review's decisions with the run (a run on object storage: from its local copy to the bucket);
    returns a line saying where."""
    images = save_decisions(dataset, local)
    where = RunFolder(local).decisions_path
    if is_url(run_dir):
        from ..run.copies import upload_tree

        where = f"{str(run_dir).rstrip('/')}/review.json"
        upload_tree(Path(RunFolder(local).decisions_path), where, options)
    return f"saved the review's decisions ({images} images) to {where}"


def review_progress(dataset) -> str:
    """"x of N reviewed": samples tagged reviewed, rejected, and those left (neither), as the App's Review
    progress panel and ``review``'s summary say it."""
    tags = dataset.count_sample_tags()
    left = len(dataset.match_tags([REVIEWED_TAG, REJECTED_TAG], bool=False))
    return (f"{tags.get(REVIEWED_TAG, 0)} of {len(dataset)} reviewed, {tags.get(REJECTED_TAG, 0)} rejected, "
            f"{left} to review")


def save_review_views(dataset) -> None:
    """The saved views a reviewer works through (``to-review`` first), the indexes of the sorts, and the
    dataset's description saying how to review."""
    dataset.create_index("min_confidence")
    dataset.create_index(IMAGE_ID_FIELD)  # exports write images in run order
    by_confidence = dataset.sort_by("min_confidence")
    dataset.save_view(LEAST_CONFIDENT_VIEW, by_confidence, overwrite=True)
    dataset.save_view(TO_REVIEW_VIEW, by_confidence.match_tags([REVIEWED_TAG, REJECTED_TAG], bool=False),
                      description="least confident first, not yet tagged reviewed or rejected", overwrite=True)
    dataset.save_view(REVIEWED_VIEW, dataset.match_tags(REVIEWED_TAG), overwrite=True)
    dataset.description = (f"clearclip run {dataset.info['clearclip']['run_dir']}. Edit '{PRED_FIELD}' (Annotate "
                           f"panel: relabel, delete, draw); tag a sample '{REVIEWED_TAG}' when done, or "
                           f"'{REJECTED_TAG}' to leave it out of exports. Saved view '{TO_REVIEW_VIEW}' shows "
                           "what is left, least confident first.")
    dataset.save()
