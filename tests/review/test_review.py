"""FiftyOne review and COCO export against a real FiftyOne database (a private mongod, see private_mongo.py).

Masks are checked against pycocotools' own decoding, evaluation against pycocotools' COCOeval, and
mask placement against FiftyOne's Detection.to_segmentation: never against our own inverse."""

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from clearclip.cli import main
from clearclip.review.export import export_coco
from clearclip.review.fields import LEAST_CONFIDENT_VIEW, NOT_IN_RUN_TAG, PRED_FIELD, RUN_CHANGED_TAG, RUN_FIELD, \
    RUN_HASH_FIELD
from clearclip.review.sync import default_dataset_name, load_run
from folders import smooth_image, write_plain_folder

CLASSES = ["background", "sky", "grass, lawn", "road"]


def label(root, out, model):
    assert main(["label", str(root), "--out", str(out), "--model", model, "--device", "cpu", "--quiet",
                 "--workers", "0", "--short-side", "48", "--crop", "32", "--stride", "16", "--min-area", "3",
                 *[a for c in CLASSES for a in ("--class", c)]]) == 0


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("review-data")
    write_plain_folder(root, 5, size=(48, 64))
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_name, data_dir):
    out = tmp_path_factory.mktemp("review-run")
    label(data_dir, out, tiny_model_name)
    return out


@pytest.fixture(scope="module")
def annotations(run_dir):
    return json.loads((run_dir / "annotations.json").read_text())


def content(document, image_ids=None):
    """Annotations without their ids, per image file name, in order."""
    files = {i["id"]: i["file_name"] for i in document["images"]}
    result = {}
    for a in document["annotations"]:
        if image_ids is None or a["image_id"] in image_ids:
            result.setdefault(files[a["image_id"]], []).append(
                (a["category_id"], a["segmentation"]["counts"], tuple(a["segmentation"]["size"]), a["area"],
                 tuple(a["bbox"]), a.get("score")))
    return result


