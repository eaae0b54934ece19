"""PAMR against a plain re-implementation, and refined segmentation in bands and query chunks."""

import numpy as np
import pytest
import torch

from clearclip.inference.refine import affinity, propagate
from pamr_reference import reference_pamr


@pytest.mark.parametrize("size,dilations,iterations", [((37, 53), (8, 16), 10), ((20, 9), (1, 2), 3), ((5, 70), (4,), 2)])
def test_pamr_equals_the_reference_borders_included(size, dilations, iterations):
    torch.manual_seed(0)
    guide = torch.randn(3, *size)
    guide[:, : size[0] // 2] = guide[:, : size[0] // 2].round()  # flat patches: a standard deviation of 0
    logits = torch.randn(6, *size) * 0.1
    ours = propagate(logits, affinity(guide, dilations), dilations, iterations)
    ref = reference_pamr(guide, logits, iterations, dilations)
    assert (ours - ref).abs().max() < 1e-5
    assert (ours - logits).abs().max() > 1e-3  # it did refine


def reference_refined(logits, guide, size, query_to_class, classes, iterations, dilations, threshold):
    """Resize logits and guide to full size, PAMR, then the paper's softmax over queries and synonym max."""
    full = torch.nn.functional.interpolate(logits.permute(2, 0, 1)[None], size=size, mode="bilinear",
                                           align_corners=False)[0]
    image = torch.nn.functional.interpolate(guide[None], size=size, mode="bilinear", align_corners=False)[0]
    probs = (reference_pamr(image, full, iterations, dilations) * 50).softmax(0)
    merged = torch.stack([probs[query_to_class == c].max(0)[0] for c in range(classes)])
    scores, labels = merged.max(0)
    labels[scores < threshold] = 0
    return labels, scores


@pytest.mark.parametrize("band_elements", [None, 2000, 300])
def test_refined_reduction_equals_the_whole_image_in_bands_and_chunks(band_elements):
    from clearclip.inference.segmentation import reduce_logits_refined
    from clearclip.options import SegmentSettings

    torch.manual_seed(1)
    logits = torch.randn(9, 13, 7) * 0.05  # (h, w, queries) at the working size
    guide = torch.randn(3, 9, 13)
    query_to_class = torch.tensor([0, 1, 1, 2, 3, 3, 3])
    settings = SegmentSettings(refine="pamr", pamr_iterations=3, pamr_dilations=(1, 2), background_threshold=0.3)
    size = (41, 29)  # with 300 floats: bands of 6 rows with halos of 6 on their inner sides, one query at a time
    labels, scores = reduce_logits_refined(logits, guide, size, settings, query_to_class, band_elements)
    ref_labels, ref_scores = reference_refined(logits, guide, size, query_to_class, 4, 3, (1, 2), 0.3)
    assert (scores - ref_scores).abs().max() < 1e-5
    close = (ref_scores - 0.3).abs() < 1e-5  # a pixel on the threshold may go either way
    assert (labels == ref_labels)[~close].all()


def test_segment_with_pamr(tiny_model_name):
    from clearclip import ClearCLIP

    cc = ClearCLIP.from_pretrained(tiny_model_name, device="cpu")
    image = (np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)
    small = dict(short_side=32, crop=32, stride=16)
    plain = cc.segment(image, ["sky", "grass", "road"], **small)
    refined = cc.segment(image, ["sky", "grass", "road"], refine="pamr", pamr_iterations=2, pamr_dilations=(1, 2), **small)
    assert refined.labels.shape == (30, 40) and not np.array_equal(refined.scores, plain.scores)
