"""COCO segm AP with pycocotools, images matched by file name and categories by name, with TP/FP/FN at IoU 0.5."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClearCLIPError
from .coco_checks import read_ground_truth, read_predictions


def load_coco_ground_truth(path: str | Path):
    """A pycocotools COCO index of a checked ground-truth file (``coco_checks.read_ground_truth``)."""
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = read_ground_truth(path)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


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
    matched to the ground truth by file name and category name); both are checked first (``coco_checks``)."""
    gt = load_coco_ground_truth(ground_truth)
    results = read_predictions(predictions, gt.dataset)
    if not results:
        raise ClearCLIPError(f"{predictions} has no annotations that match the ground truth's images and categories")
    return coco_evaluate(gt, results)