def test_load_run_matches_annotations(run_dir, annotations):
    dataset, report = load_run(run_dir, name="review-load")
    assert dataset.persistent and len(dataset) == len(annotations["images"])
    assert f"{len(annotations['images'])} added" in report
    assert dataset.count(f"{PRED_FIELD}.detections") == len(annotations["annotations"]) > 5
    names = {c["id"]: c["name"] for c in annotations["categories"]}
    by_image = {}
    for a in annotations["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for sample in dataset:
        own = by_image.get(sample.coco_image_id, [])
        for field in (PRED_FIELD, RUN_FIELD):
            detections = sample[field].detections
            assert [d["run_index"] for d in detections] == list(range(len(own)))
            for detection, annotation in zip(detections, own):
                x, y, w, h = annotation["bbox"]
                expected = mask_utils.decode(annotation["segmentation"]).astype(bool)[y : y + h, x : x + w]
                assert detection.label == names[annotation["category_id"]]
                assert detection.confidence == annotation["score"]
                assert np.array_equal(detection.mask, expected)
                W, H = sample.metadata.width, sample.metadata.height
                assert detection.bounding_box == pytest.approx([x / W, y / H, w / W, h / H])
        if own:
            assert sample.min_confidence == min(a["score"] for a in own)
        assert sample.pseudo_segmentation.get_mask().shape == (sample.metadata.height, sample.metadata.width)
    assert dataset.label_schemas[RUN_FIELD]["read_only"] and dataset.active_label_schemas == [PRED_FIELD]
    assert dataset.mask_targets["pseudo_segmentation"][0] == "background"
    values = [v for v in dataset.load_saved_view(LEAST_CONFIDENT_VIEW).values("min_confidence") if v is not None]
    assert values == sorted(values)


def test_dataset_name_is_unique_per_run_folder(tmp_path):
    a, b = tmp_path / "a" / "sample", tmp_path / "b" / "sample"
    assert default_dataset_name(a) != default_dataset_name(b)
    assert default_dataset_name(a) == default_dataset_name(tmp_path / "a" / ".." / "a" / "sample")
    assert default_dataset_name(a).startswith("clearclip-sample-")


def edit(dataset):
    """A reviewer's work: delete one detection, relabel another, tag a sample; returns what to look for."""
    sample = [s for s in dataset.sort_by("coco_image_id") if len(s[PRED_FIELD].detections) >= 2][0]
    detections = sample[PRED_FIELD].detections
    deleted = detections[0]["run_index"]
    relabeled = detections[1]
    new_name = "road" if relabeled.label != "road" else "sky"
    sample[PRED_FIELD].detections = detections[1:]
    sample[PRED_FIELD].detections[0].label = new_name
    sample.tags.append("checked")
    sample.save()
    return sample, deleted, relabeled["run_index"], new_name


def test_rerun_keeps_the_reviewers_edits(tmp_path, tiny_model_name, data_dir):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    run = tmp_path / "run"
    label(data, run, tiny_model_name)
    dataset, _ = load_run(run, name="review-rerun")
    sample, deleted, relabeled, new_name = edit(dataset)

    dataset, report = load_run(run, name="review-rerun")  # the command that relaunches the App
    again = dataset[sample.id]
    assert [d["run_index"] for d in again[PRED_FIELD].detections][0] == relabeled
    assert deleted not in [d["run_index"] for d in again[PRED_FIELD].detections]
    assert again[PRED_FIELD].detections[0].label == new_name and "checked" in again.tags
    assert len(again[RUN_FIELD].detections) == len(again[PRED_FIELD].detections) + 1
    assert "5 unchanged" in report

    # the dataset grows and every image changes: the edited sample keeps its edits and is flagged,
    # untouched samples take the new labels, the new image is added
    for path in data.rglob("*.png"):
        Image.fromarray(np.ascontiguousarray(np.asarray(Image.open(path))[::-1])).save(path)
    Image.fromarray(smooth_image(48, 64, 99)).save(data / "a" / "img_000b.png")
    label(data, run, tiny_model_name)
    dataset, report = load_run(run, name="review-rerun")
    assert len(dataset) == 6 and "1 added" in report
    again = dataset[sample.id]
    assert again[PRED_FIELD].detections[0].label == new_name and RUN_CHANGED_TAG in again.tags
    assert f"regions before, {len(again[RUN_FIELD].detections)} now" in again.run_change
    assert "run_change" in {p for g in dataset.app_config.sidebar_groups for p in g.paths}
    document = json.loads((run / "annotations.json").read_text())
    fresh = content(document)
    for other in dataset.match_tags(RUN_CHANGED_TAG, bool=False):
        got = [(d.label, d.confidence) for d in other[PRED_FIELD].detections]
        names = {c["id"]: c["name"] for c in document["categories"]}
        assert got == [(names[a[0]], a[5]) for a in fresh.get(other.file_name, [])]
    ids = {i["file_name"]: i["id"] for i in document["images"]}
    assert all(s.coco_image_id == ids[s.file_name] for s in dataset)  # ids moved when the dataset grew


@pytest.mark.parametrize("interrupted_at,then", [("insert", "added"), ("schemas", "unchanged")])
def test_an_interrupted_load_is_finished_by_the_next(run_dir, annotations, monkeypatch, interrupted_at, then):
    """Ctrl-C (or a kill) while the samples are written, or after them: never a half-written sample, and the
    next load finishes the dataset."""
    import fiftyone as fo
    from pymongo.collection import Collection

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    name = f"review-interrupted-{interrupted_at}"
    if interrupted_at == "insert":
        monkeypatch.setattr(Collection, "insert_many", interrupted)
    else:
        monkeypatch.setattr(fo.Dataset, "set_label_schemas", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_run(run_dir, name=name)
    monkeypatch.undo()
    left = fo.load_dataset(name)
    assert len(left) == (0 if interrupted_at == "insert" else len(annotations["images"]))

    dataset, report = load_run(run_dir, name=name)
    count = len(annotations["images"])
    assert len(dataset) == count and f"{count} {then}" in report
    assert not dataset.match_tags(RUN_CHANGED_TAG) and dataset.label_schemas[RUN_FIELD]["read_only"]
    assert dataset.count(f"{PRED_FIELD}.detections") == dataset.count(f"{RUN_FIELD}.detections") \
        == len(annotations["annotations"])


def test_export_without_edits_equals_the_run(run_dir, annotations, tmp_path):
    load_run(run_dir, name="review-export")
    assert export_coco("review-export", tmp_path / "export.json") == (len(annotations["images"]),
                                                                       len(annotations["annotations"]))
    exported = json.loads((tmp_path / "export.json").read_text())
    assert exported["images"] == annotations["images"]
    assert [(c["id"], c["name"]) for c in exported["categories"]] == [(c["id"], c["name"]) for c in annotations["categories"]]
    assert content(exported) == content(annotations)
    assert [a["id"] for a in exported["annotations"]] == list(range(1, len(exported["annotations"]) + 1))


def test_export_reflects_deletes_relabels_and_rejections(run_dir, annotations, tmp_path):
    dataset, _ = load_run(run_dir, name="review-edit")
    sample, deleted, relabeled, new_name = edit(dataset)
    rejected = [s for s in dataset if s.id != sample.id][0]
    rejected.tags.append("rejected")
    rejected.save()

    assert main(["export", "review-edit", "--out", str(tmp_path / "edited.json")]) == 0
    exported = json.loads((tmp_path / "edited.json").read_text())
    names = {c["id"]: c["name"] for c in exported["categories"]}
    original = content(annotations)[sample.file_name]
    edited = content(exported)[sample.file_name]
    assert len(edited) == len(original) - 1
    assert names[edited[0][0]] == new_name and edited[0][1:] == original[relabeled][1:]
    assert rejected.coco_image_id not in {i["id"] for i in exported["images"]}
    untouched = {i["id"] for i in annotations["images"]} - {sample.coco_image_id, rejected.coco_image_id}
    assert content(exported, untouched) == content(annotations, untouched)


def test_export_places_a_resized_box_like_fiftyone(run_dir, tmp_path):
    dataset, _ = load_run(run_dir, name="review-resized")
    sample = dataset.match({"file_name": "a/img_000.png"}).first()  # 64x48: these box corners are exact pixels
    detection = sample[PRED_FIELD].detections[0]
    detection.bounding_box = [0.125, 0.25, 0.75, 0.5]  # a reviewer drags the box to another size
    sample.save()
    sample.tags.append("only")
    sample.save()
    export_coco("review-resized", tmp_path / "out.json", tags=["only"])
    exported = json.loads((tmp_path / "out.json").read_text())["annotations"][0]
    frame = (sample.metadata.width, sample.metadata.height)
    expected = detection.to_segmentation(frame_size=frame, target=1).mask.astype(bool)
    assert np.array_equal(mask_utils.decode(exported["segmentation"]).astype(bool), expected)
    assert exported["area"] == int(expected.sum())


def polygon_of(mask):
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def uncompressed_rle(mask):
    """COCO's uncompressed RLE: run lengths of the column-major pixels, starting with a run of zeros."""
    flat = mask.T.ravel().astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [0]])))
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return counts[:-1] if counts[-1] == 0 else counts


