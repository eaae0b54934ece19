"""encode_dense against the plain re-implementation, per decomposition, at square and non-square sizes."""

import pytest
import torch
from torch import nn

from clearclip import ClearCLIP, ClearCLIPError, Decomposition, VARIANTS
from clearclip.options import ATTENTIONS
from reference import reference_dense


@pytest.fixture(scope="module")
def pixels():
    torch.manual_seed(1)
    return {size: torch.randn(2, 3, *size) for size in [(32, 32), (48, 48), (40, 64), (24, 56)]}


@pytest.mark.parametrize("size", [(32, 32), (48, 48), (40, 64), (24, 56)])
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("residual,ffn", [(False, False), (True, False), (True, True), (False, True)])
def test_encode_dense_matches_reference(tiny_model, pixels, size, attention, residual, ffn):
    cc = ClearCLIP(tiny_model, None, variant=Decomposition(attention, residual, ffn))
    ours = cc.encode_dense(pixels[size])
    with torch.no_grad():
        ref = reference_dense(tiny_model, pixels[size], attention, residual, ffn)
    assert ours.shape == (2, size[0] // 8, size[1] // 8, 32)
    assert (ours - ref).abs().max() < 1e-4
    assert torch.allclose(ours.norm(dim=-1), torch.ones(()), atol=1e-5)


@pytest.mark.parametrize("variant,definition", [
    ("clearclip", ("qq", False, False)),  # the paper: q-q attention, no residual, no FFN in the last block
    ("maskclip", ("identity", False, False)),
    ("sclip", ("qq+kk", True, False)),
])
def test_presets_compute_their_methods(tiny_model, pixels, variant, definition):
    ours = ClearCLIP(tiny_model, None, variant=variant).encode_dense(pixels[(40, 64)])
    with torch.no_grad():
        ref = reference_dense(tiny_model, pixels[(40, 64)], *definition)
    assert (ours - ref).abs().max() < 1e-4


def test_cli_variant_names_are_the_presets():
    from clearclip.options import VARIANT_NAMES

    assert VARIANT_NAMES == tuple(VARIANTS)


def test_presets_give_different_features(tiny_model, pixels):
    outs = {name: ClearCLIP(tiny_model, None, variant=name).encode_dense(pixels[(48, 48)]) for name in VARIANTS}
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert (outs[a] - outs[b]).abs().max() > 1e-3, (a, b)


def test_vanilla_reproduces_open_clip_patch_tokens(tiny_model, pixels):
    visual = tiny_model.visual
    visual.output_tokens = True
    try:
        with torch.no_grad():
            _, tokens = visual(pixels[(32, 32)])
    finally:
        visual.output_tokens = False
    expected = torch.nn.functional.normalize(tokens @ visual.proj, dim=-1).reshape(2, 4, 4, -1)
    ours = ClearCLIP(tiny_model, None, variant="vanilla").encode_dense(pixels[(32, 32)])
    assert (ours - expected).abs().max() < 1e-5


def test_open_clip_internals_are_what_the_decomposition_reads(tiny_model):
    block = tiny_model.visual.transformer.resblocks[-1]
    assert isinstance(block.attn, nn.MultiheadAttention), "open_clip changed its block internals; pin open_clip_torch>=3,<4"
    assert block.attn.in_proj_weight is not None


def test_changed_internals_fail_loudly(tiny_model):
    import copy

    model = copy.deepcopy(tiny_model)
    model.visual.transformer.resblocks[-1].attn = nn.Identity()
    with pytest.raises(ClearCLIPError, match="nn.MultiheadAttention"):
        ClearCLIP(model, None)


def test_pixels_must_fit_the_patch(tiny_model):
    with pytest.raises(ValueError, match="multiple of the patch"):
        ClearCLIP(tiny_model, None).encode_dense(torch.zeros(1, 3, 30, 32))
