"""Thresholds calibrated from review (known decisions, hand-computed answers) and refilter against a fresh run."""

import json

import fiftyone as fo
import numpy as np
import pytest
import yaml
from PIL import Image

from clearclip.review.calibrate import choose_thresholds, collect_evidence
from clearclip.cli import main
from clearclip.review.fields import PRED_FIELD, RUN_FIELD
from folders import write_plain_folder


def detection(label, score, index=None):
    d = fo.Detection(label=label, bounding_box=[0.1, 0.1, 0.2, 0.2], confidence=score)
    if index is not None:
        d["run_index"] = index
    return d


def reviewed_dataset(name):
    """25 'cat' pseudo-labels at scores i/25: kept for i >= 15 except i = 20 (deleted) and i = 23 (relabeled to dog);
    below 15 only i = 3, 7, 11 kept. A reviewer drew one cat. 'road': 20 pseudo-labels, all deleted. 'dog': 3, all
    kept. A rejected sample and an unreviewed one delete every cat: they must not count."""
    dataset = fo.Dataset(name)
    originals, edited = [], []
    for i in range(1, 26):
        originals.append(detection("cat", i / 25, len(originals)))
        if (i >= 15 and i not in (20, 23)) or i in (3, 7, 11):
            edited.append(detection("cat", i / 25, len(originals) - 1))
        elif i == 23:
            edited.append(detection("dog", i / 25, len(originals) - 1))
    for i in range(20):
        originals.append(detection("road", 0.5 + i / 100, len(originals)))
    for score in (0.3, 0.4, 0.5):
        originals.append(detection("dog", score, len(originals)))
        edited.append(detection("dog", score, len(originals) - 1))
    edited.append(detection("cat", None))  # drawn by the reviewer
    samples = [fo.Sample(filepath=f"/data/{name}-reviewed.jpg", tags=["reviewed"], **{
        RUN_FIELD: fo.Detections(detections=originals), PRED_FIELD: fo.Detections(detections=edited)})]
    for tags in (["reviewed", "rejected"], []):
        cats = [detection("cat", 0.99, i) for i in range(10)]
        samples.append(fo.Sample(filepath=f"/data/{name}-{len(samples)}.jpg", tags=tags, **{
            RUN_FIELD: fo.Detections(detections=cats), PRED_FIELD: fo.Detections(detections=[])}))
    dataset.add_samples(samples)
    return dataset


def test_thresholds_from_known_decisions():
    calibrations = {c.name: c for c in choose_thresholds(collect_evidence(reviewed_dataset("calib-known")), 0.8)}
    cat = calibrations["cat"]
    # keeping scores >= 15/25 keeps 11 pseudo-labels, 9 of them kept by the reviewer: precision 9/11 >= 0.8; at
    # 14/25 it is 9/12 < 0.8. Recall: 9 of the 12 kept plus 1 drawn cat.
    assert (cat.status, cat.threshold, cat.reviewed) == ("calibrated", pytest.approx(0.6), 25)
    assert cat.precision == pytest.approx(9 / 11) and cat.recall == pytest.approx(9 / 13)
    assert calibrations["road"].status == "target not reached" and calibrations["road"].threshold > 0.69
    assert calibrations["dog"].status == "too few reviewed" and calibrations["dog"].threshold is None


def test_calibrate_command_writes_the_thresholds_file_and_the_curves(tmp_path, capsys):
    reviewed_dataset("calib-command")
    out = tmp_path / "thresholds.yaml"
    assert main(["calibrate", "calib-command", "--target-precision", "0.8", "--out", str(out),
                 "--plot", str(tmp_path / "pr.png")]) == 0
    thresholds = yaml.safe_load(out.read_text())
    assert thresholds["cat"] == {"min_score": 0.6} and "dog" not in thresholds and thresholds["road"]["min_score"] > 0.69
    assert Image.open(tmp_path / "pr.png").size[0] > 400
    printed = capsys.readouterr().out
    assert "too few reviewed" in printed and "target not reached" in printed