def ground_truth(annotations):
    """Standard COCO ground truth written independently of the run: polygons for half of the predicted
    regions of each image, and one crowd region (uncompressed RLE) over every region of one class."""
    images = [{**i, "id": i["id"] + 100} for i in annotations["images"]]
    gt = []
    for image in annotations["images"]:
        own = [a for a in annotations["annotations"] if a["image_id"] == image["id"]]
        crowd_class = max({a["category_id"] for a in own}, key=lambda c: sum(a["category_id"] == c for a in own),
                          default=None)
        crowd = np.zeros((image["height"], image["width"]), bool)
        for k, a in enumerate(own):
            mask = mask_utils.decode(a["segmentation"]).astype(bool)
            if a["category_id"] == crowd_class:
                crowd |= mask
            elif k % 2 == 0 and a["area"] >= 20 and polygon_of(mask):
                gt.append({"image_id": image["id"] + 100, "category_id": a["category_id"], "iscrowd": 0,
                           "segmentation": polygon_of(mask), "bbox": a["bbox"], "area": a["area"]})
        if crowd.any():
            rows, cols = np.flatnonzero(crowd.any(axis=1)), np.flatnonzero(crowd.any(axis=0))
            gt.append({"image_id": image["id"] + 100, "category_id": crowd_class, "iscrowd": 1,
                       "segmentation": {"size": [image["height"], image["width"]], "counts": uncompressed_rle(crowd)},
                       "bbox": [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)],
                       "area": int(crowd.sum())})
    for index, a in enumerate(gt, start=1):
        a["id"] = index
    categories = [{"id": c["id"], "name": c["name"]} for c in annotations["categories"]]
    return {"images": images, "annotations": gt, "categories": categories}


