"""A tiny random-weight open_clip model saved in the hub's ``local-dir:`` layout, for tests and demos."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def build_tiny_model(seed: int = 0) -> open_clip.CLIP:
    """A CLIP with the ViT layout of the real ones, a few layers deep, random weights."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CONFIG)
    # random init leaves LayerNorms at identity and the class token tiny; perturb them so tests see their effect
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.add_(0.2 * torch.randn_like(module.weight))
                module.bias.add_(0.1 * torch.randn_like(module.bias))
    return model.eval()


def save_local_dir(model: open_clip.CLIP, folder: str | Path) -> Path:
    """Write ``open_clip_config.json`` and ``open_clip_pytorch_model.bin`` like a hub repository."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": TINY_CONFIG,
        "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder
