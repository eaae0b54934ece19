"""Regions and COCO encoding: connectivity, filter boundaries, per-class thresholds, in-box RLE, the writer."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from scipy import ndimage

from clearclip import ClearCLIPError, Vocabulary
from clearclip.annotations.coco import CocoWriter
from clearclip.annotations.record import Annotation
from clearclip.annotations.regions import extract_regions
from clearclip.annotations.rle import decode_rles_in_boxes, encode_rle_in_box
from clearclip.annotations.thresholds import RegionFilter, Thresholds, load_class_thresholds
from rle_reference import encode_rle

VOCABULARY = Vocabulary.from_strings(["background", "cat", "dog"])


def regions_of(categories, scores=None, **thresholds):
    categories = np.asarray(categories, np.uint8)
    scores = np.full(categories.shape, 0.8, np.float32) if scores is None else scores
    return extract_regions(categories, scores, VOCABULARY,
                           RegionFilter(Thresholds(**{"min_area_fraction": 0.0, **thresholds})))


def test_diagonal_pixels_are_one_region_and_classes_never_merge():
    categories = [[1, 0, 0],
                  [0, 1, 2],
                  [0, 2, 1]]
    regions = regions_of(categories)
    assert [(r.category_id, r.area, r.bbox) for r in regions] == [(1, 3, (0, 0, 3, 3)), (2, 2, (1, 1, 2, 2))]
    assert regions[0].mask_in_box().tolist() == [[True, False, False], [False, True, False], [False, False, True]]


def test_filter_boundaries_keep_what_is_exactly_at_the_threshold():
    categories = np.zeros((4, 10), np.uint8)
    categories[0, :4] = 1  # area 4, score 0.5
    categories[2, :3] = 1  # area 3, score 0.5
    categories[3, 6:10] = 2  # area 4, score 0.25
    scores = np.where(categories == 2, 0.25, 0.5).astype(np.float32)
    kept = regions_of(categories, scores, min_area=4, min_score=0.5)
    assert [(r.category_id, r.area) for r in kept] == [(1, 4)]
    assert [r.area for r in regions_of(categories, scores, min_area=3, min_score=0.25)] == [4, 3, 4]
    # min_area_fraction: 4 of 40 pixels is exactly 0.1
    assert [r.area for r in regions_of(categories, scores, min_area_fraction=0.1)] == [4, 4]


def reference_regions(categories, scores, region_filter):
    """The straightforward algorithm: one full-image mask and scipy labeling per class."""
    result = []
    for category in np.unique(categories):
        if category == 0:
            continue
        thresholds = region_filter.for_class(VOCABULARY.names[category])
        components, count = ndimage.label(categories == category, structure=np.ones((3, 3)))
        for index in range(1, count + 1):
            mask = components == index
            area, score = int(mask.sum()), float(scores[mask].astype(np.float64).sum() / mask.sum())
            if area >= thresholds.min_pixels(categories.size) and round(score, 6) >= thresholds.min_score:
                rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
                bbox = [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
                result.append((int(category), encode_rle(mask), area, bbox, round(score, 6)))
    return result


@pytest.mark.parametrize("seed,shape,block", [(seed, None, 6) for seed in range(12)]
                         + [(20, (1, 37), 6), (21, (41, 1), 6), (22, (1, 1), 6), (26, (7, 9), 100),
                            (24, (300, 400), 60), (25, (731, 1031), 150)])  # one region, whole image; long runs
def test_regions_equal_the_full_mask_algorithm(seed, shape, block):
    rng = np.random.default_rng(seed)
    h, w = shape or rng.integers(5, 60, 2)
    coarse = rng.integers(0, 3, (-(-h // block), -(-w // block)))
    categories = np.kron(coarse, np.ones((block, block), np.uint8))[:h, :w]
    if block < 100:
        categories[rng.random((h, w)) < 0.1] = rng.integers(0, 3)
    scores = rng.random((h, w)).astype(np.float32)
    region_filter = RegionFilter(Thresholds(min_area=2, min_score=0.3, min_area_fraction=0.0))
    lines = [a.line() for a in extract_regions(categories, scores, VOCABULARY, region_filter)]
    expected = [json.dumps({"category_id": category, "segmentation": rle, "area": area, "bbox": bbox, "iscrowd": 0,
                            "score": score}) for category, rle, area, bbox, score in reference_regions(
                                categories, scores, region_filter)]
    assert lines == expected  # byte for byte what json writes
    records = extract_regions(categories, scores, VOCABULARY, region_filter)
    assert [Annotation.from_dict(r.to_dict()) for r in records] == records
    assert [json.loads(r.line()) for r in records] == [r.to_dict() for r in records]


def test_a_drawn_annotation_has_no_score_and_a_bad_one_names_its_problem():
    drawn = Annotation(1, (0, 0, 1, 1), 1, None, {"size": [2, 2], "counts": "01"})
    assert json.loads(drawn.line()) == drawn.to_dict() and "score" not in drawn.to_dict()
    with pytest.raises(ValueError, match="segmentation is not compressed RLE"):
        Annotation.from_dict({**drawn.to_dict(), "segmentation": [[0, 0, 1, 0, 1, 1]]})
    with pytest.raises(ValueError, match="not a clearclip annotation .*KeyError"):
        Annotation.from_dict({"segmentation": drawn.rle, "category_id": 1})


def test_semantic_mode_is_one_region_per_class():
    categories = np.array([[1, 0, 1], [2, 0, 0]], np.uint8)
    regions = extract_regions(categories, np.ones(categories.shape, np.float32), VOCABULARY,
                              RegionFilter(Thresholds(min_area_fraction=0.0), instances="semantic"))
    assert [(r.category_id, r.area, r.bbox) for r in regions] == [(1, 2, (0, 0, 3, 1)), (2, 1, (0, 1, 1, 1))]


@pytest.mark.parametrize("text,message", [
    ("road: {min_score: high}", "'road': min_score must be a number from 0 to 1, got 'high'"),
    ("road: {min_area: -3}", "'road': min_area must be a whole number of pixels"),
    ("road: {pixel_threshold: 5}", "'road': pixel_threshold must be a number from 0 to 1, got 5"),
    ("background: {min_score: 0.2}", "the background class is never labeled"),
    ("road: {colour: red}", "must be a mapping with keys from"),
    ("road: [1, 2", "cannot read class thresholds"),
])
def test_class_thresholds_are_validated(tmp_path, text, message):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    vocabulary = Vocabulary.from_strings(["background", "road"])
    with pytest.raises(ClearCLIPError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_class_thresholds(path, Thresholds(), vocabulary)


def test_rle_in_box_equals_pycocotools_on_the_full_image():
    rng = np.random.default_rng(0)
    for trial in range(300):
        height, width = rng.integers(1, 30, 2)
        y, x = rng.integers(0, height), rng.integers(0, width)
        h, w = rng.integers(1, height - y + 1), rng.integers(1, width - x + 1)
        if trial % 4 == 0:
            y, h = 0, height  # boxes of whole columns: runs continue across columns
        mask = rng.random((h, w)) < 0.5
        full = np.zeros((height, width), bool)
        full[y : y + h, x : x + w] = mask
        expected = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))
        assert encode_rle_in_box(mask, x, y, height, width) == {"size": expected["size"],
                                                                "counts": expected["counts"].decode()}


def test_masks_decoded_in_their_boxes_equal_pycocotools():
    """Many masks decoded at once, each for its box only, against pycocotools' full-image decode: boxes that span
    whole columns (runs wrap into the next column), masks ending on the last pixel, holes, one pixel, and long
    runs whose counts need several characters and negative differences."""
    rng = np.random.default_rng(3)
    rles, boxes, expected = [], [], []
    for trial in range(400):
        height, width = (int(v) for v in rng.integers(1, 60, 2)) if trial % 10 else (375, 500)
        mask = rng.random((height, width)) < rng.random()
        if trial % 4 == 0:
            mask[:] = True
            mask[height // 3 : height // 2, width // 3 : width // 2] = False
        if trial % 3 == 0:
            mask[:, : width // 2] = False
        if not mask.any():
            mask[-1, -1] = True
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        x, y, w, h = (int(v) for v in mask_utils.toBbox(rle))
        expected.append(mask_utils.decode(rle).astype(bool)[y : y + h, x : x + w])
        rles.append({"size": rle["size"], "counts": rle["counts"].decode("ascii")})
        boxes.append((x, y, w, h))
    decoded = decode_rles_in_boxes(rles, boxes)
    assert len(decoded) == len(expected)
    for got, want in zip(decoded, expected):
        assert got.shape == want.shape and np.array_equal(got, want)


def test_coco_writer_streams_a_valid_document(tmp_path):
    path = tmp_path / "out.json"
    with CocoWriter(path, {"run": 1}, [{"id": 1, "name": "cat"}]) as coco:
        coco.add_image("a.png", 3, 2, ['{"category_id": 1, "area": 2}', '{"category_id": 1, "area": 1}'])
        coco.add_image("b.png", 3, 2, [])
        coco.add_image("c.png", 3, 2, ['{"category_id": 1, "area": 5}'], image_id=9)
    document = json.loads(path.read_text())
    assert [i["id"] for i in document["images"]] == [1, 2, 9]
    assert [(a["id"], a["image_id"], a["area"]) for a in document["annotations"]] == [(1, 1, 2), (2, 1, 1), (3, 9, 5)]
    assert document["categories"] == [{"id": 1, "name": "cat"}] and document["info"] == {"run": 1}
    with pytest.raises(ValueError), CocoWriter(tmp_path / "broken.json", {}, []) as coco:
        coco.add_image("a.png", 1, 1, [])
        raise ValueError("stopped half way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


@pytest.mark.parametrize("dtype,high", [(np.uint8, 255), (np.uint16, 700)])
def test_label_png_reads_back_exactly(tmp_path, dtype, high):
    from PIL import Image

    from clearclip.io.label_png import save_label_png

    rng = np.random.default_rng(0)
    labels = np.kron(rng.integers(0, high, (9, 13)), np.ones((7, 5), np.int64))[:61, :]
    labels[0, 0] = high
    save_label_png(labels, tmp_path / "map.png")
    read = np.asarray(Image.open(tmp_path / "map.png"))
    assert read.dtype == dtype and np.array_equal(read, labels)