def test_coco_ground_truth_with_polygons_and_crowds_agrees_with_pycocotools(run_dir, annotations, tmp_path):
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(ground_truth(annotations)))
    dataset, report = load_run(run_dir, name="review-gt", gt=gt_path)
    assert "TP" in report and "AP50" in report
    gt_count = sum(len(s.ground_truth.detections) for s in dataset)
    assert gt_count == len(json.loads(gt_path.read_text())["annotations"])
    assert all(d.mask is not None and d.mask.any() for s in dataset for d in s.ground_truth.detections)
    assert any(d["iscrowd"] == 1 for s in dataset for d in s.ground_truth.detections)

    coco_gt = COCO(str(gt_path))
    results = [{**a, "image_id": a["image_id"] + 100} for a in annotations["annotations"]]
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="segm")
    evaluator.params.maxDets = [1, 10, 1000]
    evaluator.evaluate()
    false_positive, ignored = set(), set()
    for record in evaluator.evalImgs:
        if record is None or record["aRng"] != [0, 1e10]:
            continue
        for dt_id, matched, ignore in zip(record["dtIds"], record["dtMatches"][0], record["dtIgnore"][0]):
            if ignore:
                ignored.add(dt_id)
            elif not matched:
                false_positive.add(dt_id)
    ids_by_image = {}
    for a in annotations["annotations"]:
        ids_by_image.setdefault(a["image_id"], []).append(a["id"])
    ours = {"fp": set(), "tp": set(), "crowd": set()}
    for sample in dataset:
        for d in sample[PRED_FIELD].detections:
            ours[d["eval"]].add(ids_by_image[sample.coco_image_id][d["run_index"]])
        assert sample.eval_fp == sum(d["eval"] == "fp" for d in sample[PRED_FIELD].detections)
    assert ignored, "the crowd region should swallow several predictions"
    assert ours["fp"] == false_positive and ours["crowd"] == ignored
    assert f"FP {len(false_positive)}," in report


def test_ground_truth_label_maps(run_dir, annotations, tmp_path):
    gt = tmp_path / "gt"
    agree = counted = 0
    for path in (run_dir / "labels").rglob("*.png"):
        target = gt / path.relative_to(run_dir / "labels")
        target.parent.mkdir(parents=True, exist_ok=True)
        pred = np.asarray(Image.open(path))
        label_map = pred.copy()
        label_map[:4] = np.where(label_map[:4] == 1, 2, 1)  # the top 4 rows disagree everywhere
        Image.fromarray(label_map).save(target)
        scored = (label_map != 0) | (pred != 0)  # FiftyOne leaves out pixels both call background
        agree += int((label_map == pred)[scored].sum())
        counted += int(scored.sum())
    dataset, report = load_run(run_dir, name="review-gt-seg", gt=gt)
    assert "eval_seg" in dataset.list_evaluations()
    assert f"accuracy {agree / counted:.4f}" in report and agree < counted


