"""A review's decisions outlive its dataset: saved to RUN_DIR/review.json, they come back on a refiltered run
(region by region: decisions about regions the refilter dropped are counted, not applied), on a moved run
folder and after the dataset was deleted."""

import json
import shutil

import fiftyone as fo
import numpy as np
import pytest

from clearclip.cli import main
from clearclip.review.decisions import save_decisions
from clearclip.review.fields import PRED_FIELD, REJECTED_TAG, REVIEWED_TAG
from clearclip.review.sync import load_run
from folders import write_plain_folder

CLASSES = ["background", "sky", "grass, lawn", "road"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_name):
    data = tmp_path_factory.mktemp("decisions-data")
    write_plain_folder(data, 6, size=(48, 64))
    out = tmp_path_factory.mktemp("decisions-runs") / "run"
    assert main(["label", str(data), "--out", str(out), "--model", tiny_model_name, "--device", "cpu", "--quiet",
                 "--workers", "0", "--short-side", "48", "--crop", "32", "--stride", "16", "--min-area", "3",
                 *[a for c in CLASSES for a in ("--class", c)]]) == 0
    return out


def review(run, name):
    dataset, report = load_run(run, name=name)
    return dataset, report


def reviewed_state(dataset):
    """Per file name: the sample's tags and its editable labels (label, box, mask bytes), in order."""
    return {s.file_name: (sorted(s.tags), [(d.label, [round(v, 6) for v in d.bounding_box], d.mask.tobytes())
                                           for d in s[PRED_FIELD].detections])
            for s in dataset.sort_by("file_name")}


def edit(dataset):
    """A reviewer's session: a delete (the most confident region of a sample) and a relabel (its least
    confident), a drawn box, a reviewed and a rejected sample. Returns the deleted and relabeled detections."""
    samples = [s for s in dataset.sort_by("file_name") if len({d.confidence for d in s[PRED_FIELD].detections}) >= 2]
    first, second, third, fourth = samples[:4]
    detections = first[PRED_FIELD].detections
    deleted, relabeled = max(detections, key=lambda d: d.confidence), min(detections, key=lambda d: d.confidence)
    detections.remove(deleted)
    relabeled.label = next(c for c in ("sky", "grass", "road") if c != relabeled.label)
    first.save()
    second[PRED_FIELD].detections.append(fo.Detection(label="road", bounding_box=[0.1, 0.2, 0.3, 0.25],
                                                      mask=np.eye(6, dtype=bool)))
    second.save()
    third.tags.append(REVIEWED_TAG)
    third.save()
    fourth.tags.append(REJECTED_TAG)
    fourth.save()
    return deleted, relabeled


def test_decisions_come_back_on_a_moved_folder_and_a_deleted_dataset(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    dataset, _ = review(run, "decisions-first")
    edit(dataset)
    assert save_decisions(dataset, run) == 4
    expected = reviewed_state(dataset)

    moved = tmp_path / "elsewhere" / "run"
    shutil.move(run, moved)  # a new path: a new dataset
    again, report = review(moved, None)
    assert again.name != "decisions-first" and "4 with decisions from review.json" in report
    assert reviewed_state(again) == expected

    name = again.name
    again.delete()
    restored, _ = review(moved, name)
    assert reviewed_state(restored) == expected


def test_refilter_then_review_keeps_every_decision_that_still_applies(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    dataset, _ = review(run, "decisions-source")
    deleted, relabeled = edit(dataset)
    review(run, "decisions-source")  # a rerun of review saves what reviewers did before it loads
    saved = json.loads((run / "review.json").read_text())["images"]
    assert len(saved) == 4

    threshold = (relabeled.confidence + deleted.confidence) / 2  # drops the relabeled region, keeps the deleted one
    refiltered = tmp_path / "strict"
    assert main(["refilter", str(run), "--out", str(refiltered), "--min-score", f"{threshold:.6f}"]) == 0
    strict, report = review(refiltered, "decisions-strict")
    assert "4 with decisions from review.json" in report
    assert "1 saved decisions about regions this run no longer has (not applied)" in report

    source = reviewed_state(dataset)
    for file_name, (tags, labels) in reviewed_state(strict).items():
        assert tags == source[file_name][0]
        kept = [label for label in source[file_name][1] if label in labels]
        # every region the refilter kept has the label the reviewer gave it, and the drawn box is there
        assert [label for label in labels if label in source[file_name][1]] == kept
    drawn = [d for s in strict for d in s[PRED_FIELD].detections if d.label == "road" and d.bounding_box == [0.1, 0.2, 0.3, 0.25]]
    assert len(drawn) == 1
    boxes = [d.bounding_box for s in strict for d in s[PRED_FIELD].detections]
    assert deleted.bounding_box not in boxes  # the region the refilter kept is still deleted
    assert any(d.bounding_box == deleted.bounding_box for s in strict for d in s["pseudo_labels_run"].detections)