def test_calibrate_without_reviewed_samples_says_how_to_mark_them(capsys):
    fo.Dataset("calib-empty").add_sample(fo.Sample(filepath="/data/x.jpg", pseudo_labels=fo.Detections(),
                                                   pseudo_labels_run=fo.Detections()))
    assert main(["calibrate", "calib-empty", "--out", "/tmp/never.yaml"]) == 2
    assert "tag the samples a reviewer has checked" in capsys.readouterr().err


def test_calibrate_on_a_dataset_clearclip_did_not_make_names_the_missing_field(capsys):
    dataset = fo.Dataset("calib-foreign")
    dataset.add_sample(fo.Sample(filepath="/data/x.jpg", pseudo_labels=fo.Classification(label="cat"), tags=["reviewed"]))
    assert main(["calibrate", "calib-foreign", "--out", "/tmp/never.yaml"]) == 2
    err = capsys.readouterr().err
    assert "field 'pseudo_labels' of dataset 'calib-foreign' holds EmbeddedDocumentField of Classification, not Detections" in err
    assert len(err.strip().splitlines()) == 1
    dataset.delete_sample_field("pseudo_labels")
    assert main(["calibrate", "calib-foreign", "--out", "/tmp/never.yaml"]) == 2
    assert "has no field 'pseudo_labels'; calibrate reads datasets made by clearclip review" in capsys.readouterr().err


CLASSES = ["background", "sky", "grass", "road"]


def label(data, out, model, *extra):
    assert main(["label", str(data), "--out", str(out), "--model", model, "--device", "cpu", "--quiet", "--workers", "0",
                 "--short-side", "48", "--crop", "32", "--stride", "16", "--min-area", "2", "--min-area-fraction", "0",
                 *[a for c in CLASSES for a in ("--class", c)], *extra]) == 0


def test_refilter_equals_a_fresh_run_with_the_same_thresholds(tiny_model_name, tmp_path):
    data = tmp_path / "data"
    write_plain_folder(data, 6, size=(48, 64))
    source = tmp_path / "source"
    label(data, source, tiny_model_name)
    thresholds = tmp_path / "stricter.yaml"
    thresholds.write_text("sky: {min_score: 0.3333}\ngrass: {min_area: 30}\n")
    assert main(["refilter", str(source), "--out", str(tmp_path / "refiltered"), "--class-thresholds", str(thresholds),
                 "--min-area", "5"]) == 0
    fresh = tmp_path / "fresh"
    label(data, fresh, tiny_model_name, "--min-area", "5", "--class-thresholds", str(thresholds))
    refiltered = json.loads((tmp_path / "refiltered" / "annotations.json").read_text())
    expected = json.loads((fresh / "annotations.json").read_text())
    original = json.loads((source / "annotations.json").read_text())
    assert len(expected["annotations"]) < len(original["annotations"])  # the thresholds did drop regions
    for key in ("images", "categories", "annotations"):
        assert refiltered[key] == expected[key]
    assert refiltered["info"]["thresholds"] == expected["info"]["thresholds"]
    assert refiltered["info"]["refiltered_from"]["run"] == str(source.resolve())
    for path in (fresh / "labels").rglob("*.png"):
        twin = tmp_path / "refiltered" / "labels" / path.relative_to(fresh / "labels")
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(twin)))
    dataset, _ = __import__("clearclip.review.sync", fromlist=["load_run"]).load_run(tmp_path / "refiltered", name="refiltered")
    assert dataset.count(f"{PRED_FIELD}.detections") == len(expected["annotations"])


@pytest.mark.parametrize("option,message", [(["--min-score", "0.1"], "min_score 0.1 is below the run's 0.2"),
                                            (["--min-area", "1"], "min_area 1 is below the run's 2")])
def test_refilter_only_makes_thresholds_stricter(tiny_model_name, tmp_path, capsys, option, message):
    data = tmp_path / "data"
    write_plain_folder(data, 2, size=(48, 64))
    label(data, tmp_path / "source", tiny_model_name, "--min-score", "0.2")
    assert main(["refilter", str(tmp_path / "source"), "--out", str(tmp_path / "new"), *option]) == 2
    assert message in capsys.readouterr().err
