"""Review: stream a run into a persistent FiftyOne dataset, least confident first, keeping every edit.

Fields per sample:
- ``pseudo_labels``: what reviewers edit (delete, relabel, add) and ``clearclip export`` writes;
- ``pseudo_labels_run``: the run's pseudo-labels as the run wrote them, read-only in the App;
- ``pseudo_segmentation`` (the label map on disk), ``min_confidence``, ``mean_confidence``,
  ``coco_image_id``, ``file_name``; with ground truth, ``ground_truth`` or ``ground_truth_segmentation``.
Every detection carries ``run_index``, its position among the run's annotations of its image.

A rerun adds images that are new to the run and keeps everything a reviewer did: samples whose run
labels are unchanged are not touched; where the run relabeled an image, ``pseudo_labels_run`` is
refreshed, and ``pseudo_labels`` too unless a reviewer edited it (then the sample is tagged
``run-changed``). Samples whose image left the run are tagged ``not-in-run``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path

from .errors import ClearCLIPError
from .run_folder import RunFolder
from .visualize import palette

PRED_FIELD = "pseudo_labels"
RUN_FIELD = "pseudo_labels_run"
SEGMENTATION_FIELD = "pseudo_segmentation"
RUN_HASH_FIELD = "pseudo_labels_run_hash"  # content of the run's labels for this image
WRITTEN_HASH_FIELD = "pseudo_labels_written_hash"  # what the tool last wrote into PRED_FIELD
LEAST_CONFIDENT_VIEW = "least-confident-first"
RUN_CHANGED_TAG = "run-changed"
NOT_IN_RUN_TAG = "not-in-run"
BATCH = 200


PLUGINS_DIR = Path(__file__).resolve().parents[1] / "plugins"  # the repository's FiftyOne plugins


def app_environment() -> None:
    """Before FiftyOne is imported: no usage tracking, and the App finds clearclip's plugin (unless the user
    chose another plugins directory)."""
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    if PLUGINS_DIR.is_dir():
        os.environ.setdefault("FIFTYONE_PLUGINS_DIR", str(PLUGINS_DIR))


def class_colors(names: list[str]) -> dict[str, str]:
    """A stable colour per class name: the same class has the same colour in every run and view."""
    colors = palette(len(names) + 1)[1:]
    return {name: "#%02x%02x%02x" % tuple(int(c) for c in color) for name, color in zip(names, colors)}


def _app_config(dataset, categories: list[dict]) -> None:
    """Colour labels by class, the label map by value; show the editable labels and the label map."""
    import fiftyone as fo

    colors = class_colors([c["name"] for c in categories])
    by_value = [{"value": name, "color": color} for name, color in colors.items()]
    dataset.app_config.color_scheme = fo.ColorScheme(color_by="value", opacity=0.5, fields=[
        {"path": PRED_FIELD, "colorByAttribute": "label", "valueColors": by_value},
        {"path": RUN_FIELD, "colorByAttribute": "label", "valueColors": by_value},
        {"path": SEGMENTATION_FIELD, "maskTargetsColors": [{"intTarget": c["id"], "color": colors[c["name"]]}
                                                           for c in categories]},
    ])
    dataset.app_config.active_fields = fo.ActiveFields(paths=[PRED_FIELD, SEGMENTATION_FIELD])


def default_dataset_name(run_dir: str | Path) -> str:
    """``clearclip-<run folder name>-<hash of its absolute path>``: one dataset per run folder."""
    path = Path(run_dir).resolve()
    return f"clearclip-{path.name}-{hashlib.sha1(str(path).encode()).hexdigest()[:6]}"


# ---------------------------------------------------------------------------------------------- reading a run
def _ijson():
    import ijson

    return ijson


def read_run_header(path: Path) -> tuple[dict, list[dict]]:
    """(info, categories) of a COCO document, read without loading its images and annotations."""
    ijson = _ijson()
    with open(path, "rb") as f:
        info = next(ijson.items(f, "info", use_float=True), {})
    with open(path, "rb") as f:
        categories = next(ijson.items(f, "categories", use_float=True), None)
    if categories is None:
        raise ClearCLIPError(f"{path} has no categories; is it a COCO document?")
    return info, categories


def iter_run_images(path: Path) -> Iterator[tuple[dict, list[dict]]]:
    """``(image, annotations)`` of a COCO document whose annotations are grouped by image in image order
    (as ``clearclip label`` writes them), streamed from two readers of the file: memory holds one image."""
    ijson = _ijson()
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


def _batched(iterable, size: int):
    iterator = iter(iterable)
    while batch := list(islice(iterator, size)):
        yield batch


def annotations_hash(annotations: list[dict]) -> str:
    """A hash of an image's annotations without their ids (ids move when the dataset grows)."""
    content = [{k: v for k, v in a.items() if k not in ("id", "image_id")} for a in annotations]
    return hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()


