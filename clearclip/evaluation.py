"""Evaluation: mIoU of label maps (with the paper's eight benchmark presets) and COCO segm AP."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import ClearCLIPError
from .vocabulary import Vocabulary

IGNORE_INDEX = 255


@dataclass(frozen=True)
class Benchmark:
    """A benchmark as prepared by mmsegmentation: where images and ground truth live, and the paper's settings."""

    class_file: str
    image_dir: str
    gt_dir: str
    image_suffix: str
    gt_suffix: str
    split_file: str | None = None
    reduce_zero_label: bool = False
    background_threshold: float = 0.0
    crop: int = 448
    stride: int = 224

    def vocabulary(self) -> Vocabulary:
        text = resources.files("clearclip.benchmarks").joinpath(self.class_file).read_text(encoding="utf-8")
        return Vocabulary.from_strings([line for line in text.splitlines() if line.strip()])


BENCHMARKS: dict[str, Benchmark] = {
    "voc21": Benchmark("voc21.txt", "VOC2012/JPEGImages", "VOC2012/SegmentationClass", ".jpg", ".png",
                       "VOC2012/ImageSets/Segmentation/val.txt", background_threshold=0.5),
    "voc20": Benchmark("voc20.txt", "VOC2012/JPEGImages", "VOC2012/SegmentationClass", ".jpg", ".png",
                       "VOC2012/ImageSets/Segmentation/val.txt", reduce_zero_label=True),
    "context60": Benchmark("context60.txt", "VOC2010/JPEGImages", "VOC2010/SegmentationClassContext", ".jpg", ".png",
                           "VOC2010/ImageSets/SegmentationContext/val.txt", background_threshold=0.15),
    "context59": Benchmark("context59.txt", "VOC2010/JPEGImages", "VOC2010/SegmentationClassContext", ".jpg", ".png",
                           "VOC2010/ImageSets/SegmentationContext/val.txt", reduce_zero_label=True),
    "coco_object": Benchmark("coco_object.txt", "images/val2017", "annotations/val2017", ".jpg",
                             "_instanceTrainIds.png", background_threshold=0.4),
    "coco_stuff": Benchmark("coco_stuff.txt", "images/val2017", "annotations/val2017", ".jpg", "_labelTrainIds.png"),
    "cityscapes": Benchmark("city_scapes.txt", "leftImg8bit/val", "gtFine/val", "_leftImg8bit.png",
                            "_gtFine_labelTrainIds.png", crop=224, stride=224),
    "ade20k": Benchmark("ade20k.txt", "images/validation", "annotations/validation", ".jpg", ".png",
                        reduce_zero_label=True),
}


def class_indices(pred: np.ndarray, num_classes: int, ids: str = "class", has_background: bool = False) -> np.ndarray:
    """Predicted class indices from a label map; ``num_classes`` marks pixels predicted as no class.

    ``ids="class"``: pixel values are class indices 0..K-1 (``clearclip segment``, the benchmarks).
    ``ids="category"``: pixel values are a run's COCO category ids (``labels/`` of ``clearclip label``):
    0 is the background class when the vocabulary has one (class 0), else unlabeled; 1..K are the classes
    after it. Raises ValueError naming values out of range.
    """
    pred = pred.astype(np.int64)
    if ids == "category":
        pred = pred if has_background else np.where(pred == 0, num_classes, pred - 1)
    elif ids != "class":
        raise ValueError(f"unknown id kind {ids!r}; use class or category")
    bad = (pred < 0) | (pred > num_classes) | ((pred == num_classes) & (ids == "class"))
    if bad.any():
        values = np.unique(pred[bad] + (1 if ids == "category" and not has_background else 0))
        raise ValueError(f"predicted values {values[:5].tolist()} are not {ids} ids of a {num_classes}-class vocabulary")
    return pred


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, reduce_zero_label: bool = False,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(K, K + 1) counts, rows = ground truth, columns = predicted class (from ``class_indices``), the last
    column pixels predicted as no class; ignored ground-truth pixels are skipped.

    ``reduce_zero_label`` maps gt 0 to ignore and shifts the rest down by one, like mmsegmentation.
    Raises ValueError for sizes that differ and ground-truth values outside the classes.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    gt = gt.astype(np.int64)
    if reduce_zero_label:
        gt = np.where(gt == 0, ignore_index, gt - 1)
        gt[gt == ignore_index - 1] = ignore_index
    valid = gt != ignore_index
    bad = valid & ((gt < 0) | (gt >= num_classes))
    if bad.any():
        raise ValueError(f"ground-truth values {np.unique(gt[bad])[:5].tolist()} are outside the {num_classes} classes "
                         f"(ignore index {ignore_index}{', zero label reduced' if reduce_zero_label else ''})")
    index = gt[valid] * (num_classes + 1) + pred.astype(np.int64)[valid]
    return np.bincount(index, minlength=num_classes * (num_classes + 1)).reshape(num_classes, num_classes + 1)


def iou_metrics(confusion: np.ndarray) -> dict:
    """Per-class IoU (NaN for classes absent from both), mIoU (NaN-mean), pixel accuracy and mean accuracy.

    ``confusion`` is (K, K) or (K, K + 1) with predicted-as-no-class pixels last (they count as misses).
    """
    classes = confusion.shape[0]
    intersect = np.diag(confusion[:, :classes]).astype(np.float64)
    area_gt = confusion.sum(axis=1).astype(np.float64)
    area_pred = confusion[:, :classes].sum(axis=0).astype(np.float64)
    union = area_gt + area_pred - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / union
        acc = intersect / area_gt
    total = confusion.sum()
    return {
        "iou": iou,
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "accuracy": acc,
        "mean_accuracy": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
        "pixel_accuracy": float(intersect.sum() / total) if total else float("nan"),
    }


