"""Loading through from_pretrained: local-dir: checkpoints, weight files, and clear errors."""

import json

import numpy as np
import open_clip
import pytest
import torch

from clearclip import ClearCLIP, ClearCLIPError
from tiny_model import TINY_CONFIG


def test_local_dir_loads_the_saved_weights(tiny_model, tiny_model_name):
    cc = ClearCLIP.from_pretrained(tiny_model_name, device="cpu")
    pixels = torch.randn(1, 3, 32, 48)
    expected = ClearCLIP(tiny_model, None).encode_dense(pixels)
    assert torch.equal(cc.encode_dense(pixels), expected)
    assert cc.weights_id.startswith("sha256:")
    assert cc.description["weights_sha256"] in cc.weights_id


def test_weight_file_as_pretrained(tiny_model, tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "clearclip-tiny-test.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(tmp_path / "cfg")
    checkpoint = tmp_path / "tiny.bin"
    torch.save(tiny_model.state_dict(), checkpoint)
    cc = ClearCLIP.from_pretrained("clearclip-tiny-test", pretrained=str(checkpoint), device="cpu")
    pixels = torch.randn(1, 3, 32, 32)
    assert torch.equal(cc.encode_dense(pixels), ClearCLIP(tiny_model, None).encode_dense(pixels))

    with pytest.warns(UserWarning, match="RANDOM weights"):
        random = ClearCLIP.from_pretrained("clearclip-tiny-test", pretrained=None, device="cpu")
    assert random.weights_id is None
    assert not torch.equal(random.encode_dense(pixels), cc.encode_dense(pixels))


@pytest.mark.parametrize(
    "model,pretrained,message",
    [
        ("ViT-Nope-99", None, "unknown model 'ViT-Nope-99'"),
        ("ViT-B-16", "no_such_tag", "unknown pretrained tag 'no_such_tag'"),
        ("ViT-B-16", "/nonexistent/weights.bin", "does not exist.*--pretrained"),
        ("ViT-B-16", "openai", "could not load ViT-B-16.*Download the weights"),
        ("local-dir:/nonexistent/folder", None, "no open_clip_config.json"),
    ],
)
def test_clear_errors(model, pretrained, message):
    with pytest.raises(ClearCLIPError, match=message):
        ClearCLIP.from_pretrained(model, pretrained, device="cpu")


def test_local_dir_without_weights(tmp_path):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))
    with pytest.raises(ClearCLIPError, match="has no open_clip_model.safetensors or open_clip_pytorch_model.bin"):
        ClearCLIP.from_pretrained(f"local-dir:{tmp_path}", device="cpu")


def test_unknown_variant_and_precision(tiny_model_name):
    with pytest.raises(ClearCLIPError, match="unknown variant 'clearer'"):
        ClearCLIP.from_pretrained(tiny_model_name, variant="clearer", device="cpu")
    with pytest.raises(ClearCLIPError, match="needs a CUDA device"):
        ClearCLIP.from_pretrained(tiny_model_name, precision="fp16", device="cpu")


def test_device_auto_is_cpu_without_cuda(tiny_model_name):
    cc = ClearCLIP.from_pretrained(tiny_model_name, device="auto")
    assert cc.device.type == "cpu"
    seg = cc.segment(np.zeros((20, 30, 3), np.uint8), ["a", "b"], short_side=24, crop=24, stride=16)
    assert seg.labels.shape == (20, 30)
