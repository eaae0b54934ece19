"""Exports read back with FiftyOne's importers (YOLO, CVAT) or as plain PNGs (masks): every instance comes back
with its mask, holes, parts, one-pixel-wide lines and single pixels included."""

from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from clearclip.cli import main
from clearclip.review.fields import detection_mask
from clearclip.review.formats import mask_polygons

HEIGHT, WIDTH = 49, 67  # sizes whose relative coordinates do not come out round


def instance(mask, label, score=0.8):
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    y, x, h, w = rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    return fo.Detection(label=label, confidence=score, mask=mask[y : y + h, x : x + w],
                        bounding_box=[x / WIDTH, y / HEIGHT, w / WIDTH, h / HEIGHT])


def shapes():
    ring = np.zeros((HEIGHT, WIDTH), bool)
    ring[5:25, 5:25] = True
    ring[10:18, 11:20] = False  # a hole
    ring[13:15, 14:16] = True  # an island inside the hole: a second part
    parts = np.zeros((HEIGHT, WIDTH), bool)
    parts[30:40, 2:9] = True
    parts[41:49, 20:30] = True  # touches the bottom edge
    line = np.zeros((HEIGHT, WIDTH), bool)
    line[3, 30:60] = True
    line[4:20, 60] = True  # one pixel wide, bent
    dot = np.zeros((HEIGHT, WIDTH), bool)
    dot[44, 50] = True
    blob = np.zeros((HEIGHT, WIDTH), bool)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    blob[(yy - 32) ** 2 + (xx - 50) ** 2 < 60] = True
    return [(ring, "cat"), (parts, "dog"), (line, "cat"), (dot, "dog"), (blob, "sofa")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    Image.fromarray(np.full((HEIGHT, WIDTH, 3), 128, np.uint8)).save(root / "a.png")
    dataset = fo.Dataset("formats-source")
    dataset.info["clearclip"] = {"categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"},
                                                {"id": 3, "name": "sofa"}]}
    dataset.save()
    dataset.add_sample(fo.Sample(filepath=str(root / "a.png"), pseudo_labels=fo.Detections(
        detections=[instance(mask, label) for mask, label in shapes()])))
    return dataset


def test_polygons_fill_exactly_their_mask():
    import cv2

    for mask, _ in shapes():
        filled = np.zeros(mask.shape, np.uint8)
        for polygon in mask_polygons(mask):
            cv2.fillPoly(filled, [polygon.astype(np.int32)], 1)
        assert np.array_equal(filled.astype(bool), mask)


def read_back(dataset_type, out, **kwargs):
    name = f"read-{dataset_type.__name__}"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    return fo.Dataset.from_dir(dataset_dir=str(out), dataset_type=dataset_type, name=name, **kwargs).first()


def ious(polylines):
    """IoU of every original instance with the union of the read-back polygons of its label that overlap it."""
    rendered = [(p.label, p.to_segmentation(frame_size=(WIDTH, HEIGHT), target=1).mask.astype(bool))
                for p in polylines.polylines]
    result = []
    for mask, label in shapes():
        mine = [m for lab, m in rendered if lab == label and (m & mask).sum() * 2 > m.sum()]
        union = np.logical_or.reduce(mine) if mine else np.zeros_like(mask)
        result.append((union & mask).sum() / (union | mask).sum())
    return result, len(rendered)


@pytest.mark.parametrize("format,dataset_type,kwargs", [
    ("yolo", "YOLOv5Dataset", {"label_type": "polylines", "split": "train", "yaml_path": "data.yaml"}),
    ("cvat", "CVATImageDataset", {}),
])
def test_polygon_formats_keep_every_instance(dataset, tmp_path, format, dataset_type, kwargs):
    out = tmp_path / format
    assert main(["export", dataset.name, "--format", format, "--out", str(out)]) == 0
    if "yaml_path" in kwargs:
        kwargs = {**kwargs, "yaml_path": str(out / kwargs["yaml_path"])}
        assert (out / "labels" / "train").is_dir() and (out / "images" / "train").is_dir()
    sample = read_back(getattr(fo.types, dataset_type), out, **kwargs)
    field = "ground_truth" if format == "yolo" else "polylines"
    values, parts = ious(sample[field])
    assert min(values) == 1.0, values  # exact contours: no approximation, so no loss
    assert parts == 7  # ring: outline with its hole, and the island; parts: 2; line, dot, blob: 1 each


def test_masks_format_is_label_maps_and_a_class_list(dataset, tmp_path):
    out = tmp_path / "masks"
    assert main(["export", dataset.name, "--format", "masks", "--out", str(out)]) == 0
    classes = (out / "classes.txt").read_text().split("\n")[:-1]
    assert classes == ["background", "cat", "dog", "sofa"]
    label_map = np.asarray(Image.open(out / "labels" / "a.png"))
    expected = np.zeros((HEIGHT, WIDTH), np.uint8)
    sample = dataset.first()
    for detection in sample.pseudo_labels.detections:
        mask, x, y = detection_mask(detection, WIDTH, HEIGHT)
        expected[y : y + mask.shape[0], x : x + mask.shape[1]][mask] = classes.index(detection.label)
    assert np.array_equal(label_map, expected) and (label_map > 0).sum() > 100