def detections_hash(detections) -> str:
    """A hash of what a Detections field holds: labels, boxes, confidences and masks."""
    digest = hashlib.sha1()
    for detection in detections.detections if detections is not None else []:
        digest.update(json.dumps([detection.label, [round(v, 6) for v in detection.bounding_box],
                                  detection.confidence]).encode())
        if detection.mask is not None:
            digest.update(detection.mask.tobytes())
    return digest.hexdigest()


def run_detections(image: dict, annotations: list[dict], classes_map: dict[int, str]):
    """The run's annotations of one image as FiftyOne Detections, parsed by FiftyOne's COCO reader."""
    import fiftyone as fo
    import fiftyone.utils.coco as fouc

    detections = []
    for index, annotation in enumerate(annotations):
        detection = fouc.COCOObject.from_anno_dict(annotation, extra_attrs=False).to_detection(
            (image["width"], image["height"]), classes_map, load_segmentation=True)
        detection["run_index"] = index
        detections.append(detection)
    return fo.Detections(detections=detections)


def _sample_values(image: dict, annotations: list[dict], classes_map: dict[int, str], folder: RunFolder) -> dict:
    import fiftyone as fo

    scores = [a["score"] for a in annotations if a.get("score") is not None]
    return {
        RUN_FIELD: run_detections(image, annotations, classes_map),
        RUN_HASH_FIELD: annotations_hash(annotations),
        SEGMENTATION_FIELD: fo.Segmentation(mask_path=str(folder.label_path(image["file_name"]).resolve())),
        "min_confidence": float(min(scores)) if scores else None,
        "mean_confidence": float(sum(scores) / len(scores)) if scores else None,
        "coco_image_id": image["id"],
        "file_name": image["file_name"],
        "metadata": fo.ImageMetadata(width=image["width"], height=image["height"]),
    }


def _editable_copy(run_labels):
    import fiftyone as fo

    return fo.Detections(detections=[detection.copy() for detection in run_labels.detections])


@contextmanager
def _writable(dataset, field: str):
    """Let the tool write a field that is read-only for reviewers."""
    schema_field = dataset.get_field(field)
    if schema_field is None or not schema_field.read_only:
        yield
        return
    schema_field.read_only = False
    schema_field.save()
    try:
        yield
    finally:
        schema_field.read_only = True
        schema_field.save()


def _make_run_field_read_only(dataset) -> None:
    field = dataset.get_field(RUN_FIELD)
    if field is not None and not field.read_only:
        field.read_only = True
        field.save()


# ---------------------------------------------------------------------------------------------- loading
def _read_summary(run_dir: Path) -> tuple[Path, Path]:
    annotations = run_dir / "annotations.json"
    try:
        summary = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        dataset_dir = Path(summary["dataset"])
    except FileNotFoundError as error:
        raise ClearCLIPError(f"{run_dir} is not a finished run (no {Path(error.filename).name}); run clearclip label "
                             "first") from error
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ClearCLIPError(f"{run_dir / 'run.json'} is not a clearclip run summary ({error}); rerun clearclip label "
                             "into this folder to rewrite it") from error
    if not annotations.is_file():
        raise ClearCLIPError(f"{run_dir} is not a finished run (no annotations.json); run clearclip label first")
    return annotations, dataset_dir


