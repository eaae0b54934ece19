"""Text embeddings: truncated context equals open_clip's full context; caching in memory and on disk."""

import copy

import open_clip
import pytest
import torch

from clearclip import ClearCLIP
from clearclip.inference.text import DEFAULT_TEMPLATES, TextEmbeddingCache, encode_names
from reference import reference_text

NAMES = ["cat", "a very long class name with many words in it", "traffic light", "background"]


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.get_tokenizer("ViT-B-16")


def test_default_templates_are_the_80_openai_ones():
    assert len(DEFAULT_TEMPLATES) == 80
    assert DEFAULT_TEMPLATES[0] == "a bad photo of a {}."


def test_truncated_encoding_equals_full_context(tiny_model, tokenizer):
    ours = encode_names(tiny_model, tokenizer, NAMES, DEFAULT_TEMPLATES[:10])
    with torch.no_grad():
        ref = reference_text(tiny_model, tokenizer, NAMES, DEFAULT_TEMPLATES[:10])
    assert (ours - ref).abs().max() < 1e-5
    assert torch.allclose(ours.norm(dim=-1), torch.ones(()), atol=1e-6)


def test_custom_templates_strings_and_callables(tiny_model, tokenizer):
    cc = ClearCLIP(tiny_model, tokenizer)
    by_string = cc.encode_text(["dog"], templates=["a photo of a {}.", "{} in the wild"])
    by_callable = cc.encode_text(["dog"], templates=[lambda n: f"a photo of a {n}.", lambda n: f"{n} in the wild"])
    assert torch.allclose(by_string, by_callable)
    default = cc.encode_text(["dog"])
    assert (default - by_string).abs().max() > 1e-4


def test_cache_persists_on_disk_and_is_keyed_by_weights(tiny_model, tokenizer, tmp_path):
    first = ClearCLIP(tiny_model, tokenizer, weights_id="tiny-weights", cache_dir=tmp_path)
    expected = first.encode_text(NAMES, DEFAULT_TEMPLATES[:5])
    assert len(list(tmp_path.rglob("*.pt"))) == len(NAMES)

    broken = copy.deepcopy(tiny_model)
    broken.token_embedding.weight.data.fill_(float("nan"))  # any encoding now gives NaN
    cached = ClearCLIP(broken, tokenizer, weights_id="tiny-weights", cache_dir=tmp_path)
    assert torch.equal(cached.encode_text(NAMES, DEFAULT_TEMPLATES[:5]), expected)

    other_weights = ClearCLIP(broken, tokenizer, weights_id="other-weights", cache_dir=tmp_path)
    assert torch.isnan(other_weights.encode_text(["cat"], DEFAULT_TEMPLATES[:5])).all()
    other_templates = cached.encode_text(["cat"], DEFAULT_TEMPLATES[:6])
    assert torch.isnan(other_templates).all()


def test_random_weights_are_never_cached_on_disk(tiny_model, tokenizer, tmp_path):
    cache = TextEmbeddingCache(None, tmp_path)
    calls = []
    encode = lambda names: calls.append(list(names)) or torch.ones(len(names), 4)  # noqa: E731
    cache.embeddings(["a", "b", "a"], ["{}"], encode)
    cache.embeddings(["b", "c"], ["{}"], encode)
    assert calls == [["a", "b"], ["c"]]
    assert not list(tmp_path.rglob("*.pt"))


def test_a_corrupt_cache_entry_is_recomputed(tiny_model, tokenizer, tmp_path):
    cc = ClearCLIP(tiny_model, tokenizer, weights_id="tiny-weights", cache_dir=tmp_path)
    expected = cc.encode_text(["cat"], DEFAULT_TEMPLATES[:3])
    (entry,) = tmp_path.rglob("*.pt")
    entry.write_bytes(b"\x80\x04 not a pickle at all")
    again = ClearCLIP(tiny_model, tokenizer, weights_id="tiny-weights", cache_dir=tmp_path)
    assert torch.equal(again.encode_text(["cat"], DEFAULT_TEMPLATES[:3]), expected)
    assert torch.load(entry, weights_only=True).shape == expected[0].shape  # rewritten


def test_names_longer_than_the_context_are_warned_about_and_collisions_refused(tiny_model, tokenizer):
    import warnings

    from clearclip import ClearCLIPError, Vocabulary
    from clearclip.inference.text import ClassNameWarning

    cc = ClearCLIP(tiny_model, tokenizer)
    image = torch.zeros(16, 16, 3, dtype=torch.uint8).numpy()
    long = "very " * 80
    with pytest.warns(ClassNameWarning, match="do not fit the text context of 77 tokens"):
        cc.segment(image, ["cat", long + "dog"], short_side=16, crop=16, stride=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClassNameWarning)
        with pytest.raises(ClearCLIPError, match="are the same once cut to the text context"):
            cc.segment(image, Vocabulary.from_strings([long + "cat", long + "dog"]), short_side=16, crop=16, stride=16)