def test_export_refuses_a_folder_that_is_not_empty(dataset, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").touch()
    assert main(["export", dataset.name, "--format", "yolo", "--out", str(tmp_path / "busy")]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def check_det_dataset(data_yaml: Path) -> dict:
    """Ultralytics' documented dataset YAML (docs.ultralytics.com/datasets/segment): ``train`` and ``val``
    required, relative to ``path`` or, without one, to the YAML's folder; ``names`` a dict from 0; a label file
    per image under the ``labels`` twin of each ``images`` folder. (Ultralytics 8.4's own check_det_dataset
    accepts these exports too; it is not installed here, as it replaces FiftyOne's OpenCV build.)"""
    import yaml

    spec = yaml.safe_load(data_yaml.read_text())
    assert "train" in spec and "val" in spec, "'train' and 'val' are required in all data YAMLs"
    assert "path" not in spec  # relative to the YAML: the export can be moved
    assert list(spec["names"]) == list(range(len(spec["names"])))
    checked = {"nc": len(spec["names"]), "names": spec["names"]}
    for split in ("train", "val"):
        folder = (data_yaml.parent / spec[split]).resolve()
        images = sorted(folder.glob("*.png"))
        assert images, f"{split}: no images in {folder}"
        labels = Path(str(folder).replace("/images/", "/labels/"))
        assert all((labels / f"{image.stem}.txt").is_file() for image in images)
        checked[split] = folder
    return checked


def test_yolo_export_is_a_dataset_ultralytics_accepts(tmp_path, monkeypatch):
    """A relative --out gets data.yaml at its root, with train and val (a stable hashed split), as
    Ultralytics' dataset YAML schema requires."""
    images = tmp_path / "images"
    images.mkdir()
    dataset = fo.Dataset("formats-yolo-split")
    dataset.info["clearclip"] = {"categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
                                 "dataset_dir": str(images)}  # the split hashes names in it: the same on every machine
    dataset.save()
    for i in range(12):
        Image.fromarray(np.full((HEIGHT, WIDTH, 3), 10 * i, np.uint8)).save(images / f"img{i:02d}.png")
        ring, label = shapes()[i % 2]
        dataset.add_sample(fo.Sample(filepath=str(images / f"img{i:02d}.png"),
                                     pseudo_labels=fo.Detections(detections=[instance(ring, label)])))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exports").mkdir()
    assert main(["export", dataset.name, "--format", "yolo", "--out", "exports/y", "--val-fraction", "0.3"]) == 0
    out = tmp_path / "exports" / "y"
    assert (out / "data.yaml").is_file() and not (out / "exports").exists()
    train, val = (sorted(p.stem for p in (out / "labels" / split).glob("*.txt")) for split in ("train", "val"))
    assert val and train and sorted(train + val) == [f"img{i:02d}" for i in range(12)]
    checked = check_det_dataset(out / "data.yaml")
    assert checked["nc"] == 2 and checked["names"] == {0: "cat", 1: "dog"}
    assert Path(checked["val"]) == out / "images" / "val" and Path(checked["train"]) == out / "images" / "train"

    again = tmp_path / "again"
    assert main(["export", dataset.name, "--format", "yolo", "--out", str(again), "--val-fraction", "0.3"]) == 0
    assert sorted(p.stem for p in (again / "labels" / "val").glob("*.txt")) == val  # the split is stable
    whole = tmp_path / "whole"
    assert main(["export", dataset.name, "--format", "yolo", "--out", str(whole)]) == 0
    assert Path(check_det_dataset(whole / "data.yaml")["val"]) == whole / "images" / "train"


def test_cvat_carries_confidence_and_groups_the_parts_of_an_instance(dataset, tmp_path):
    import xml.etree.ElementTree as ET

    out = tmp_path / "cvat-attributes"
    assert main(["export", dataset.name, "--format", "cvat", "--out", str(out)]) == 0
    root = ET.parse(out / "labels.xml").getroot()
    assert [a.find("name").text for a in root.iter("attribute") if a.find("name") is not None] == ["confidence"] * 3
    polygons = root.find("image").findall("polygon")
    groups = {}
    for polygon in polygons:
        groups.setdefault(polygon.get("group_id"), []).append(polygon)
    assert sorted(len(g) for g in groups.values()) == [1, 1, 1, 2, 2]  # ring and parts: two polygons each
    for group in groups.values():
        assert len({p.get("label") for p in group}) == 1
        assert all(float(p.find("attribute").text) == 0.8 for p in group)


def test_exports_keep_folders_so_equal_names_never_collide(tmp_path):
    """Two images named x.png in two folders: every folder format keeps both, under their folders."""
    images = tmp_path / "images"
    dataset = fo.Dataset("formats-folders")
    dataset.info["clearclip"] = {"categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    dataset.save()
    for folder, (mask, label) in zip(("a", "b/c"), shapes()[:2]):
        (images / folder).mkdir(parents=True)
        Image.fromarray(np.full((HEIGHT, WIDTH, 3), 50, np.uint8)).save(images / folder / "x.png")
        dataset.add_sample(fo.Sample(filepath=str(images / folder / "x.png"), file_name=f"{folder}/x.png",
                                     pseudo_labels=fo.Detections(detections=[instance(mask, label)])))
    expected = {"yolo": ["images/train/a/x.png", "images/train/b/c/x.png", "labels/train/a/x.txt",
                         "labels/train/b/c/x.txt"],
                "cvat": ["data/a/x.png", "data/b/c/x.png"],
                "masks": ["data/a/x.png", "data/b/c/x.png", "labels/a/x.png", "labels/b/c/x.png"]}
    for format, files in expected.items():
        out = tmp_path / format
        assert main(["export", dataset.name, "--format", format, "--out", str(out)]) == 0
        assert all((out / f).exists() for f in files), format
    assert (tmp_path / "yolo" / "labels/train/a/x.txt").read_text().startswith("0 ")
    assert (tmp_path / "yolo" / "labels/train/b/c/x.txt").read_text().startswith("1 ")
    assert np.asarray(Image.open(tmp_path / "masks" / "labels/b/c/x.png")).max() == 2
    cvat = read_back(fo.types.CVATImageDataset, tmp_path / "cvat")._dataset
    assert sorted(Path(p).relative_to(tmp_path / "cvat" / "data").as_posix() for p in cvat.values("filepath")) == \
        ["a/x.png", "b/c/x.png"]


def test_images_of_one_stem_in_one_folder_get_label_files_of_their_own(tmp_path):
    """x.jpg, x.png and x-png.png in one folder: YOLO and masks name label files by the image's stem, so the
    later images are exported under new names, and each image link finds its own labels where the tools look
    (Ultralytics: labels/<split>/<link stem>.txt)."""
    import os

    folder = tmp_path / "images" / "a"
    folder.mkdir(parents=True)
    classes = ["cat", "dog", "sofa"]
    dataset = fo.Dataset("formats-stems")
    dataset.info["clearclip"] = {"categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]}
    dataset.save()
    label_of = {}
    for name, (mask, _), label in zip(("x.jpg", "x.png", "x-png.png"), shapes(), classes):
        Image.fromarray(np.full((HEIGHT, WIDTH, 3), 50, np.uint8)).save(folder / name)
        dataset.add_sample(fo.Sample(filepath=str(folder / name), file_name=f"a/{name}",
                                     pseudo_labels=fo.Detections(detections=[instance(mask, label)])))
        label_of[str(folder / name)] = label
    yolo, masks = tmp_path / "yolo", tmp_path / "masks"
    assert main(["export", dataset.name, "--format", "yolo", "--out", str(yolo)]) == 0
    assert main(["export", dataset.name, "--format", "masks", "--out", str(masks)]) == 0
    links = sorted((yolo / "images/train/a").iterdir())
    assert [link.name for link in links] == ["x-png-png.png", "x-png.png", "x.jpg"]
    for link in links:
        row = (yolo / "labels/train/a" / f"{link.stem}.txt").read_text()
        assert classes[int(row.split()[0])] == label_of[os.readlink(link)]
    links = sorted((masks / "data/a").iterdir())
    assert len(links) == 3 == len(list((masks / "labels/a").iterdir()))
    for link in links:
        value = np.asarray(Image.open(masks / "labels/a" / f"{link.stem}.png")).max()
        assert classes[value - 1] == label_of[os.readlink(link)]


@pytest.mark.slow
def test_cvat_export_memory_is_flat_in_the_number_of_images(tmp_path):
    """A streamed export: the peak of Python allocations (numpy's included) exporting 2,000 images stays
    within 1.1x of exporting 200 of them. Measured in a child process: tracemalloc counts every thread, and
    this one may hold the Prefect harness's server, whose loop services allocate at any time."""
    import json
    import subprocess
    import sys

    from clearclip.review.sync import load_run
    from folders import write_synthetic_run

    _, run = write_synthetic_run(tmp_path, 2000)
    dataset, _ = load_run(run, name="formats-memory")
    dataset.limit(200).tag_samples("first")
    script = f"""
import json, tracemalloc
from clearclip.cli import main
peaks = {{}}
for count, tags in ((200, ["--tags", "first"]), (2000, [])):
    tracemalloc.start()
    assert main(["export", {dataset.name!r}, "--format", "cvat", "--out", {str(tmp_path)!r} + f"/cvat-{{count}}", *tags]) == 0
    peaks[count] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
print(json.dumps(peaks))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    peaks = {int(k): v for k, v in json.loads(result.stdout.splitlines()[-1]).items()}
    assert (tmp_path / "cvat-2000" / "labels.xml").read_text().count("<image ") == 2000
    assert peaks[2000] <= 1.1 * peaks[200], peaks
