"""Loading open_clip models: built-in names with a pretrained tag or weight file, ``local-dir:`` and ``hf-hub:``."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import open_clip
import torch
from torch import nn

from ..errors import ClearCLIPError
from .weights import HOW_TO_GET_WEIGHTS, SCHEMAS, is_weight_file, weights_identity

logger = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
RANDOM_WEIGHTS_SEED = 0


@dataclass
class LoadedModel:
    """An open_clip model with what inference needs beside it."""

    model: nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    weights_id: str | None = None  # stable identity of the weights (None for random weights)
    description: dict = field(default_factory=dict)  # model name, pretrained tag or file, weight hash


def resolve_weights(model_name: str, pretrained: str | None) -> tuple[str | None, dict]:
    """``weights_identity``, with the model name and pretrained tag checked against open_clip's tables.

    Raises ClearCLIPError naming the problem for unknown models, unknown tags and missing files.
    """
    identity = weights_identity(model_name, pretrained)
    if model_name.startswith(SCHEMAS):
        return identity
    if model_name not in open_clip.list_models():
        vits = [m for m in open_clip.list_models() if m.startswith("ViT-")]
        raise ClearCLIPError(f"unknown model '{model_name}'; open_clip ViT models include: {', '.join(vits[:40])}, ...")
    if pretrained is not None and not is_weight_file(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise ClearCLIPError(
                f"unknown pretrained tag '{pretrained}' for {model_name}; known tags: {', '.join(tags) or 'none'}"
            )
    return identity


def load_model(
    model_name: str,
    pretrained: str | None = None,
    device: torch.device | str = "cpu",
    cache_dir: str | None = None,
) -> LoadedModel:
    """Build an open_clip model in fp32 on ``device`` with its tokenizer and normalisation.

    ``pretrained=None`` on a built-in name gives random weights, with a warning; schemas
    (``local-dir:``, ``hf-hub:``) carry their own weights and ignore ``pretrained``.
    """
    weights_id, description = resolve_weights(model_name, pretrained)
    has_schema = model_name.startswith(SCHEMAS)
    random_weights = pretrained is None and not has_schema
    if random_weights:
        message = (f"{model_name} has RANDOM weights (pretrained=None, seed {RANDOM_WEIGHTS_SEED}): outputs are "
                   "meaningless; use for tests and benchmarks only")
        warnings.warn(message, stacklevel=2)
        logger.warning(message)
    try:
        with torch.random.fork_rng(devices=[]):  # random weights are the same in every run, and the caller's RNG is kept
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = open_clip.create_model(
                model_name,
                pretrained=None if has_schema else pretrained,
                device=device,
                cache_dir=cache_dir,
                require_pretrained=not random_weights,
            )
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
    except ClearCLIPError:
        raise
    except Exception as error:  # open_clip and huggingface_hub raise many types for one cause
        if model_name.startswith("local-dir:"):
            raise ClearCLIPError(f"could not load the checkpoint in {model_name[len('local-dir:'):]}: {error}; check that "
                                 "its open_clip_config.json describes the architecture of its weights") from error
        raise ClearCLIPError(f"could not load {model_name} with weights {pretrained!r}: {error}. {HOW_TO_GET_WEIGHTS}") from error
    model.eval().requires_grad_(False)
    visual = model.visual
    mean = tuple(getattr(visual, "image_mean", None) or OPENAI_MEAN)
    std = tuple(getattr(visual, "image_std", None) or OPENAI_STD)
    return LoadedModel(model, tokenizer, mean, std, weights_id, description)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` is CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ClearCLIPError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from error
    if device.type not in ("cpu", "cuda"):
        raise ClearCLIPError(f"device '{device}' is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ClearCLIPError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision name, or None for fp32; half precision needs CUDA."""
    if precision == "fp32":
        return None
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise ClearCLIPError(f"unknown precision '{precision}'; choose fp32, fp16 or bf16")
    if device.type != "cuda":
        raise ClearCLIPError(f"precision {precision} needs a CUDA device; the CPU runs fp32")
    return dtypes[precision]
