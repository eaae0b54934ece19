"""mIoU of label maps: predicted ids to class indices, confusion matrices, IoU per class, the table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

IGNORE_INDEX = 255


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
