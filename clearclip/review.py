"""Review: load a run's images and pseudo-labels into a persistent FiftyOne dataset, least confident first.

Fields per sample: ``pseudo_labels`` (Detections with instance masks, ``confidence`` = annotation
score, ``coco_id``), ``pseudo_segmentation`` (the label map on disk), ``min_confidence``,
``mean_confidence``, ``coco_image_id``, ``file_name``; with ground truth, ``ground_truth`` or
``ground_truth_segmentation`` and evaluation results.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .coco import decode_rle
from .errors import ClearCLIPError
from .labeling import label_path

PRED_FIELD = "pseudo_labels"
SEGMENTATION_FIELD = "pseudo_segmentation"
LEAST_CONFIDENT_VIEW = "least-confident-first"


def default_dataset_name(run_dir: str | Path) -> str:
    """``clearclip-<run folder name>``."""
    return f"clearclip-{Path(run_dir).resolve().name}"


def coco_to_detection(annotation: dict, width: int, height: int, label: str):
    """A FiftyOne Detection from a COCO annotation: relative box, mask cropped to the box."""
    import fiftyone as fo

    x, y, w, h = (int(round(v)) for v in annotation["bbox"])
    attributes = {}
    if "segmentation" in annotation and isinstance(annotation["segmentation"], dict):
        attributes["mask"] = decode_rle(annotation["segmentation"])[y : y + h, x : x + w]
    detection = fo.Detection(
        label=label, bounding_box=[x / width, y / height, w / width, h / height],
        confidence=annotation.get("score"), **attributes,
    )
    detection["coco_id"] = annotation["id"]
    return detection


def _read_run(run_dir: Path) -> tuple[dict, Path]:
    try:
        document = json.loads((run_dir / "annotations.json").read_text(encoding="utf-8"))
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ClearCLIPError(f"{run_dir} is not a finished run (no {Path(error.filename).name}); run clearclip label first") from error
    return document, Path(run["dataset"])


def _annotations_by_image(document: dict) -> dict[int, list[dict]]:
    by_image: dict[int, list[dict]] = {}
    for annotation in document["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    return by_image


def _ground_truth_by_file(gt_path: Path) -> dict[str, tuple[list[dict], dict[int, str]]]:
    data = json.loads(gt_path.read_text(encoding="utf-8"))
    names = {c["id"]: c["name"] for c in data["categories"]}
    by_image = _annotations_by_image(data)
    return {image["file_name"]: (by_image.get(image["id"], []), names) for image in data["images"]}


def load_run(run_dir: str | Path, name: str | None = None, gt: str | Path | None = None):
    """Create or update the persistent FiftyOne dataset of a run; returns the dataset.

    Re-running updates samples in place (matched by file path): labels are refreshed, tags and
    other fields a reviewer added are kept.
    """
    import fiftyone as fo

    run_dir = Path(run_dir)
    document, dataset_dir = _read_run(run_dir)
    name = name or default_dataset_name(run_dir)
    dataset = fo.load_dataset(name) if fo.dataset_exists(name) else fo.Dataset(name, persistent=True)
    dataset.persistent = True
    categories = {c["id"]: c["name"] for c in document["categories"]}
    dataset.mask_targets = {**dataset.mask_targets, SEGMENTATION_FIELD: {0: "background", **categories}}
    dataset.info["clearclip"] = {"run_dir": str(run_dir.resolve()), "dataset_dir": str(dataset_dir),
                                 "categories": document["categories"], "info": document["info"]}
    dataset.save()

    gt_path = Path(gt) if gt else None
    gt_coco = _ground_truth_by_file(gt_path) if gt_path and gt_path.is_file() else None
    by_image = _annotations_by_image(document)
    existing = {filepath: sample_id for filepath, sample_id in zip(*dataset.values(["filepath", "id"]))}

    new_samples = []
    updates: dict[str, dict[str, object]] = {}  # field -> {sample id: value}, written in bulk below
    for image in document["images"]:
        filepath = str((dataset_dir / image["file_name"]).resolve())
        width, height = image["width"], image["height"]
        annotations = by_image.get(image["id"], [])
        detections = [coco_to_detection(a, width, height, categories[a["category_id"]]) for a in annotations]
        scores = [a["score"] for a in annotations]
        fields = {
            PRED_FIELD: fo.Detections(detections=detections),
            SEGMENTATION_FIELD: fo.Segmentation(mask_path=str(label_path(run_dir, image["file_name"]).resolve())),
            "min_confidence": float(min(scores)) if scores else None,
            "mean_confidence": float(np.mean(scores)) if scores else None,
            "coco_image_id": image["id"],
            "file_name": image["file_name"],
            "metadata": fo.ImageMetadata(width=width, height=height),
        }
        if gt_coco is not None:
            gt_annotations, gt_names = gt_coco.get(image["file_name"], ([], {}))
            fields["ground_truth"] = fo.Detections(
                detections=[coco_to_detection(a, width, height, gt_names[a["category_id"]]) for a in gt_annotations]
            )
        elif gt_path is not None:
            mask = gt_path / label_path(Path("."), image["file_name"]).relative_to("labels")
            fields["ground_truth_segmentation"] = fo.Segmentation(mask_path=str(mask.resolve()))
        if filepath in existing:
            for key, value in fields.items():
                updates.setdefault(key, {})[existing[filepath]] = value
        else:
            new_samples.append(fo.Sample(filepath=filepath, **fields))
    for key, values in updates.items():
        dataset.set_values(key, values, key_field="id")
    if new_samples:
        dataset.add_samples(new_samples)

    if gt_coco is not None:
        dataset.evaluate_detections(PRED_FIELD, gt_field="ground_truth", eval_key="eval", use_masks=True)
    elif gt_path is not None:
        dataset.mask_targets = {**dataset.mask_targets, "ground_truth_segmentation": dataset.mask_targets[SEGMENTATION_FIELD]}
        dataset.evaluate_segmentations(SEGMENTATION_FIELD, gt_field="ground_truth_segmentation", eval_key="eval_seg")
    dataset.save_view(LEAST_CONFIDENT_VIEW, dataset.sort_by("min_confidence"), overwrite=True)
    return dataset


def launch(dataset, port: int = 5151, address: str = "127.0.0.1") -> None:
    """Open the FiftyOne App on the least-confident-first view and serve until interrupted."""
    import fiftyone as fo

    session = fo.launch_app(dataset, view=dataset.load_saved_view(LEAST_CONFIDENT_VIEW), port=port, address=address,
                            auto=False)
    print(f"FiftyOne App: http://{address}:{port}/datasets/{dataset.name}  (Ctrl-C stops it)", flush=True)
    session.wait(-1)
