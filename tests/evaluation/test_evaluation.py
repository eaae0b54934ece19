"""mIoU against hand-computed confusion matrices; COCO segm AP on a known-answer case."""

import json

import numpy as np
import pytest
from PIL import Image

from clearclip.cli import main
from rle_reference import encode_rle
from clearclip.evaluation.benchmarks import BENCHMARKS
from clearclip.evaluation.coco_eval import coco_segm_eval
from clearclip.evaluation.miou import class_indices, confusion_matrix, iou_metrics


def test_confusion_matrix_by_hand():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    # rows gt, cols pred: gt0 -> pred 0,1 ; gt1 -> 1,1 ; gt2 -> 0 ; 255 ignored
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    assert np.array_equal(confusion_matrix(pred, gt, 3)[:, :3], expected)
    assert confusion_matrix(pred, gt, 3)[:, 3].sum() == 0  # nothing predicted as "no class"
    metrics = iou_metrics(expected)
    # IoU0 = 1/(2+2-1) = 1/3, IoU1 = 2/(2+3-2) = 2/3, IoU2 = 0/(1+0-0) = 0
    assert np.allclose(metrics["iou"], [1 / 3, 2 / 3, 0])
    assert metrics["miou"] == pytest.approx(1 / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(3 / 5)


def test_reduce_zero_label_and_absent_classes():
    gt = np.array([[0, 1, 2, 3]])  # 0 -> ignored, 1..3 -> 0..2
    pred = np.array([[2, 0, 1, 1]])
    cm = confusion_matrix(pred, gt, 4, reduce_zero_label=True)[:, :4]
    assert cm.sum() == 3
    assert np.array_equal(cm[:3, :3], [[1, 0, 0], [0, 1, 0], [0, 1, 0]])
    metrics = iou_metrics(cm)
    assert np.isnan(metrics["iou"][3])  # absent from gt and prediction: left out of the mean
    assert metrics["miou"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_eval_miou_cli_on_label_map_folders(tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    Image.fromarray(np.array([[0, 1], [1, 1]], np.uint8)).save(tmp_path / "pred" / "x.png")
    Image.fromarray(np.array([[0, 1], [0, 1]], np.uint8)).save(tmp_path / "gt" / "x.png")
    assert main(["eval-miou", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--num-classes", "2"]) == 0
    out = capsys.readouterr().out
    # IoU0 = 1/2, IoU1 = 2/3
    assert "mIoU" in out and f"{100 * (0.5 + 2 / 3) / 2:.2f}" in out


def test_benchmark_presets_match_the_paper():
    assert len(BENCHMARKS) == 8
    assert BENCHMARKS["voc21"].background_threshold == 0.5
    assert BENCHMARKS["context60"].background_threshold == 0.15
    assert BENCHMARKS["coco_object"].background_threshold == 0.4
    assert (BENCHMARKS["cityscapes"].crop, BENCHMARKS["cityscapes"].stride) == (224, 224)
    sizes = {name: len(b.vocabulary()) for name, b in BENCHMARKS.items()}
    assert sizes == {"voc21": 21, "voc20": 20, "context60": 60, "context59": 59, "coco_object": 81,
                     "coco_stuff": 171, "cityscapes": 19, "ade20k": 150}
    assert BENCHMARKS["voc21"].vocabulary().has_background and not BENCHMARKS["ade20k"].vocabulary().has_background


def _ground_truth(tmp_path):
    masks = {}
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in (1, 2):
        images.append({"id": image_id, "file_name": f"im{image_id}.png", "width": 30, "height": 20})
        for k in range(2):
            mask = np.zeros((20, 30), bool)
            y, x = rng.integers(0, 10), rng.integers(0, 15)
            mask[y:y + 8, x:x + 10] = True
            rle = encode_rle(mask)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": k + 1, "segmentation": rle,
                                "area": int(mask.sum()), "bbox": [int(x), int(y), 10, 8], "iscrowd": 0})
            masks[len(annotations)] = mask
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return path, gt


def test_coco_eval_prediction_equal_to_ground_truth_gives_ap_1(tmp_path, capsys):
    gt_path, gt = _ground_truth(tmp_path)
    # our run's document: other image ids and category ids, matched by file name and category name
    document = {
        "images": [{"id": 10 + i["id"], "file_name": i["file_name"], "width": 30, "height": 20} for i in gt["images"]],
        "categories": [{"id": 7, "name": "dog"}, {"id": 8, "name": "cat"}],
        "annotations": [{**a, "image_id": 10 + a["image_id"], "category_id": {1: 8, 2: 7}[a["category_id"]], "score": 0.9}
                        for a in gt["annotations"]],
    }
    pred_path = tmp_path / "annotations.json"
    pred_path.write_text(json.dumps(document))
    evaluation = coco_segm_eval(pred_path, gt_path)
    assert evaluation.stats[0] == pytest.approx(1.0) and evaluation.stats[1] == pytest.approx(1.0)
    assert evaluation.counts() == {"TP": 4, "FP": 0, "FN": 0, "crowd": 0}

    document["annotations"] = [{**a, "category_id": 7 if a["category_id"] == 8 else 8} for a in document["annotations"]]
    pred_path.write_text(json.dumps(document))
    evaluation = coco_segm_eval(pred_path, gt_path)
    assert evaluation.stats[0] == pytest.approx(0.0) and evaluation.counts()["FP"] == 4

    assert main(["eval-coco", str(tmp_path / "annotations.json"), "--gt", str(gt_path)]) == 0
    assert "Average Precision" in capsys.readouterr().out


def test_unlabeled_predictions_count_as_misses():
    gt = np.array([[0, 1, 1, 2]])
    pred = class_indices(np.array([[1, 0, 2, 3]]), 3, "category", has_background=False)  # a run without background
    assert pred.tolist() == [[0, 3, 1, 2]]  # 0 = unlabeled -> "no class" (index 3)
    metrics = iou_metrics(confusion_matrix(pred, gt, 3))
    assert metrics["iou"].tolist() == pytest.approx([1.0, 0.5, 1.0])
    assert metrics["pixel_accuracy"] == pytest.approx(3 / 4)


def test_prediction_ids_out_of_range_are_refused():
    with pytest.raises(ValueError, match=r"predicted values \[3\] are not class ids of a 3-class vocabulary"):
        class_indices(np.array([[0, 3]]), 3, "class")
    with pytest.raises(ValueError, match="ground-truth values \\[7\\] are outside the 3 classes"):
        confusion_matrix(np.zeros((1, 2)), np.array([[1, 7]]), 3)


def write_maps(folder, maps):
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in maps.items():
        Image.fromarray(np.asarray(array, np.uint8)).save(folder / name)


def test_eval_miou_of_a_run_without_background_maps_ids_explicitly(tmp_path, capsys):
    """A run of a vocabulary without background writes category ids 1..K (0 = unlabeled); ground truth with
    reduce-zero-label has 0 = ignore and 1..K = the classes: identical maps must score 100."""
    run = tmp_path / "run"
    (run / "labels").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"vocabulary": ["cat", "dog", "sofa"]}))
    maps = {"x.png": [[1, 2, 3, 3], [0, 1, 2, 3]]}
    write_maps(run / "labels", maps)
    write_maps(tmp_path / "gt", maps)
    assert main(["eval-miou", "--pred", str(run / "labels"), "--gt", str(tmp_path / "gt"), "--reduce-zero-label"]) == 0
    assert "mIoU                           100.00" in capsys.readouterr().out
    # read as class indices, the same maps would be one off: the top id is out of range and refused
    assert main(["eval-miou", "--pred", str(run / "labels"), "--gt", str(tmp_path / "gt"), "--reduce-zero-label",
                 "--pred-ids", "class"]) == 2
    assert "predicted values [3] are not class ids" in capsys.readouterr().err


