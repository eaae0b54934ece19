"""ClearCLIP as a FiftyOne model: apply_model stores what `clearclip label` writes for the same images."""

import json

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from clearclip.cli import main
from clearclip.review.model import ClearCLIPModel, label_samples
from folders import write_plain_folder

CLASSES = ["background", "sky", "grass, lawn", "road"]
OPTIONS = dict(device="cpu", short_side=48, crop=32, stride=16, min_area=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("fo-model-data")
    write_plain_folder(root, 5, size=(48, 64))
    return root


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory, tiny_model_name):
    out = tmp_path_factory.mktemp("fo-model-run")
    assert main(["label", str(folder), "--out", str(out), "--model", tiny_model_name, "--quiet", "--workers", "0",
                 "--device", "cpu", "--short-side", "48", "--crop", "32", "--stride", "16", "--min-area", "3",
                 *[a for c in CLASSES for a in ("--class", c)]]) == 0
    return out


def dataset_of(folder, name):
    dataset = fo.Dataset(name)
    dataset.add_samples([fo.Sample(filepath=str(p)) for p in sorted(folder.rglob("*.png"))])
    return dataset


def test_apply_model_stores_what_label_writes(folder, run, tiny_model_name):
    dataset = dataset_of(folder, "fo-model-apply")
    model = ClearCLIPModel(CLASSES, model=tiny_model_name, **OPTIONS)
    label_samples(dataset, model, "clearclip", batch_size=2, num_workers=1)
    document = json.loads((run / "annotations.json").read_text())
    by_file = {i["file_name"]: i for i in document["images"]}
    names = {c["id"]: c["name"] for c in document["categories"]}
    assert dataset.mask_targets["clearclip_segmentation"] == {0: "background", 1: "sky", 2: "grass", 3: "road"}
    compared = 0
    for sample in dataset:
        name = str(sample.filepath).split(str(folder) + "/")[1]
        image = by_file[name]
        label_map = np.asarray(Image.open(run / "labels" / name))
        assert np.array_equal(sample.clearclip_segmentation.mask, label_map)
        annotations = [a for a in document["annotations"] if a["image_id"] == image["id"]]
        detections = sample.clearclip_detections.detections
        assert len(detections) == len(annotations)
        for detection, annotation in zip(detections, annotations):
            x, y, w, h = annotation["bbox"]
            W, H = image["width"], image["height"]
            assert detection.label == names[annotation["category_id"]]
            assert detection.confidence == annotation["score"]
            assert detection.bounding_box == pytest.approx([x / W, y / H, w / W, h / H])
            assert np.array_equal(detection.mask, mask_utils.decode(annotation["segmentation"]).astype(bool)[y:y + h, x:x + w])
            compared += 1
    assert compared > 5


def test_confidence_thresh_and_no_instances(folder, run, tiny_model_name):
    document = json.loads((run / "annotations.json").read_text())
    scores = sorted(a["score"] for a in document["annotations"])
    threshold = scores[len(scores) // 2]
    dataset = dataset_of(folder, "fo-model-thresh")
    dataset.apply_model(ClearCLIPModel(CLASSES, model=tiny_model_name, **OPTIONS), label_field="clearclip",
                        confidence_thresh=threshold)
    kept = [c for c in dataset.values("clearclip_detections.detections.confidence", unwind=True)]
    assert min(kept) >= threshold and len(kept) == sum(s >= threshold for s in scores)

    bare = dataset_of(folder, "fo-model-bare")
    bare.apply_model(ClearCLIPModel(CLASSES, model=tiny_model_name, instances=None, **OPTIONS), label_field="cc")
    assert bare.has_sample_field("cc_segmentation") and not bare.has_sample_field("cc_detections")


def test_apply_model_with_workers_skips_a_missing_or_broken_image(folder, tmp_path, tiny_model_name):
    """An image that fails to load in a data-loader worker fails that sample alone: its error crosses the
    process boundary intact and the other samples of its batch are labeled."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    dataset = dataset_of(folder, "fo-model-broken")
    dataset.add_samples([fo.Sample(filepath=str(tmp_path / "missing.png")), fo.Sample(filepath=str(broken))])
    label_samples(dataset, ClearCLIPModel(CLASSES, model=tiny_model_name, **OPTIONS), "clearclip", batch_size=2,
                  num_workers=2)
    labeled = {sample.filepath: sample.clearclip_segmentation is not None for sample in dataset}
    assert not labeled[str(tmp_path / "missing.png")] and not labeled[str(broken)]
    assert sum(labeled.values()) == 5
