"""FiftyOne review and COCO export against a real FiftyOne database (temporary FIFTYONE_DATABASE_DIR)."""

import json

import numpy as np
import pytest

from clearclip.cli import main
from clearclip.coco import decode_rle
from clearclip.export import detection_mask, export_coco
from clearclip.review import LEAST_CONFIDENT_VIEW, load_run
from folders import write_plain_folder

CLASSES = ["background", "sky", "grass, lawn", "road"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_name):
    root = tmp_path_factory.mktemp("review-data")
    write_plain_folder(root, 5, size=(48, 64))
    out = tmp_path_factory.mktemp("review-run")
    assert main(["label", str(root), "--out", str(out), "--model", tiny_model_name, "--device", "cpu", "--quiet",
                 "--workers", "0", "--short-side", "48", "--crop", "32", "--stride", "16", "--min-area", "3",
                 *[a for c in CLASSES for a in ("--class", c)]]) == 0
    return out


@pytest.fixture(scope="module")
def annotations(run_dir):
    return json.loads((run_dir / "annotations.json").read_text())


def comparable(document):
    return sorted((a["id"], a["image_id"], a["category_id"], a["segmentation"]["counts"], tuple(a["segmentation"]["size"]),
                   a["area"], tuple(a["bbox"]), a["score"]) for a in document["annotations"])


def test_load_run_matches_annotations(run_dir, annotations):
    dataset = load_run(run_dir, name="review-load")
    assert dataset.persistent and len(dataset) == len(annotations["images"])
    assert dataset.count("pseudo_labels.detections") == len(annotations["annotations"]) > 5
    by_id = {a["id"]: a for a in annotations["annotations"]}
    names = {c["id"]: c["name"] for c in annotations["categories"]}
    for sample in dataset:
        detections = sample.pseudo_labels.detections
        scores = []
        for detection in detections:
            annotation = by_id[detection["coco_id"]]
            assert detection.label == names[annotation["category_id"]]
            assert detection.confidence == annotation["score"]
            mask, _ = detection_mask(detection, sample.metadata.width, sample.metadata.height)
            assert np.array_equal(mask, decode_rle(annotation["segmentation"]))
            scores.append(annotation["score"])
        if scores:
            assert sample.min_confidence == min(scores)
            assert sample.mean_confidence == pytest.approx(np.mean(scores))
        assert sample.pseudo_segmentation.get_mask().shape == (sample.metadata.height, sample.metadata.width)
    assert dataset.mask_targets["pseudo_segmentation"][0] == "background"
    view = dataset.load_saved_view(LEAST_CONFIDENT_VIEW)
    values = [v for v in view.values("min_confidence") if v is not None]
    assert values == sorted(values)


def test_reloading_updates_instead_of_duplicating(run_dir, annotations):
    dataset = load_run(run_dir, name="review-reload")
    first = dataset.first()
    first.tags.append("checked")
    expected = first["min_confidence"]
    first["min_confidence"] = 2.0
    first["pseudo_labels"] = None
    first.save()
    dataset = load_run(run_dir, name="review-reload")
    assert len(dataset) == len(annotations["images"])
    assert dataset.count("pseudo_labels.detections") == len(annotations["annotations"])  # refreshed from the run
    assert dataset[first.id]["min_confidence"] == expected
    assert dataset.count_sample_tags() == {"checked": 1}


def test_export_without_edits_equals_the_run(run_dir, annotations, tmp_path):
    load_run(run_dir, name="review-export")
    exported = export_coco("review-export", tmp_path / "export.json")
    assert exported["images"] == annotations["images"]
    assert [(c["id"], c["name"]) for c in exported["categories"]] == [(c["id"], c["name"]) for c in annotations["categories"]]
    assert comparable(exported) == comparable(annotations)
    assert json.loads((tmp_path / "export.json").read_text()) == exported


def test_export_reflects_deletes_relabels_and_rejections(run_dir, annotations, tmp_path):
    dataset = load_run(run_dir, name="review-edit")
    samples = [s for s in dataset.sort_by("coco_image_id") if len(s.pseudo_labels.detections) >= 2]
    sample = samples[0]
    deleted = sample.pseudo_labels.detections[0]["coco_id"]
    relabeled = sample.pseudo_labels.detections[1]
    new_name = "road" if relabeled.label != "road" else "sky"
    sample.pseudo_labels.detections = sample.pseudo_labels.detections[1:]
    sample.pseudo_labels.detections[0].label = new_name
    sample.save()
    rejected = [s for s in dataset if s.id != sample.id][0]
    rejected.tags.append("rejected")
    rejected.save()

    assert main(["export", "review-edit", "--out", str(tmp_path / "edited.json")]) == 0
    exported = json.loads((tmp_path / "edited.json").read_text())
    ids = {a["id"]: a for a in exported["annotations"]}
    assert deleted not in ids
    names = {c["id"]: c["name"] for c in exported["categories"]}
    assert names[ids[relabeled["coco_id"]]["category_id"]] == new_name
    assert rejected.coco_image_id not in {i["id"] for i in exported["images"]}
    assert all(a["image_id"] != rejected.coco_image_id for a in exported["annotations"])
    assert all(isinstance(a["segmentation"]["counts"], str) for a in exported["annotations"])
    untouched = [a for a in annotations["annotations"] if a["image_id"] not in (sample.coco_image_id, rejected.coco_image_id)]
    assert comparable({"annotations": untouched}) == comparable(
        {"annotations": [a for a in exported["annotations"] if a["image_id"] != sample.coco_image_id]})


def test_ground_truth_and_evaluation(run_dir, annotations):
    dataset = load_run(run_dir, name="review-gt", gt=run_dir / "annotations.json")
    assert dataset.count("ground_truth.detections") == len(annotations["annotations"])
    assert dataset.sum("eval_tp") == len(annotations["annotations"]) and dataset.sum("eval_fp") == 0

    seg = load_run(run_dir, name="review-gt-seg", gt=run_dir / "labels")
    assert "eval_seg" in seg.list_evaluations()
    assert seg.mean("eval_seg_accuracy") == pytest.approx(1.0)


def test_review_of_an_unfinished_run_is_a_clear_error(tmp_path, capsys):
    assert main(["review", str(tmp_path), "--no-launch"]) == 2
    assert "not a finished run" in capsys.readouterr().err