def read_label_map(path: str | Path) -> np.ndarray:
    """A single-channel PNG label map as an integer array (palette PNGs give their indices)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)


def miou_table(metrics: dict, names: list[str]) -> str:
    """Per-class IoU lines followed by mIoU, mean and pixel accuracy, in percent."""
    lines = [f"{'class':<30} {'IoU':>6} {'Acc':>6}"]
    for name, iou, acc in zip(names, metrics["iou"], metrics["accuracy"]):
        lines.append(f"{name:<30} {100 * iou:>6.2f} {100 * acc:>6.2f}")
    lines.append(f"{'mIoU':<30} {100 * metrics['miou']:>6.2f}")
    lines.append(f"{'mAcc':<30} {100 * metrics['mean_accuracy']:>6.2f}")
    lines.append(f"{'aAcc':<30} {100 * metrics['pixel_accuracy']:>6.2f}")
    return "\n".join(lines)


def benchmark_pairs(benchmark: Benchmark, data_root: str | Path) -> list[tuple[Path, Path]]:
    """(image, ground truth) paths of a benchmark's validation split under ``data_root``."""
    root = Path(data_root)
    image_dir, gt_dir = root / benchmark.image_dir, root / benchmark.gt_dir
    if not image_dir.is_dir() or not gt_dir.is_dir():
        raise ClearCLIPError(f"expected {image_dir} and {gt_dir} (mmsegmentation's layout) under {root}")
    if benchmark.split_file:
        names = (root / benchmark.split_file).read_text().split()
    else:
        names = sorted(str(p.relative_to(gt_dir))[: -len(benchmark.gt_suffix)] for p in gt_dir.rglob(f"*{benchmark.gt_suffix}"))
    pairs = [(image_dir / f"{n}{benchmark.image_suffix}", gt_dir / f"{n}{benchmark.gt_suffix}") for n in names]
    missing = [str(image) for image, _ in pairs if not image.is_file()]
    if missing:
        raise ClearCLIPError(f"{len(missing)} images of the split are missing, e.g. {missing[0]}")
    return pairs


def _matched_to_ground_truth(document: dict, gt: dict) -> list[dict]:
    """Annotations of a COCO document with image ids mapped by file name and category ids by name."""
    image_ids = {image["file_name"]: image["id"] for image in gt["images"]}
    category_ids = {category["name"]: category["id"] for category in gt["categories"]}
    our_images = {image["id"]: image_ids.get(image["file_name"]) for image in document.get("images", [])}
    our_categories = {c["id"]: category_ids.get(c["name"]) for c in document.get("categories", [])}
    results = []
    for annotation in document["annotations"]:
        image_id, category_id = our_images.get(annotation["image_id"]), our_categories.get(annotation["category_id"])
        if image_id is not None and category_id is not None:
            results.append({**annotation, "image_id": image_id, "category_id": category_id})
    return results


def load_coco_ground_truth(path: str | Path):
    """A pycocotools COCO index of a ground-truth file (polygons, RLE and crowd regions as COCO defines them)."""
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ClearCLIPError(f"cannot read ground truth {path} as COCO ({error})") from error


@dataclass
class CocoEvaluation:
    """pycocotools' segm evaluation and, at IoU 0.5 over all areas, what became of every object.

    ``detections[i]`` is "tp", "fp" or "crowd" (matched a crowd region: ignored, as COCO does) for the i-th
    result; ``ground_truth[id]`` is "tp", "fn" or "crowd".
    """

    stats: list[float]
    table: str
    detections: list[str]
    ground_truth: dict[int, str]

    def counts(self) -> dict[str, int]:
        return {"TP": self.detections.count("tp"), "FP": self.detections.count("fp"),
                "FN": sum(v == "fn" for v in self.ground_truth.values()), "crowd": self.detections.count("crowd")}


def coco_evaluate(gt, results: list[dict]) -> CocoEvaluation:
    """Evaluate results (COCO result dicts with ``segmentation`` and ``score``) against a COCO index."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        raise ClearCLIPError("there are no predictions to evaluate")
    results = [{k: v for k, v in r.items() if k not in ("id", "area", "bbox")} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)  # numbers the results 1..N in order
    evaluator = COCOeval(gt, dt, iouType="segm")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    detections = ["fp"] * len(results)
    ground_truth = {gt_id: "fn" for gt_id in gt.getAnnIds()}
    for record in evaluator.evalImgs:
        if record is None or list(record["aRng"]) != list(evaluator.params.areaRng[0]):
            continue
        for dt_id, matched, ignored in zip(record["dtIds"], record["dtMatches"][0], record["dtIgnore"][0]):
            detections[dt_id - 1] = "crowd" if ignored else ("tp" if matched else "fp")
        for gt_id, matched, ignored in zip(record["gtIds"], record["gtMatches"][0], record["gtIgnore"]):
            ground_truth[gt_id] = "crowd" if ignored else ("tp" if matched else "fn")
    return CocoEvaluation([float(v) for v in evaluator.stats], printed.getvalue(), detections, ground_truth)


def coco_segm_eval(predictions: str | Path, ground_truth: str | Path) -> CocoEvaluation:
    """pycocotools' segm COCOeval of a results file (or a full COCO document such as annotations.json,
    matched to the ground truth by file name and category name)."""
    import json

    gt = load_coco_ground_truth(ground_truth)
    data = json.loads(Path(predictions).read_text(encoding="utf-8"))
    results = _matched_to_ground_truth(data, gt.dataset) if isinstance(data, dict) else data
    if not results:
        raise ClearCLIPError(f"{predictions} has no annotations that match the ground truth's images and categories")
    return coco_evaluate(gt, results)
