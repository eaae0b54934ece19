"""Review's first load writes sample documents directly (``review.documents``): they must be what FiftyOne itself
writes for the same samples, read back by FiftyOne as the same labels and masks, and hashed as the tool's later
"did a reviewer edit this" check hashes them."""

import fiftyone as fo
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from clearclip.annotations.coco import iter_coco_images
from clearclip.review.fields import BATCH, PRED_FIELD, RUN_FIELD, WRITTEN_HASH_FIELD
from clearclip.review.sync import _sample_values, detections_hash, load_run
from clearclip.run.folder import RunFolder
from folders import write_synthetic_run

VOLATILE = {"_id", "_rand", "created_at", "last_modified_at", "_dataset_id"}


def normalised(document):
    """A raw document without ids, times and random numbers, masks decoded (compression may differ)."""
    import fiftyone.core.utils as fou

    if isinstance(document, dict):
        return {k: (fou.deserialize_numpy_array(v).tolist() if k == "mask" else normalised(v))
                for k, v in document.items() if k not in VOLATILE}
    if isinstance(document, list):
        return [normalised(v) for v in document]
    return document


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("documents"), BATCH + 37)  # a full batch: worker processes


def test_documents_equal_what_fiftyone_writes(synthetic_run):
    dataset_dir, run = synthetic_run
    ours, _ = load_run(run, name="documents-ours")
    reference = fo.Dataset("documents-fiftyone")
    folder = RunFolder(run)
    classes = {c["id"]: c["name"] for c in ours.info["clearclip"]["categories"]}
    samples = []
    for image, annotations in iter_coco_images(folder.annotations_path):
        filepath = str((dataset_dir / image["file_name"]).resolve())
        values = _sample_values(filepath, image, annotations, classes, folder)
        values[PRED_FIELD] = values[RUN_FIELD]
        values[WRITTEN_HASH_FIELD] = detections_hash(values[RUN_FIELD])
        samples.append(fo.Sample(filepath=filepath, **values))
    reference.add_samples(samples)

    assert len(ours) == len(reference) == BATCH + 37
    theirs = {d["filepath"]: normalised(d) for d in reference._sample_collection.find()}
    for document in ours._sample_collection.find():
        assert normalised(document) == theirs[document["filepath"]]
    assert ours.media_type == "image"


def test_loaded_masks_are_the_runs_and_unedited_samples_read_as_unedited(synthetic_run):
    _, run = synthetic_run
    dataset, _ = load_run(run, name="documents-masks")
    by_name = {image["file_name"]: annotations for image, annotations in iter_coco_images(RunFolder(run).annotations_path)}
    for sample in dataset.iter_samples():
        assert sample[WRITTEN_HASH_FIELD] == detections_hash(sample[PRED_FIELD])
        annotations = by_name[sample.file_name]
        assert len(sample[PRED_FIELD].detections) == len(annotations)
        for detection, annotation in zip(sample[PRED_FIELD].detections, annotations):
            x, y, w, h = annotation["bbox"]
            rle = {**annotation["segmentation"], "counts": annotation["segmentation"]["counts"].encode()}
            assert np.array_equal(detection.mask, mask_utils.decode(rle).astype(bool)[y : y + h, x : x + w])
            assert detection.id == sample[RUN_FIELD].detections[detection.run_index].id


@pytest.mark.parametrize("bad", ["category", "file name"])
def test_a_first_load_that_meets_a_bad_entry_stops_in_one_line_and_leaves_no_dataset(synthetic_run, tmp_path, bad,
                                                                                     capsys):
    import json
    import shutil

    from clearclip.cli import main

    run = tmp_path / "run"
    shutil.copytree(synthetic_run[1], run)
    document = json.loads((run / "annotations.json").read_text())
    if bad == "category":  # in the first batch, which a worker process builds
        document["annotations"][0]["category_id"] = 999
        expected = ["annotations.json: annotation", "999"]
    else:  # in the last batch, after the first is in the database
        document["images"][-1]["file_name"] = "../outside.png"
        expected = ["annotations.json", "../outside.png"]
    (run / "annotations.json").write_text(json.dumps(document))
    name = f"documents-bad-{bad.replace(' ', '-')}"

    assert main(["review", str(run), "--no-launch", "--name", name]) == 2
    err = capsys.readouterr().err
    assert all(part in err for part in expected) and len(err.strip().splitlines()) == 1, err
    assert not fo.dataset_exists(name)
