"""`clearclip label` on a hostile folder: COCO validity, masks vs label maps, thresholds, failures."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from clearclip.cli import main
from clearclip import ClearCLIP, Vocabulary
from clearclip.io.images import load_image, scan_images
from folders import write_hostile_folder

CLASSES = ["background", "sky, air", "grass", "road", "tree"]
SMALL = ["--short-side", "32", "--crop", "32", "--stride", "16", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    return root, write_hostile_folder(root)


@pytest.fixture(scope="module")
def labeled(hostile, tiny_model_name, tmp_path_factory):
    root, expected = hostile
    out = tmp_path_factory.mktemp("run")
    classes = out.parent / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    per_class = out.parent / "per_class.yaml"
    per_class.write_text("road:\n  min_area: 120\n")
    code = main(["label", str(root), "--out", str(out), "--classes-file", str(classes), "--model", tiny_model_name,
                 "--min-area", "4", "--min-score", "0.3", "--pixel-threshold", "0.15", "--class-thresholds", str(per_class),
                 "--workers", "1", *SMALL])
    return out, code


def test_images_are_found_recursively_in_any_case(hostile):
    root, expected = hostile
    listing = scan_images(root)
    assert listing.names == sorted(expected["readable"] + list(expected["broken"]))
    assert listing.problems == []


def test_missing_dataset_folder_is_a_clear_error(tmp_path):
    from clearclip import ClearCLIPError

    with pytest.raises(ClearCLIPError, match="does not exist or is not a folder"):
        scan_images(tmp_path / "nope")


def test_hostile_images_decode_upright_rgb(hostile):
    root, expected = hostile
    for name in expected["readable"]:
        image = load_image(root / name)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
    assert load_image(root / "exif_rotated.jpg").shape[:2] == (56, 40)
    gray16 = load_image(root / "gray16.png")
    assert gray16[0, 0, 0] == 0 and gray16[-1, -1, 0] == 255


def test_run_succeeds_and_reports_broken_files(labeled, hostile, capsys):
    out, code = labeled
    root, expected = hostile
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    failures = {f["file"]: f["error"] for f in run["failures"]}
    assert set(failures) == set(expected["broken"])
    for name, word in expected["broken"].items():
        assert word in failures[name], failures[name]
    assert run["images_labeled"] == len(expected["readable"])
    assert "notes.txt" not in json.dumps(run)


def test_annotations_load_in_pycocotools_and_match_label_maps(labeled, hostile):
    out, _ = labeled
    root, expected = hostile
    coco = COCO(str(out / "annotations.json"))
    data = coco.dataset
    assert sorted(i["file_name"] for i in data["images"]) == expected["readable"]
    assert [c["name"] for c in data["categories"]] == ["sky", "grass", "road", "tree"]
    assert [c["id"] for c in data["categories"]] == [1, 2, 3, 4]
    assert data["info"]["variant"] == "clearclip" and data["info"]["vocabulary"] == CLASSES
    ids = [a["id"] for a in data["annotations"]]
    assert len(ids) == len(set(ids)) and len(ids) > 10
    assert any(a["category_id"] == 3 for a in data["annotations"])
    for image in data["images"]:
        if image["file_name"] in expected["sizes"]:
            assert (image["width"], image["height"]) == expected["sizes"][image["file_name"]]
        label_map = np.asarray(Image.open(out / "labels" / (image["file_name"].rsplit(".", 1)[0] + ".png")))
        assert label_map.shape == (image["height"], image["width"])
        covered = np.zeros(label_map.shape, bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
            assert isinstance(ann["segmentation"]["counts"], str)
            mask = coco.annToMask(ann).astype(bool)
            assert mask.any() and (label_map[mask] == ann["category_id"]).all()
            assert not (covered & mask).any()
            covered |= mask
            assert ann["area"] == int(mask.sum()) == int(mask_utils.area(ann["segmentation"]))
            assert np.allclose(ann["bbox"], mask_utils.toBbox(ann["segmentation"]))
            assert ann["iscrowd"] == 0 and 0.3 <= ann["score"] <= 1
            assert ann["area"] >= (120 if ann["category_id"] == 3 else 4)


def test_pixel_threshold_unlabels_exactly_the_pixels_below_it(hostile, tiny_model_name, tmp_path):
    root, _ = hostile
    cc = ClearCLIP.from_pretrained(tiny_model_name, device="cpu")
    seg = cc.segment(load_image(root / "plain.jpg"), Vocabulary.from_strings(CLASSES), short_side=32, crop=32, stride=16)
    threshold = float(np.median(seg.scores))
    assert main(["label", str(root), "--out", str(tmp_path), "--model", tiny_model_name, "--workers", "0",
                 *[a for c in CLASSES for a in ("--class", c)], "--pixel-threshold", str(threshold), *SMALL]) == 0
    label_map = np.asarray(Image.open(tmp_path / "labels" / "plain.png"))
    # category id = class index with a background class; 0 below the threshold
    expected = np.where(seg.scores >= np.float32(threshold), seg.labels, 0)
    assert np.array_equal(label_map, expected)
    assert 0 < (label_map == 0).mean() < 1


def test_semantic_mode_gives_one_annotation_per_class_per_image(hostile, tiny_model_name, tmp_path):
    root, _ = hostile
    assert main(["label", str(root), "--out", str(tmp_path), "--model", tiny_model_name, "--instances", "semantic",
                 "--workers", "0", *[a for c in CLASSES for a in ("--class", c)], *SMALL]) == 0
    data = json.loads((tmp_path / "annotations.json").read_text())
    pairs = [(a["image_id"], a["category_id"]) for a in data["annotations"]]
    assert len(pairs) == len(set(pairs)) > 0


def test_rerun_with_other_settings_is_refused(labeled, hostile, tiny_model_name, capsys):
    out, _ = labeled
    root, _ = hostile
    code = main(["label", str(root), "--out", str(out), "--model", tiny_model_name, "--class", "cat", *SMALL])
    assert code == 2
    assert "other settings" in capsys.readouterr().err


def test_background_threshold_needs_a_background_class(hostile, tiny_model_name, tmp_path, capsys):
    root, _ = hostile
    code = main(["label", str(root), "--out", str(tmp_path), "--model", tiny_model_name, "--class", "cat",
                 "--class", "dog", "--background-threshold", "0.5", *SMALL])
    assert code == 2 and "background" in capsys.readouterr().err


def test_batch_size_does_not_change_the_annotations(tiny_model_name, tmp_path):
    from folders import write_plain_folder

    root = tmp_path / "data"
    write_plain_folder(root, 5, size=(40, 52))
    outputs = []
    for batch, workers in [("1", "0"), ("3", "1")]:
        out = tmp_path / f"b{batch}"
        assert main(["label", str(root), "--out", str(out), "--model", tiny_model_name, "--batch-size", batch,
                     "--workers", workers, "--class", "sky", "--class", "grass", "--class", "road", *SMALL]) == 0
        outputs.append((out / "annotations.json").read_bytes())
    assert outputs[0] == outputs[1]


def test_a_pixel_budget_of_one_image_gives_the_same_run(tiny_model_name, tmp_path, monkeypatch):
    """Decoders wait on the shared budget (here: room for one image at a time, so the model's batches are
    cut short too); the output is that of an unconstrained run, a broken file included."""
    from folders import write_plain_folder
    import clearclip.run.pipeline as pipeline

    root = tmp_path / "data"
    write_plain_folder(root, 6, size=(40, 52))
    (root / "broken.png").write_bytes(b"not a picture")
    outputs = []
    for budget in (pipeline.DEFAULT_DECODE_BUDGET, 1):
        monkeypatch.setattr(pipeline, "DEFAULT_DECODE_BUDGET", budget)
        out = tmp_path / f"budget{budget}"
        assert main(["label", str(root), "--out", str(out), "--model", tiny_model_name, "--batch-size", "3",
                     "--workers", "2", "--max-pixels", "3000", "--class", "sky", "--class", "grass", *SMALL]) == 0
        outputs.append((out / "annotations.json").read_bytes())
        assert json.loads((out / "run.json").read_text())["images_labeled"] == 6
    assert outputs[0] == outputs[1]


def test_files_sharing_a_label_map_name_are_reported(tiny_model_name, tmp_path):
    from folders import smooth_image

    root = tmp_path / "data"
    root.mkdir()
    for name in ("a.jpg", "a.png", "b.png"):
        Image.fromarray(smooth_image(30, 40, 0)).save(root / name)
    out = tmp_path / "run"
    assert main(["label", str(root), "--out", str(out), "--model", tiny_model_name, "--workers", "0",
                 "--class", "sky", "--class", "grass", *SMALL]) == 0
    run = json.loads((out / "run.json").read_text())
    assert [f["file"] for f in run["failures"]] == ["a.png"] and "rename" in run["failures"][0]["error"]
    assert run["images_labeled"] == 2
