"""refilter applies the keep rule a fresh run applies, to the same values: at the 6-digit boundary too."""

import json

import numpy as np
import pytest

from clearclip import ClearCLIPError

from clearclip.annotations.regions import extract_regions
from clearclip.io.images import ImageFile
from clearclip.run.finish import finish_maps
from clearclip.run.folder import RunFolder
from clearclip.run.job import LabelJob
from clearclip.run.merge import merge_run
from clearclip.run.refilter import refilter_run

SCORES = (0.4999996, 0.5, 0.5000004)


def one_image_run(root, job: LabelJob, categories, scores) -> RunFolder:
    """A finished run of one image with these maps, written by the run's own finish and merge."""
    config, folder = job.label_config(), RunFolder(root)
    folder.prepare(job.info(config))
    image = ImageFile("boundary.png", 1, 1)
    finish_maps(folder, image, categories, scores, config.vocabulary, config.region_filter, "fp32")
    folder.claim_precision("fp32")
    merge_run(folder, [image], config.vocabulary, job.info(config), {"dataset": str(root)})
    return folder


@pytest.mark.parametrize("min_score", [0.5, 0.4999996, 0.5000004, 0.49999995])
def test_refilter_equals_a_fresh_run_at_the_rounding_boundary(tmp_path, min_score):
    categories = np.array([[1, 0, 1, 0, 1, 0, 2]], np.uint8)  # one-pixel regions, apart
    scores = np.array([[SCORES[0], 0.9, SCORES[1], 0.9, SCORES[2], 0.9, 0.5]], np.float32)
    common = {"pretrained": None, "min_area_fraction": 0.0}
    source = one_image_run(tmp_path / "all", LabelJob(["background", "cat", "dog"], **common), categories, scores)
    refilter_run(source.root, tmp_path / "refiltered", min_score=min_score)

    strict = LabelJob(["background", "cat", "dog"], min_score=min_score, **common)
    fresh = one_image_run(tmp_path / "fresh", strict, categories, scores)
    refiltered = json.loads((tmp_path / "refiltered" / "annotations.json").read_text())
    expected = json.loads(fresh.annotations_path.read_text())
    assert refiltered["annotations"] == expected["annotations"]
    config = strict.label_config()
    kept = extract_regions(categories, scores, config.vocabulary, config.region_filter)
    assert len(refiltered["annotations"]) == len(kept)
    stored = [a["score"] for a in refiltered["annotations"]]
    assert all(score >= min_score for score in stored)  # the rule holds on the values written


@pytest.mark.parametrize("damage", ["cut", "unknown category"])
def test_refilter_of_a_broken_run_is_one_error_and_leaves_no_half_written_out(tmp_path, damage):
    categories = np.array([[1, 0, 2]], np.uint8)
    source = one_image_run(tmp_path / "all", LabelJob(["background", "cat", "dog"], pretrained=None,
                                                      min_area_fraction=0.0), categories,
                           np.full(categories.shape, 0.7, np.float32))
    text = source.annotations_path.read_text()
    if damage == "cut":
        source.annotations_path.write_text(text[: len(text) - 40])
    else:
        source.annotations_path.write_text(text.replace('"category_id": 2', '"category_id": 999'))
    out = tmp_path / "refiltered"
    message = "is not valid clearclip COCO" if damage == "cut" else r"unknown category ids \[999\]"
    with pytest.raises(ClearCLIPError, match=message):
        refilter_run(source.root, out, min_score=0.5)
    assert not out.exists()
    source.annotations_path.write_text(text)  # fixed: the same command works
    refilter_run(source.root, out, min_score=0.5)
    assert json.loads((out / "annotations.json").read_text())["annotations"]
