"""Whole-image segmentation against the reference: windows, padding, synonyms, background, tiled reduction."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clearclip import ClearCLIP, Vocabulary
from clearclip.inference.segmentation import TILE_ELEMENTS, LogitAccumulator, category_map, reduce_logits
from clearclip.inference.windows import Padding, Window, center_padding, resized_size, sliding_windows
from reference import reference_segment, reference_text

TEMPLATES = ("a photo of a {}.", "a {} in a scene.")
# small settings so the tiny model (patch 8) sees several windows, odd sizes and padding
SMALL = dict(short_side=30, max_long_side=100, crop=21, stride=12, templates=TEMPLATES)


def random_image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return np.array(Image.fromarray(base).resize((w, h), Image.BILINEAR))


def reference_for(cc, image, classes, threshold=0.0, **settings):
    vocab = Vocabulary.from_strings(classes)
    with torch.no_grad():
        text = reference_text(cc.model, cc.tokenizer, vocab.queries, list(settings.pop("templates")))
    return reference_segment(cc.model, image, text, vocab.query_to_class, cc.mean, cc.std, prob_thd=threshold, **settings)


@pytest.fixture(scope="module")
def cc(tiny_model_name):
    return ClearCLIP.from_pretrained(tiny_model_name, device="cpu")


def test_window_grid_covers_odd_sizes_and_shifts_back():
    for h, w, crop, stride in [(45, 71, 20, 12), (13, 50, 20, 12), (448, 597, 448, 224), (19, 19, 20, 12), (1, 1, 448, 224)]:
        windows = sliding_windows(h, w, crop, stride)
        covered = np.zeros((h, w), int)
        for y1, y2, x1, x2 in windows:
            assert 0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w
            assert y2 - y1 == min(crop, h) and x2 - x1 == min(crop, w)  # shifted back to full crops
            covered[y1:y2, x1:x2] += 1
        assert covered.min() >= 1
    assert sliding_windows(448, 597, 448, 224) == [(0, 448, 0, 448), (0, 448, 149, 597)]


def test_center_padding_puts_the_odd_pixel_right_and_bottom():
    assert center_padding(13, 20, 8) == (2, 2, 1, 2)
    assert center_padding(16, 17, 8) == (3, 4, 0, 0)
    assert center_padding(448, 448, 16) == (0, 0, 0, 0)


def test_resize_rule():
    assert resized_size(375, 500, 448, 2048) == (448, 597)
    assert resized_size(100, 10000, 448, 2048) == (20, 2048)
    assert resized_size(4000, 6000, 448, 2048) == (448, 672)


@pytest.mark.parametrize("size", [(45, 71), (13, 50), (30, 30), (64, 40)])
def test_segment_matches_reference(cc, size):
    image = random_image(*size, seed=size[0])
    classes = ["sky", "grass, lawn", "road", "tree"]
    seg = cc.segment(image, classes, **SMALL)
    labels, scores = reference_for(cc, image, classes, **SMALL)
    assert seg.labels.shape == size and seg.scores.dtype == np.float32
    assert np.abs(seg.scores - scores).max() < 1e-5
    assert (seg.labels == labels).all()
    assert len(np.unique(labels)) > 1  # the comparison is not trivially constant


def test_synonyms_take_the_max_over_their_queries(cc):
    image = random_image(40, 56, seed=3)
    split = cc.segment(image, ["sky", "grass", "lawn", "road"], **SMALL)
    merged = cc.segment(image, ["sky", "grass, lawn", "road"], **SMALL)
    to_merged = np.array([0, 1, 1, 2])
    assert (merged.labels == to_merged[split.labels]).all()
    assert np.allclose(merged.scores, split.scores, atol=1e-6)
    labels, _ = reference_for(cc, image, ["sky", "grass, lawn", "road"], **SMALL)
    assert (merged.labels == labels).all()


def test_background_threshold(cc):
    image = random_image(45, 71, seed=5)
    classes = ["background", "sky", "grass", "road"]
    plain = cc.segment(image, classes, **SMALL)
    threshold = float(np.quantile(plain.scores, 0.5))
    seg = cc.segment(image, classes, background_threshold=threshold, **SMALL)
    low = plain.scores < threshold
    assert low.any() and (~low).any()
    assert (seg.labels[low] == 0).all()
    assert (seg.labels[~low] == plain.labels[~low]).all()
    assert np.array_equal(seg.scores, plain.scores)
    labels, _ = reference_for(cc, image, classes, threshold=threshold, **SMALL)
    clear = np.abs(plain.scores - threshold) > 1e-5  # scores agree to 1e-5; right at the threshold either side is right
    assert clear.mean() > 0.9
    assert (seg.labels[clear] == labels[clear]).all()


def test_accepts_pil_and_gray_and_rgba(cc):
    image = random_image(30, 40)
    from_array = cc.segment(image, ["a", "b"], **SMALL)
    from_pil = cc.segment(Image.fromarray(image), ["a", "b"], **SMALL)
    from_rgba = cc.segment(np.dstack([image, np.full(image.shape[:2], 7, np.uint8)]), ["a", "b"], **SMALL)
    assert np.array_equal(from_array.labels, from_pil.labels) and np.array_equal(from_array.labels, from_rgba.labels)
    assert cc.segment(image[:, :, 0], ["a", "b"], **SMALL).labels.shape == (30, 40)


@pytest.mark.parametrize("spread", [0.02, 0.1])
def test_tiled_reduction_equals_full_resolution(spread):
    torch.manual_seed(0)
    logits = torch.randn(7, 23, 31) * spread  # cosine logits: |l| <= 1, differences of a few hundredths
    query_to_class = torch.tensor([0, 1, 1, 2, 3, 3, 3])
    for size in [(100, 77), (23, 31), (10, 12), (1, 300), (300, 1)]:
        labels, scores = (t.numpy() for t in reduce_logits(logits.permute(1, 2, 0), size, 50.0, query_to_class, 0.3,
                                                           tile_elements=7 * 77 * 3))
        up = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
        probs = (up * 50).softmax(0)
        merged = torch.stack([probs[query_to_class == c].max(0)[0] for c in range(4)])
        ref_scores, ref_labels = merged.max(0)
        ref_labels[ref_scores < 0.3] = 0
        assert np.abs(scores - ref_scores.numpy()).max() < 1e-5
        assert (labels == ref_labels.numpy()).all()


def test_batched_equals_one_by_one_with_mixed_sizes(cc):
    images = [random_image(45, 71, 1), random_image(13, 50, 2), random_image(30, 30, 3), random_image(64, 40, 4)]
    classes = ["sky", "grass, lawn", "road"]
    cc.window_batch_size = 5
    batched = cc.segment_batch(images, classes, **SMALL)
    cc.window_batch_size = 1
    single = [cc.segment(image, classes, **SMALL) for image in images]
    for a, b in zip(batched, single):
        assert np.array_equal(a.labels, b.labels)
        assert np.abs(a.scores - b.scores).max() < 1e-5


@pytest.mark.slow
def test_compiled_matches(cc):
    compiled = ClearCLIP(cc.model, cc.tokenizer, compile=True)
    pixels = torch.randn(2, 3, 32, 48)
    assert (compiled.encode_dense(pixels) - cc.encode_dense(pixels)).abs().max() < 1e-5
    image = random_image(45, 71, seed=11)
    a, b = compiled.segment(image, ["sky", "road", "tree"], **SMALL), cc.segment(image, ["sky", "road", "tree"], **SMALL)
    assert np.array_equal(a.labels, b.labels) and np.abs(a.scores - b.scores).max() < 1e-5


def test_unknown_override_is_named(cc):
    with pytest.raises(TypeError, match="stirde"):
        cc.segment(random_image(30, 30), ["a"], stirde=3)


def test_large_image_tiled_equals_untiled_reference(cc):
    image = random_image(900, 1300, seed=9)
    classes = ["sky", "grass, lawn", "road", "tree", "building", "person"]
    settings = dict(short_side=48, max_long_side=100, crop=32, stride=16, templates=TEMPLATES)
    seg = cc.segment(image, classes, **settings)  # 900 rows in many tiles
    labels, scores, probs = reference_for(cc, image, classes, return_probs=True, **settings)  # one full-size softmax
    assert np.abs(seg.scores - scores).max() < 1e-5
    differ = seg.labels != labels
    assert differ.mean() < 1e-3  # only exact ties can differ: the chosen class is as probable as the best
    chosen = np.take_along_axis(probs, seg.labels[None].astype(np.int64), axis=0)[0]
    assert np.abs(chosen[differ] - scores[differ]).max(initial=0) < 1e-5


def test_window_logits_in_many_bands_equal_one_resize(monkeypatch):
    torch.manual_seed(2)
    patch_logits = torch.randn(3, 4, 5)  # (gh, gw, Q)
    window, pad = Window(y1=7, y2=27, x1=2, x2=31), Padding(left=1, right=2, top=1, bottom=3)  # padded 24 x 32
    monkeypatch.setitem(TILE_ELEMENTS, "cpu", 2 * 32 * 5)  # two rows a band: bands start and end inside the padding
    banded = LogitAccumulator(5, 30, 40, "cpu")
    banded.add(patch_logits, window, pad)
    banded.add(patch_logits * 2, Window(0, 20, 0, 29), pad)
    up = F.interpolate(patch_logits.permute(2, 0, 1)[None], size=(24, 32), mode="bilinear", align_corners=False)[0]
    crop = up[:, pad.top : 24 - pad.bottom, pad.left : 32 - pad.right].permute(1, 2, 0)
    expected = torch.zeros(30, 40, 5)
    count = torch.zeros(30, 40, 1)
    expected[7:27, 2:31] += crop
    expected[0:20, 0:29] += crop * 2
    count[7:27, 2:31] += 1
    count[0:20, 0:29] += 1
    assert torch.equal(banded.count, count)
    assert (banded.sum - expected).abs().max() < 1e-5


def test_segment_in_small_bands_equals_default_bands(cc, monkeypatch):
    image = random_image(45, 71, seed=12)
    classes = ["sky", "grass, lawn", "road"]
    default = cc.segment(image, classes, **SMALL)
    monkeypatch.setitem(TILE_ELEMENTS, "cpu", 3 * 71 * 4 + 5)  # a few rows per band, and not a whole number of rows
    banded = cc.segment(image, classes, **SMALL)
    assert np.array_equal(banded.labels, default.labels)
    assert np.abs(banded.scores - default.scores).max() < 1e-6


def test_per_class_pixel_thresholds():
    labels = torch.tensor([[0, 1, 1, 2, 2]])
    scores = torch.tensor([[0.9, 0.3, 0.7, 0.3, 0.7]])
    ids = torch.tensor([0, 1, 2], dtype=torch.uint8)  # background has no category
    thresholds = torch.tensor([0.5, 0.5, 0.2])  # dog has its own, lower threshold
    assert category_map(labels, scores, ids, thresholds).tolist() == [[0, 0, 1, 2, 2]]