@pytest.mark.slow
def test_review_and_export_start_without_torch(run_dir, tmp_path):
    script = ("import sys\nfrom clearclip.cli import main\n"
              f"assert main(['review', {str(run_dir)!r}, '--name', 'no-torch', '--no-launch']) == 0\n"
              f"assert main(['export', 'no-torch', '--out', {str(tmp_path / 'e.json')!r}]) == 0\n"
              "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("problem,message", [
    ("unfinished", "not a finished run"),
    ("corrupt", "is not valid JSON"),
])
def test_review_of_a_broken_run_is_one_line(run_dir, tmp_path, capsys, problem, message):
    run = tmp_path / "run"
    if problem == "corrupt":
        shutil.copytree(run_dir, run)
        (run / "annotations.json").write_text('{"info": {}, "images": [{"id": 1, "file_')
    else:
        run.mkdir()
    assert main(["review", str(run), "--no-launch"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("target,message", [("folder", "is a folder"), ("missing", "does not exist"),
                                            ("proc", "clearclip: error:")])
def test_export_to_a_bad_place_is_one_line(run_dir, tmp_path, capsys, target, message):
    load_run(run_dir, name="review-bad-export")
    out = {"folder": tmp_path, "missing": tmp_path / "nope" / "x.json", "proc": "/proc/clearclip.json"}[target]
    assert main(["export", "review-bad-export", "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("file_name", ["/etc/passwd", "../../../../etc/passwd", "a/../../secret.png"])
def test_a_file_name_that_leaves_the_dataset_never_becomes_a_sample(run_dir, tmp_path, capsys, file_name):
    import fiftyone as fo

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    document = json.loads((run / "annotations.json").read_text())
    document["images"][0]["file_name"] = file_name
    (run / "annotations.json").write_text(json.dumps(document))
    name = f"review-traversal-{abs(hash(file_name))}"
    assert main(["review", str(run), "--no-launch", "--name", name]) == 2
    err = capsys.readouterr().err
    assert f"annotations.json: {file_name!r} is not a relative path" in err and len(err.strip().splitlines()) == 1
    paths = fo.load_dataset(name).values("filepath") if fo.dataset_exists(name) else []
    assert not [p for p in paths if "passwd" in p or "secret" in p]


def test_export_never_replaces_a_file_unless_asked(run_dir, tmp_path, capsys):
    load_run(run_dir, name="review-overwrite")
    out = tmp_path / "reviewed.json"
    out.write_text("a reviewer's earlier export")
    assert main(["export", "review-overwrite", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} exists; pass --overwrite" in err and out.read_text() == "a reviewer's earlier export"
    assert main(["export", "review-overwrite", "--out", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["images"]
    before = (run_dir / "annotations.json").read_bytes()
    for target in (run_dir / "annotations.json", run_dir / "new.json"):
        assert main(["export", "review-overwrite", "--out", str(target), "--overwrite", "--tags", "reviewed"]) == 2
        assert "is a clearclip run folder" in capsys.readouterr().err
    assert (run_dir / "annotations.json").read_bytes() == before and not (run_dir / "new.json").exists()


def test_images_that_left_the_run_are_tagged(tmp_path, tiny_model_name, data_dir):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    run = tmp_path / "run"
    label(data, run, tiny_model_name)
    load_run(run, name="review-left")
    (data / "a" / "img_000.png").unlink()
    label(data, run, tiny_model_name)
    dataset, _ = load_run(run, name="review-left")
    assert dataset.match_tags(NOT_IN_RUN_TAG).values("file_name") == ["a/img_000.png"]


def test_an_unknown_category_stops_the_load_before_anything_changes(run_dir, tmp_path, capsys):
    import fiftyone as fo

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    name = "review-unknown-category"
    assert main(["review", str(run), "--no-launch", "--name", name]) == 0
    dataset = fo.load_dataset(name)
    before = sorted((s.filepath, s[RUN_HASH_FIELD]) for s in dataset)
    document = json.loads((run / "annotations.json").read_text())
    for annotation in document["annotations"]:
        annotation["score"] = 0.123  # every image changed ...
    document["annotations"][-1]["category_id"] = 999  # ... and the last one cannot be read
    (run / "annotations.json").write_text(json.dumps(document))
    assert main(["review", str(run), "--no-launch", "--name", name]) == 2
    err = capsys.readouterr().err
    assert "annotations.json: annotation" in err and "999" in err and len(err.strip().splitlines()) == 1
    dataset.reload()
    assert sorted((s.filepath, s[RUN_HASH_FIELD]) for s in dataset) == before  # not half-updated


def test_export_of_a_field_that_holds_no_detections_is_one_line(run_dir, capsys):
    load_run(run_dir, name="review-field")
    for field, message in [("file_name", "field 'file_name' of dataset 'review-field' holds StringField, not Detections"),
                           ("nope", "dataset 'review-field' has no field 'nope'")]:
        for format in ("coco", "yolo"):
            assert main(["export", "review-field", "--out", f"/tmp/never-{field}-{format}", "--format", format,
                         "--field", field]) == 2
            err = capsys.readouterr().err
            assert message in err and len(err.strip().splitlines()) == 1


def _gt_maps(run_dir, gt, change=None):
    for path in (run_dir / "labels").rglob("*.png"):
        target = gt / path.relative_to(run_dir / "labels")
        target.parent.mkdir(parents=True, exist_ok=True)
        label_map = np.asarray(Image.open(path))
        Image.fromarray(change(label_map) if change else label_map).save(target)


@pytest.mark.parametrize("case,change,message", [
    ("ids outside the classes", lambda m: np.where(m == 1, 7, m).astype(np.uint8),
     "holds values [7] that are not category ids of this run (0..3, as in labels/)"),
    ("another size", lambda m: np.zeros((m.shape[0] // 2, m.shape[1]), np.uint8), "label maps must have the image's size"),
])
def test_ground_truth_label_maps_that_cannot_be_the_runs_are_refused(run_dir, tmp_path, capsys, case, change, message):
    gt = tmp_path / "gt"
    _gt_maps(run_dir, gt, change)
    assert main(["review", str(run_dir), "--no-launch", "--name", "review-bad-gt", "--gt", str(gt)]) == 2
    err = capsys.readouterr().err
    assert str(gt) in err and message in err and len(err.strip().splitlines()) == 1


def test_ground_truth_label_maps_for_some_images_evaluate_those(run_dir, tmp_path):
    gt = tmp_path / "gt"
    _gt_maps(run_dir, gt)
    first = sorted(gt.rglob("*.png"))[0]
    first.unlink()
    _, report = load_run(run_dir, name="review-partial-gt", gt=gt)
    assert "eval_seg (4 images with ground truth, 1 without): accuracy 1.0000" in report


def test_coco_ground_truth_without_annotations_or_of_other_sizes(run_dir, annotations, tmp_path, capsys):
    gt = {"images": annotations["images"], "categories": annotations["categories"]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    _, report = load_run(run_dir, name="review-gt-empty", gt=tmp_path / "gt.json")
    assert f"FP {len(annotations['annotations'])}, FN 0" in report
    gt["images"] = [{**gt["images"][0], "width": 999}, *gt["images"][1:]]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    assert main(["review", str(run_dir), "--no-launch", "--name", "review-gt-size", "--gt", str(tmp_path / "gt.json")]) == 2
    err = capsys.readouterr().err
    assert f"is 999x{gt['images'][0]['height']} there but 64x48 in the run: not the same image" in err


def test_a_busy_app_port_is_one_line_before_the_load(run_dir, capsys):
    import fiftyone as fo

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["review", str(run_dir), "--port", str(port), "--name", "busy-port-review"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"clearclip: error: port {port} on 127.0.0.1 is in use") and "--port" in err
    assert len(err.splitlines()) == 1 and not fo.dataset_exists("busy-port-review")  # refused before loading


def test_the_annotate_panel_gets_the_runs_schema(run_dir, annotations):
    """FiftyOne's own operator that the App's Annotate panel calls when it opens: it used to fail on the
    originals' field ("invalid type 'str' for pseudo_labels_run"); now it lists pseudo_labels as the active,
    editable field with the run's classes, and the originals read-only."""
    import fiftyone.operators as foo

    dataset, _ = load_run(run_dir, name="review-annotate-schema")
    result = foo.execute_operator("@voxel51/operators/get_label_schemas", ctx={"dataset": dataset.name}).result
    assert result["active_label_schemas"] == [PRED_FIELD]
    editable = result["label_schemas"][PRED_FIELD]["label_schema"]
    assert editable["classes"] == [c["name"] for c in annotations["categories"]] and not editable.get("read_only")
    assert next(a for a in editable["attributes"] if a["name"] == "confidence")["read_only"]
    assert result["label_schemas"][RUN_FIELD]["label_schema"]["read_only"]
    dataset.set_label_schemas({**dataset.label_schemas, PRED_FIELD: {**editable, "classes": [*editable["classes"], "kite"]}})
    again, _ = load_run(run_dir, name="review-annotate-schema")  # a reviewer's added class is kept
    assert again.label_schemas[PRED_FIELD]["classes"][-1] == "kite"


def test_the_app_opens_on_the_detections_with_colours_from_class_names(run_dir, annotations):
    from clearclip.review.app import class_colors

    dataset, _ = load_run(run_dir, name="review-app-config")
    names = [c["name"] for c in annotations["categories"]]
    colors = {v["value"]: v["color"] for f in dataset.app_config.color_scheme.fields if f["path"] == PRED_FIELD
              for v in f["valueColors"]}
    assert colors == class_colors(names)
    assert class_colors(["person", *names])[names[0]] == colors[names[0]]  # not by place in the class list
    assert len(set(colors.values())) == len(colors)
    assert dataset.app_config.active_fields.paths == ["tags", PRED_FIELD]  # tags on the tiles; the label map
    # (it covers every pixel) off
    groups = {g.name: g for g in dataset.app_config.sidebar_groups}
    assert not groups["clearclip internals"].expanded and RUN_HASH_FIELD in groups["clearclip internals"].paths
    assert PRED_FIELD in groups["review"].paths


def test_reviewed_samples_leave_the_to_review_view_and_are_counted(run_dir, annotations):
    from clearclip.review.fields import REVIEWED_TAG, REVIEWED_VIEW, TO_REVIEW_VIEW

    dataset, report = load_run(run_dir, name="review-progress")
    total = len(annotations["images"])
    assert f"0 of {total} reviewed" in report
    done = dataset.sort_by("min_confidence").first()
    done.tags.append(REVIEWED_TAG)
    done.save()
    dataset, report = load_run(run_dir, name="review-progress")
    assert f"1 of {total} reviewed" in report
    to_review = dataset.load_saved_view(TO_REVIEW_VIEW)
    assert done.id not in to_review.values("id") and len(to_review) == total - 1
    values = [v for v in to_review.values("min_confidence") if v is not None]
    assert values == sorted(values)
    assert dataset.load_saved_view(REVIEWED_VIEW).values("id") == [done.id]
    assert "min_confidence" in dataset.list_indexes() and f"'{REVIEWED_TAG}'" in dataset.description


def test_images_a_browser_cannot_show_get_a_viewable_copy(tmp_path, tiny_model_name, monkeypatch):
    """TIFF and 16-bit PNG: the App shows a PNG copy from the media cache (the image as the model saw it); a
    rerun reuses the copy; other images are shown as they are; exports still read the originals."""
    monkeypatch.setenv("CLEARCLIP_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    pixels = smooth_image(40, 56, 1)
    Image.fromarray(pixels).save(data / "photo.tif")
    Image.fromarray((pixels[:, :, 0].astype(np.uint16) * 257)).save(data / "deep.png")  # 16-bit grayscale
    Image.fromarray(pixels).save(data / "plain.jpg")
    run = tmp_path / "run"
    label(data, run, tiny_model_name)
    dataset, report = load_run(run, name="review-viewable")
    shown = dict(zip(dataset.values("filepath"), dataset.values("viewable_filepath")))
    originals = {Path(p).name: p for p in shown}
    assert shown[originals["plain.jpg"]] == originals["plain.jpg"]
    for name in ("photo.tif", "deep.png"):
        copy = Path(shown[originals[name]])
        assert copy.parent.parent == tmp_path / "cache" / "media" and copy.suffix == ".png"
        with Image.open(copy) as image:
            assert image.mode == "RGB" and image.size == (56, 40)
    assert np.array_equal(np.asarray(Image.open(shown[originals["photo.tif"]])), pixels)
    assert "2 shown from viewable copies" in report
    assert dataset.app_config.grid_media_field == dataset.app_config.modal_media_field == "viewable_filepath"
    written = {p: Path(p).stat().st_mtime_ns for p in shown.values() if "cache" in p}
    dataset, _ = load_run(run, name="review-viewable-again")
    assert {p: Path(p).stat().st_mtime_ns for p in written} == written  # reused, not written again
    assert set(dataset.values("viewable_filepath")) == set(shown.values())
