"""Review, export and refilter of a run that lives on object storage (a real SeaweedFS S3 server): the App's
media come from a local copy in the media cache, reused on a rerun; decisions go back to the bucket; exports
and refiltered runs are uploaded whole."""

import json

import numpy as np
import pytest
from PIL import Image

from clearclip.cli import main
from clearclip.review.fields import PRED_FIELD, SEGMENTATION_FIELD
from clearclip.review.sync import default_dataset_name
from clearclip.run.copies import copy_dir
from folders import write_plain_folder

pytestmark = pytest.mark.slow  # a real S3 server (SeaweedFS) and CLI runs

CLASSES = ["background", "sky", "grass, lawn", "road"]


def storage_args(store):
    return ["--storage-option", f"client_kwargs={json.dumps(store.options['client_kwargs'])}"]


def label(data, out, model, store):
    assert main(["label", str(data), "--out", str(out), "--model", model, "--device", "cpu", "--quiet",
                 "--workers", "0", "--short-side", "48", "--crop", "32", "--stride", "16", "--min-area", "3",
                 *[a for c in CLASSES for a in ("--class", c)], *storage_args(store)]) == 0


def labeled_twice(tmp_path, model, store, bucket):
    """Four images labeled from the bucket into the bucket, and the same images on disk into a folder."""
    data = tmp_path / "data"
    write_plain_folder(data, 4, size=(48, 64))
    images, run = f"{bucket}/images", f"{bucket}/run"
    store.upload(data, images)
    label(images, run, model, store)
    local = tmp_path / "local-run"
    label(data, local, model, store)
    return data, run, local


def test_review_of_an_s3_run_uses_the_media_cache_and_keeps_decisions_in_the_bucket(tmp_path, tiny_model_name,
                                                                                   object_store, bucket, capsys):
    import fiftyone as fo
    from fiftyone import ViewField as F

    data, run, local = labeled_twice(tmp_path, tiny_model_name, object_store, bucket)
    assert main(["review", run, "--no-launch", *storage_args(object_store)]) == 0
    printed = capsys.readouterr().out
    cache = copy_dir(run)
    assert f"media cache {cache}: 11 files" in printed and "11 fetched, 0 reused" in printed  # 3 run files, 4+4
    dataset = fo.load_dataset(default_dataset_name(run))
    assert len(dataset) == 4
    for sample in dataset:
        assert sample.filepath.startswith(str(cache / "images"))
        assert np.array_equal(np.asarray(Image.open(sample.filepath)),
                              np.asarray(Image.open(data / sample.filepath.split("/images/", 1)[1])))
        assert sample[SEGMENTATION_FIELD].mask_path.startswith(str(cache / "run" / "labels"))
    expected = json.loads((local / "annotations.json").read_text())
    assert dataset.count(f"{PRED_FIELD}.detections") == len(expected["annotations"])

    sample = dataset.first()  # a reviewer deletes a detection and marks the sample
    kept = sample[PRED_FIELD].detections[1:]
    sample[PRED_FIELD].detections = kept
    sample.tags.append("reviewed")
    sample.save()
    assert main(["review", run, "--no-launch", *storage_args(object_store)]) == 0
    assert "11 reused" in capsys.readouterr().out  # and review.json, saved to the bucket by the first review
    decisions = json.loads(object_store.filesystem().cat_file(f"{run}/review.json".removeprefix("s3://")))
    assert decisions and "reviewed" in json.dumps(decisions)

    fo.delete_dataset(dataset.name)  # the dataset is gone: the bucket's review.json brings the work back
    assert main(["review", run, "--no-launch", *storage_args(object_store)]) == 0
    again = fo.load_dataset(default_dataset_name(run))
    restored = again.match(F("filepath") == sample.filepath).first()
    assert "reviewed" in restored.tags and len(restored[PRED_FIELD].detections) == len(kept)

    gt = f"{bucket}/gt/annotations.json"  # ground truth from the bucket too: the local run's own labels
    object_store.filesystem().put_file(str(local / "annotations.json"), gt.removeprefix("s3://"))
    assert main(["review", run, "--no-launch", "--gt", gt, *storage_args(object_store)]) == 0
    assert again.count("ground_truth.detections") == len(expected["annotations"])

    export = f"{bucket}/exports/reviewed.json"
    assert main(["export", again.name, "--out", export, *storage_args(object_store)]) == 0
    exported = json.loads(object_store.filesystem().cat_file(export.removeprefix("s3://")))
    assert len(exported["annotations"]) == len(expected["annotations"]) - 1
    assert main(["export", again.name, "--out", export, *storage_args(object_store)]) == 2  # never replaced silently
    assert "exists" in capsys.readouterr().err
    folder = f"{bucket}/exports/yolo"
    assert main(["export", again.name, "--format", "yolo", "--out", folder, *storage_args(object_store)]) == 0
    keys = object_store.filesystem().find(folder.removeprefix("s3://"))
    assert any(k.endswith("data.yaml") for k in keys) and sum(k.endswith(".txt") for k in keys) == 4


def test_refilter_of_an_s3_run_equals_refilter_of_the_same_run_on_disk(tmp_path, tiny_model_name, object_store,
                                                                       bucket):
    _, run, local = labeled_twice(tmp_path, tiny_model_name, object_store, bucket)
    assert main(["refilter", str(local), "--out", str(tmp_path / "strict"), "--min-score", "0.3"]) == 0
    strict = f"{bucket}/strict"
    assert main(["refilter", run, "--out", strict, "--min-score", "0.3", *storage_args(object_store)]) == 0
    fs = object_store.filesystem()
    remote = json.loads(fs.cat_file(f"{strict}/annotations.json".removeprefix("s3://")))
    here = json.loads((tmp_path / "strict" / "annotations.json").read_text())
    assert remote["annotations"] == here["annotations"] and remote["images"] == here["images"]
    assert fs.cat_file(f"{strict}/labels/a/img_000.png".removeprefix("s3://")) == \
        (tmp_path / "strict" / "labels" / "a" / "img_000.png").read_bytes()