def test_eval_miou_names_the_file_with_out_of_range_predictions(tmp_path, capsys):
    write_maps(tmp_path / "pred", {"x.png": [[0, 5]]})
    write_maps(tmp_path / "gt", {"x.png": [[0, 1]]})
    assert main(["eval-miou", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--num-classes", "2"]) == 2
    err = capsys.readouterr().err
    assert "x.png" in err and "predicted values [5]" in err and len(err.strip().splitlines()) == 1


def _our_document(gt: dict) -> dict:
    return {"images": [dict(i) for i in gt["images"]], "categories": gt["categories"],
            "annotations": [{**a, "score": 0.9} for a in gt["annotations"]]}


def _write(path, document) -> str:
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return str(path)


def _gt_without_annotations(gt):
    return {k: v for k, v in gt.items() if k != "annotations"}


def _gt_with(gt, **changes):
    return {**gt, "annotations": [{**gt["annotations"][0], **changes}, *gt["annotations"][1:]]}


BAD_GROUND_TRUTH = [
    ("a list", lambda gt: [gt], "is not a COCO document (an object with 'images' and 'categories')"),
    ("not JSON", lambda gt: '{"images": [', "cannot read ground truth"),
    ("a 4-number polygon", lambda gt: _gt_with(gt, segmentation=[[1, 1, 5, 5]]),
     "annotation 1 has a polygon of 4 numbers (COCO needs x,y pairs, at least 3 points)"),
    ("no segmentation", lambda gt: _gt_with(gt, segmentation=None), "annotation 1 has no segmentation (RLE or polygons)"),
    ("RLE of another size", lambda gt: _gt_with(gt, segmentation={"size": [10, 10], "counts": "0"}),
     "annotation 1 has RLE of size 10x10 on an image of 20x30"),
    ("unknown category", lambda gt: _gt_with(gt, category_id=99), "annotation 1 names an unknown category 99"),
    ("duplicate category names", lambda gt: {**gt, "categories": [*gt["categories"], {"id": 3, "name": "cat"}]},
     "two categories share the name 'cat'; matching goes by name"),
]


@pytest.mark.parametrize("case,make,message", BAD_GROUND_TRUTH, ids=[c[0] for c in BAD_GROUND_TRUTH])
def test_eval_coco_refuses_ground_truth_it_cannot_read_as_coco(tmp_path, capsys, case, make, message):
    gt_path, gt = _ground_truth(tmp_path)
    predictions = _write(tmp_path / "annotations.json", _our_document(gt))
    bad = _write(tmp_path / "bad-gt.json", make(gt))
    assert main(["eval-coco", predictions, "--gt", bad]) == 2
    err = capsys.readouterr().err
    assert "bad-gt.json" in err and message in err and len(err.strip().splitlines()) == 1


def test_ground_truth_without_annotations_or_areas_is_evaluated(tmp_path):
    gt_path, gt = _ground_truth(tmp_path)
    predictions = _write(tmp_path / "annotations.json", _our_document(gt))
    empty = coco_segm_eval(predictions, _write(tmp_path / "empty.json", _gt_without_annotations(gt)))
    assert empty.counts() == {"TP": 0, "FP": 4, "FN": 0, "crowd": 0}
    bare = {**gt, "annotations": [{k: v for k, v in a.items() if k not in ("area", "iscrowd", "bbox")}
                                  for a in gt["annotations"]]}
    assert coco_segm_eval(predictions, _write(tmp_path / "bare.json", bare)).stats[0] == pytest.approx(1.0)


BAD_PREDICTIONS = [
    ("not JSON", lambda doc, gt: "[{", "cannot read predictions"),
    ("unknown image id", lambda doc, gt: [{"image_id": 5, "category_id": 1, "segmentation": gt["annotations"][0]["segmentation"],
                                          "score": 0.5}], "result #0 names image 5, which the ground truth does not have"),
    ("a result without score", lambda doc, gt: [{"image_id": 1, "category_id": 1,
                                                 "segmentation": gt["annotations"][0]["segmentation"]}],
     "result #0 has no numeric score"),
    ("a result without segmentation", lambda doc, gt: [{"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [0, 0, 3, 3]}],
     "result #0 (on 'im1.png') has no segmentation (RLE or polygons)"),
    ("another image size", lambda doc, gt: {**doc, "images": [{**doc["images"][0], "width": 60, "height": 40},
                                                              *doc["images"][1:]]},
     "'im1.png' is 60x40 but 30x20 in the ground truth: not the same image"),
    ("an unknown category", lambda doc, gt: {**doc, "annotations": [{**doc["annotations"][0], "category_id": 42}]},
     "annotation #0 names an unknown category 42"),
]


@pytest.mark.parametrize("case,make,message", BAD_PREDICTIONS, ids=[c[0] for c in BAD_PREDICTIONS])
def test_eval_coco_refuses_predictions_it_cannot_match(tmp_path, capsys, case, make, message):
    gt_path, gt = _ground_truth(tmp_path)
    bad = _write(tmp_path / "bad-pred.json", make(_our_document(gt), gt))
    assert main(["eval-coco", bad, "--gt", str(gt_path)]) == 2
    err = capsys.readouterr().err
    assert "bad-pred.json" in err and message in err and len(err.strip().splitlines()) == 1


def test_an_object_a_reviewer_drew_without_a_score_counts_as_certain(tmp_path):
    gt_path, gt = _ground_truth(tmp_path)
    document = _our_document(gt)
    del document["annotations"][0]["score"]
    evaluation = coco_segm_eval(_write(tmp_path / "export.json", document), gt_path)
    assert evaluation.counts() == {"TP": 4, "FP": 0, "FN": 0, "crowd": 0}
