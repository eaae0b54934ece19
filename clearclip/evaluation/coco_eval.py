"""COCO segm AP with pycocotools, images matched by file name and categories by name, with TP/FP/FN at IoU 0.5."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClearCLIPError


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