def _not_json(path: Path, run_dir: Path, error: Exception) -> ClearCLIPError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return ClearCLIPError(f"{path} is not valid JSON ({reason}); rerun clearclip label into {run_dir} to rewrite it")


def _declare_fields(dataset) -> None:
    """The label and hash fields, declared before samples are written: a load interrupted midway leaves
    them empty in some samples, never missing from the dataset."""
    import fiftyone as fo

    for field in (RUN_FIELD, PRED_FIELD):
        if not dataset.has_field(field):
            dataset.add_sample_field(field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    for field in (RUN_HASH_FIELD, WRITTEN_HASH_FIELD):
        if not dataset.has_field(field):
            dataset.add_sample_field(field, fo.StringField)


def _add_new_samples(dataset, new: list[tuple[str, dict, list[dict]]], classes_map, folder) -> None:
    """Add samples for ``(filepath, image, annotations)`` of images new to the dataset.

    The samples go in without labels, the run's labels follow with ``set_values`` and the editable copy is
    made inside the database: ``add_samples`` with labels re-reads every sample it writes, 4x the time. The
    run hash goes last, so a sample of an interrupted load is finished by the next (``_apply_run_changes``).
    """
    import fiftyone as fo
    from fiftyone import ViewField as F

    values = [_sample_values(image, annotations, classes_map, folder) for _, image, annotations in new]
    labels, hashes = [v.pop(RUN_FIELD) for v in values], [v.pop(RUN_HASH_FIELD) for v in values]
    # no Sample kept in memory here: FiftyOne reloads those whenever fields change
    ids = dataset.add_samples([fo.Sample(filepath=filepath, **v) for (filepath, _, _), v in zip(new, values)],
                              validate=False, progress=False)  # values from our own parser: validation is redundant
    dataset.set_values(RUN_FIELD, dict(zip(ids, labels)), key_field="id", validate=False)
    dataset.select(ids).set_field(PRED_FIELD, F(RUN_FIELD)).save(PRED_FIELD)  # the same labels, ids included
    dataset.set_values(WRITTEN_HASH_FIELD, dict(zip(ids, map(detections_hash, labels))), key_field="id")
    dataset.set_values(RUN_HASH_FIELD, dict(zip(ids, hashes)), key_field="id")


def _apply_run_changes(dataset, changed: dict[str, tuple[dict, list[dict]]], classes_map, folder, counts) -> None:
    """Refresh the run's labels of samples whose image the run relabeled; edited samples keep their edits.
    A sample that an interrupted load left without its labels (no written hash) is finished."""
    for sample in dataset.select(list(changed)).iter_samples(autosave=True):
        image, annotations = changed[sample.id]
        values = _sample_values(image, annotations, classes_map, folder)
        untouched = sample[WRITTEN_HASH_FIELD] in (None, detections_hash(sample[PRED_FIELD]))
        for key, value in values.items():
            sample[key] = value
        if untouched:
            sample[PRED_FIELD] = _editable_copy(values[RUN_FIELD])
            sample[WRITTEN_HASH_FIELD] = detections_hash(sample[PRED_FIELD])
            counts["refreshed"] += 1
        else:
            sample.tags.append(RUN_CHANGED_TAG)
            counts["edited, kept"] += 1


def load_run(run_dir: str | Path, name: str | None = None, gt: str | Path | None = None):
    """Create or update the persistent FiftyOne dataset of a run, in batches; returns (dataset, report).

    See the module docstring for what a rerun does. ``gt`` is a COCO JSON (evaluated with
    ``evaluate_detections``, crowd regions handled as COCO does) or a folder of label maps.
    """
    import fiftyone as fo

    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    path, dataset_dir = _read_summary(run_dir)
    try:
        info, categories = read_run_header(path)
    except _ijson().JSONError as error:
        raise _not_json(path, run_dir, error) from error
    classes_map = {c["id"]: c["name"] for c in categories}
    name = name or default_dataset_name(run_dir)
    dataset = fo.load_dataset(name) if fo.dataset_exists(name) else fo.Dataset(name, persistent=True)
    dataset.persistent = True
    dataset.mask_targets = {**dataset.mask_targets, SEGMENTATION_FIELD: {0: "background", **classes_map}}
    dataset.info["clearclip"] = {"run_dir": str(run_dir.resolve()), "dataset_dir": str(dataset_dir),
                                 "categories": categories, "info": info}
    _app_config(dataset, categories)
    dataset.save()

    existing = dict(zip(*dataset.values(["filepath", "id"]))) if len(dataset) else {}
    _declare_fields(dataset)
    run_hashes = dict(zip(*dataset.values(["id", RUN_HASH_FIELD])))
    counts: Counter[str] = Counter()
    try:
        with _writable(dataset, RUN_FIELD):  # once for the whole load: each change reloads samples in memory
            for batch in _batched(iter_run_images(path), BATCH):
                new, image_ids, changed = [], {}, {}
                for image, annotations in batch:
                    filepath = str((dataset_dir / image["file_name"]).resolve())
                    sample_id = existing.pop(filepath, None)
                    if sample_id is None:
                        new.append((filepath, image, annotations))
                        continue
                    image_ids[sample_id] = image["id"]
                    if run_hashes.get(sample_id) != annotations_hash(annotations):
                        changed[sample_id] = (image, annotations)
                if new:
                    _add_new_samples(dataset, new, classes_map, folder)
                    counts["added"] += len(new)
                if image_ids:
                    dataset.set_values("coco_image_id", image_ids, key_field="id")
                    counts["unchanged"] += len(image_ids) - len(changed)
                if changed:
                    _apply_run_changes(dataset, changed, classes_map, folder, counts)
    except _ijson().JSONError as error:
        raise _not_json(path, run_dir, error) from error
    _make_run_field_read_only(dataset)
    if existing:
        dataset.select(list(existing.values())).tag_samples(NOT_IN_RUN_TAG)
        counts["not in the run (tagged not-in-run)"] += len(existing)

    lines = [f"FiftyOne dataset '{dataset.name}': {len(dataset)} samples, "
             f"{dataset.count(PRED_FIELD + '.detections')} pseudo-labels; "
             + ", ".join(f"{value} {key}" for key, value in counts.items() if value)]
    if gt is not None:
        lines.append(_load_ground_truth(dataset, Path(gt)))
    dataset.save_view(LEAST_CONFIDENT_VIEW, dataset.sort_by("min_confidence"), overwrite=True)
    return dataset, "\n".join(lines)


def _load_ground_truth(dataset, gt_path: Path) -> str:
    """Add ground truth and evaluate; returns the evaluation summary."""
    if gt_path.is_dir():
        values = {}
        for sample_id, file_name in zip(*dataset.values(["id", "file_name"])):
            mask = gt_path / RunFolder(Path(".")).label_path(file_name).relative_to("labels")
            values[sample_id] = _segmentation(str(mask.resolve()))
        dataset.set_values("ground_truth_segmentation", values, key_field="id")
        dataset.mask_targets = {**dataset.mask_targets, "ground_truth_segmentation": dataset.mask_targets[SEGMENTATION_FIELD]}
        dataset.save()
        results = dataset.evaluate_segmentations(SEGMENTATION_FIELD, gt_field="ground_truth_segmentation",
                                                 eval_key="eval_seg")
        metrics = results.metrics()
        return (f"eval_seg: accuracy {metrics['accuracy']:.4f}, precision {metrics['precision']:.4f}, "
                f"recall {metrics['recall']:.4f}")
    import fiftyone.utils.coco as fouc

    try:
        _, classes_map, supercategories, images, annotations = fouc.load_coco_detection_annotations(str(gt_path))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ClearCLIPError(f"cannot read ground truth {gt_path} as COCO ({error})") from error
    by_file = {image["file_name"]: image for image in images.values()}
    annotations = annotations or {}
    matched = 0
    for batch in _batched(zip(*dataset.values(["id", "file_name", "metadata.width", "metadata.height"])), BATCH):
        values = {}
        for sample_id, file_name, width, height in batch:
            image = by_file.get(file_name)
            objects = annotations.get(image["id"], []) if image else []
            matched += image is not None
            detections = [o.to_detection((width, height), classes_map, supercategories, load_segmentation=True,
                                         include_id=True) for o in objects]
            values[sample_id] = _detections(detections)
        dataset.set_values("ground_truth", values, key_field="id")
    return _evaluate_coco(dataset, gt_path, {i["file_name"]: i["id"] for i in images.values()}, matched)


def _evaluate_coco(dataset, gt_path: Path, gt_image_ids: dict[str, int], matched: int) -> str:
    """Match PRED_FIELD to the ground truth with pycocotools (as ``clearclip eval-coco`` does, crowd regions
    included) and record every outcome: ``eval`` on each detection ("tp", "fp", "crowd") and ground-truth
    object ("tp", "fn", "crowd"), and ``eval_tp``/``eval_fp``/``eval_fn`` per sample."""
    from .coco import encode_rle_in_box
    from .evaluation import coco_evaluate, load_coco_ground_truth
    from .export import detection_mask

    gt = load_coco_ground_truth(gt_path)
    category_ids = {c["name"]: c["id"] for c in gt.dataset["categories"]}
    results, owners = [], []
    view = dataset.select_fields([PRED_FIELD, "file_name", "metadata"])
    for sample in view.iter_samples():
        image_id = gt_image_ids.get(sample.file_name)
        width, height = sample.metadata.width, sample.metadata.height
        for index, detection in enumerate(sample[PRED_FIELD].detections if sample[PRED_FIELD] else []):
            if image_id is None or detection.label not in category_ids:
                continue
            mask, x, y = detection_mask(detection, width, height)
            results.append({"image_id": image_id, "category_id": category_ids[detection.label],
                            "segmentation": encode_rle_in_box(mask, x, y, height, width),
                            "score": detection.confidence if detection.confidence is not None else 1.0})
            owners.append((sample.id, index))
    evaluation = coco_evaluate(gt, results)
    outcome = {owner: result for owner, result in zip(owners, evaluation.detections)}
    for sample in dataset.select_fields([PRED_FIELD, "ground_truth"]).iter_samples(autosave=True):
        counts = Counter()
        for index, detection in enumerate(sample[PRED_FIELD].detections if sample[PRED_FIELD] else []):
            detection["eval"] = outcome.get((sample.id, index), "unmatched class or image")
            counts[detection["eval"]] += 1
        for detection in sample.ground_truth.detections if sample.ground_truth else []:
            detection["eval"] = evaluation.ground_truth.get(detection["coco_id"], "fn")
            counts[detection["eval"] + "_gt"] += 1
        sample["eval_tp"], sample["eval_fp"], sample["eval_fn"] = counts["tp"], counts["fp"], counts["fn_gt"]
    counts = evaluation.counts()
    return (f"eval ({matched} images matched by file_name; pycocotools segm, as clearclip eval-coco): "
            f"AP {evaluation.stats[0]:.4f}, AP50 {evaluation.stats[1]:.4f}; at IoU 0.5: TP {counts['TP']}, "
            f"FP {counts['FP']}, FN {counts['FN']}, matched a crowd region (ignored) {counts['crowd']}")


def _segmentation(mask_path: str):
    import fiftyone as fo

    return fo.Segmentation(mask_path=mask_path)


def _detections(detections: list):
    import fiftyone as fo

    return fo.Detections(detections=[d for d in detections if d is not None])


class _RemovedOptionNoise(logging.Filter):
    """FiftyOne's session copies its own App config, re-reading option names it has removed, and warns about
    them although nobody set them; those three lines say nothing about this run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "App config option has been removed" not in record.getMessage()


def launch(dataset, port: int = 5151, address: str = "127.0.0.1") -> None:
    """Open the FiftyOne App on the least-confident-first view and serve until interrupted."""
    import fiftyone as fo

    logging.getLogger("fiftyone.core.config").addFilter(_RemovedOptionNoise())
    session = fo.launch_app(dataset, view=dataset.load_saved_view(LEAST_CONFIDENT_VIEW), port=port, address=address,
                            auto=False)
    print(f"FiftyOne App: http://{address}:{port}/datasets/{dataset.name}  (Ctrl-C stops it)", flush=True)
    session.wait(-1)
