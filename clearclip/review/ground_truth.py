"""Ground truth in a review dataset: a COCO JSON (FiftyOne's parser; matched with pycocotools as
``clearclip eval-coco`` matches) or a folder of label maps (``evaluate_segmentations``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..annotations.rle import encode_rle_in_box
from ..errors import ClearCLIPError
from ..run.folder import label_map_name
from .fields import BATCH, FILE_NAME_FIELD, GROUND_TRUTH_FIELD, PRED_FIELD, SEGMENTATION_FIELD, batched, detection_mask

def load_ground_truth(dataset, gt_path: Path) -> str:
    """Add ground truth and evaluate; returns the evaluation summary. Ground truth that cannot be what it
    claims (a label map of another size or with values outside the classes, COCO images of other sizes) is
    refused naming the file, before anything is written."""
    if gt_path.is_dir():
        return _load_label_maps(dataset, gt_path)
    import fiftyone.utils.coco as fouc

    from ..evaluation.coco_eval import load_coco_ground_truth

    gt = load_coco_ground_truth(gt_path)
    classes_map, supercategories = fouc.parse_coco_categories(gt.dataset["categories"])
    by_file = {image["file_name"]: image for image in gt.dataset["images"]}
    rows = list(zip(*dataset.values(["id", FILE_NAME_FIELD, "metadata.width", "metadata.height"])))
    for _, file_name, width, height in rows:
        image = by_file.get(file_name)
        if image is not None and (image["width"], image["height"]) != (width, height):
            raise ClearCLIPError(f"ground truth {gt_path}: {file_name!r} is {image['width']}x{image['height']} there "
                                 f"but {width}x{height} in the run: not the same image")
    matched = 0
    for batch in batched(rows, BATCH):
        values = {}
        for sample_id, file_name, width, height in batch:
            image = by_file.get(file_name)
            objects = [fouc.COCOObject.from_anno_dict(a) for a in gt.imgToAnns.get(image["id"], [])] if image else []
            matched += image is not None
            detections = [o.to_detection((width, height), classes_map, supercategories, load_segmentation=True,
                                         include_id=True) for o in objects]
            values[sample_id] = _detections(detections)
        dataset.set_values(GROUND_TRUTH_FIELD, values, key_field="id")
    return _evaluate_coco(dataset, gt, {name: image["id"] for name, image in by_file.items()}, matched)


def _load_label_maps(dataset, gt_path: Path) -> str:
    """Ground-truth label maps named like the run's (``labels/``), in the run's category ids, each checked
    for size and values; images without one are left without ground truth and counted."""
    import numpy as np

    from ..evaluation.miou import read_label_map

    known = set(dataset.mask_targets[SEGMENTATION_FIELD])
    values, missing = {}, 0
    for sample_id, file_name, width, height in zip(*dataset.values(["id", FILE_NAME_FIELD, "metadata.width",
                                                                     "metadata.height"])):
        mask = gt_path / label_map_name(file_name)
        if not mask.is_file():
            missing += 1
            continue
        try:
            label_map = read_label_map(mask)
        except OSError as error:
            raise ClearCLIPError(f"ground truth {mask} is not a readable label map ({error})") from None
        if label_map.ndim != 2 or label_map.shape != (height, width):
            raise ClearCLIPError(f"ground truth {mask} is {'x'.join(map(str, label_map.shape[::-1]))} but its image "
                                 f"{file_name!r} is {width}x{height}; label maps must have the image's size, one channel")
        unknown = sorted(set(np.unique(label_map).tolist()) - known)
        if unknown:
            raise ClearCLIPError(f"ground truth {mask} holds values {unknown[:5]} that are not category ids of this run "
                                 f"(0..{max(known)}, as in labels/)")
        values[sample_id] = _segmentation(str(mask.resolve()))
    if not values:
        raise ClearCLIPError(f"no ground-truth label map in {gt_path} is named like one of the run's (labels/)")
    dataset.set_values("ground_truth_segmentation", values, key_field="id")
    dataset.mask_targets = {**dataset.mask_targets, "ground_truth_segmentation": dataset.mask_targets[SEGMENTATION_FIELD]}
    dataset.save()
    results = dataset.exists("ground_truth_segmentation").evaluate_segmentations(
        SEGMENTATION_FIELD, gt_field="ground_truth_segmentation", eval_key="eval_seg")
    metrics = results.metrics()
    return (f"eval_seg ({len(values)} images with ground truth{f', {missing} without' if missing else ''}): "
            f"accuracy {metrics['accuracy']:.4f}, precision {metrics['precision']:.4f}, recall {metrics['recall']:.4f}")


def _evaluate_coco(dataset, gt, gt_image_ids: dict[str, int], matched: int) -> str:
    """Match PRED_FIELD to the ground truth with pycocotools (as ``clearclip eval-coco`` does, crowd regions
    included) and record every outcome: ``eval`` on each detection ("tp", "fp", "crowd") and ground-truth
    object ("tp", "fn", "crowd"), and ``eval_tp``/``eval_fp``/``eval_fn`` per sample."""
    from ..evaluation.coco_eval import coco_evaluate

    category_ids = {c["name"]: c["id"] for c in gt.dataset["categories"]}
    results, owners = [], []
    view = dataset.select_fields([PRED_FIELD, FILE_NAME_FIELD, "metadata"])
    for sample in view.iter_samples():
        image_id = gt_image_ids.get(sample[FILE_NAME_FIELD])
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
    for sample in dataset.select_fields([PRED_FIELD, GROUND_TRUTH_FIELD]).iter_samples(autosave=True):
        counts = Counter()
        for index, detection in enumerate(sample[PRED_FIELD].detections if sample[PRED_FIELD] else []):
            detection["eval"] = outcome.get((sample.id, index), "unmatched class or image")
            counts[detection["eval"]] += 1
        truth = sample[GROUND_TRUTH_FIELD]
        for detection in truth.detections if truth else []:
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
