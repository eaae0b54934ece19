"""Which weights a (model, pretrained) pair names, and their stable identity, without importing torch or
open_clip: a run records the identity in its config, and a rerun compares it before any model loads.

Names are checked against open_clip's tables when the model loads (``inference.model``).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from ..errors import ClearCLIPError

SCHEMAS = ("local-dir:", "hf-hub:")
CHECKPOINT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")

HOW_TO_GET_WEIGHTS = (
    "Download the weights on a machine with internet access, e.g. "
    "`python -c \"import open_clip; open_clip.create_model('ViT-B-16', pretrained='openai')\"` "
    "(they land in ~/.cache/huggingface; copy that folder over), or save a checkpoint and point the tool "
    "at it with --pretrained /path/to/open_clip_pytorch_model.bin or --model local-dir:/path/to/folder "
    "(a folder with open_clip_config.json and the weights). Set HF_HUB_OFFLINE=1 to skip network retries."
)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's contents (remembered per path, size and modification time)."""
    stat = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_in_dir(folder: Path) -> Path | None:
    """The weight file of a ``local-dir:`` folder, or None."""
    for name in CHECKPOINT_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def is_weight_file(pretrained: str) -> bool:
    """Whether ``pretrained`` names a file rather than an open_clip tag."""
    path = Path(pretrained).expanduser()
    return path.suffix in WEIGHT_SUFFIXES or path.exists() or "/" in pretrained


def weights_identity(model_name: str, pretrained: str | None) -> tuple[str | None, dict]:
    """(weights id, description) of a (model, pretrained) pair: ``sha256:<hex>`` of a weight file or a
    ``local-dir:`` checkpoint, ``model/tag`` for a tag, the name for ``hf-hub:``, None for random weights.

    Raises ClearCLIPError naming a missing file or folder.
    """
    description: dict = {"model": model_name, "pretrained": None if model_name.startswith(SCHEMAS) else pretrained}
    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:") :]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise ClearCLIPError(f"{folder} has no open_clip_config.json; a local-dir: model needs it and the weights")
        checkpoint = checkpoint_in_dir(folder)
        if checkpoint is None:
            raise ClearCLIPError(f"{folder} has no {' or '.join(CHECKPOINT_NAMES)}. {HOW_TO_GET_WEIGHTS}")
        description["weights_sha256"] = file_sha256(checkpoint)
        return f"sha256:{description['weights_sha256']}", description
    if model_name.startswith("hf-hub:"):
        return model_name, description
    if pretrained is None:
        return None, description
    if is_weight_file(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ClearCLIPError(f"weight file {pretrained} does not exist. {HOW_TO_GET_WEIGHTS}")
        description["weights_sha256"] = file_sha256(path)
        return f"sha256:{description['weights_sha256']}", description
    return f"{model_name}/{pretrained}", description
