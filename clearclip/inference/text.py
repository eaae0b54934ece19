"""Text side: prompt-ensembled class-name embeddings, encoded at a truncated context and cached.

Each name is filled into every template, each prompt is encoded and L2-normalised, the
prompts of a name are averaged and the mean is L2-normalised again.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch import nn

from ..errors import ClearCLIPError
from ..io.atomic import atomic_path
from ..io.cache import default_cache_dir
from ..options import SegmentSettings, Template, filled_templates

# open_clip ships them as lambdas; as "{}" strings they are hashable, printable cache keys
DEFAULT_TEMPLATES: tuple[str, ...] = tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)


def fill_template(template: Template, name: str) -> str:
    """A prompt for ``name``: ``template.format(name)`` for strings with ``{}``, ``template(name)`` for callables."""
    if callable(template):
        return template(name)
    if "{}" not in template:
        raise ValueError(f"template {template!r} has no '{{}}' for the class name")
    return template.format(name)


def settings_templates(settings: SegmentSettings) -> tuple[Template, ...]:
    """The templates a segmentation uses: the settings' own, or ``DEFAULT_TEMPLATES``."""
    return DEFAULT_TEMPLATES if settings.templates is None else tuple(settings.templates)


def _text_tower(model: nn.Module) -> nn.Module:
    """The module that holds the text transformer's parts (CLIP keeps them on the model itself)."""
    return model.text if hasattr(model, "text") else model


def _truncatable(tower: nn.Module) -> bool:
    pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", None))
    return (
        getattr(tower, "attn_mask", None) is not None
        and pool == "argmax"
        and getattr(tower, "cls_emb", None) is None
        and hasattr(tower, "token_embedding")
        and hasattr(tower, "ln_final")
    )


def encode_tokens(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Unnormalised text features of token ids (N, context), at the shortest context that is exact.

    A causal text tower that pools at the end-of-text token (the highest id) gives the same
    features when the sequence is cut right after the longest prompt's end-of-text token, so
    the padding is never run. Other towers fall back to ``model.encode_text``.
    """
    tower = _text_tower(model)
    if not _truncatable(tower):
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(tokens).to(cast_dtype)
    x = x + tower.positional_embedding[:length].to(cast_dtype)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = tower.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
    return x


def encode_names(
    model: nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    names: Sequence[str],
    templates: Sequence[Template] = DEFAULT_TEMPLATES,
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
) -> torch.Tensor:
    """Template-ensembled embeddings (len(names), D), L2-normalised, float32."""
    prompts = [fill_template(t, name) for name in names for t in templates]
    features = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start : start + batch_size]).to(device)
        features.append(F.normalize(encode_tokens(model, tokens).float(), dim=-1))
    per_prompt = torch.cat(features).view(len(names), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


class ClassNameWarning(UserWarning):
    """A class name the text encoder sees only in part."""


def check_context(tokenizer, names: Sequence[str], templates: Sequence[Template]) -> None:
    """Warn about names whose prompts exceed the text context (the encoder sees them cut), and raise
    ClearCLIPError for names whose cut prompts are identical (their embeddings would be the same)."""
    context = getattr(tokenizer, "context_length", None)
    if not context or not names:
        return

    def lengths(texts: list[str]) -> list[int]:
        return (tokenizer(texts) != 0).sum(dim=-1).tolist()

    longest_template = max(lengths([fill_template(t, "") for t in templates])) - 2
    long = [n for n, length in zip(names, lengths(list(names))) if length - 2 + longest_template + 2 > context]
    if not long:
        return
    warnings.warn(f"class name(s) {', '.join(repr(n[:60]) for n in long)} do not fit the text context of {context} "
                  "tokens in some prompts; the encoder sees them cut", ClassNameWarning, stacklevel=3)
    seen: dict[bytes, str] = {}
    for name in long:
        key = tokenizer([fill_template(t, name) for t in templates]).numpy().tobytes()
        if key in seen:
            raise ClearCLIPError(f"class names {seen[key][:60]!r}... and {name[:60]!r}... are the same once cut to the "
                                 f"text context of {context} tokens; shorten them so they differ early")
        seen[key] = name


class TextEmbeddingCache:
    """Embeddings per (weights, name, templates): in memory always, on disk when the weights have an id.

    Keys are per name, so two vocabularies sharing names share work. Random-weight models
    (``weights_id=None``) are cached in memory only, since their weights differ every time.
    """

    def __init__(self, weights_id: str | None, cache_dir: Path | None = None) -> None:
        self.weights_id = weights_id
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        self._memory: dict[str, torch.Tensor] = {}

    def _key(self, name: str, templates: Sequence[Template]) -> str:
        blob = json.dumps([self.weights_id, name, filled_templates(templates)])
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.cache_dir / "text" / key[:2] / f"{key}.pt"

    def _load(self, key: str) -> torch.Tensor | None:
        if key in self._memory:
            return self._memory[key]
        if self.weights_id is None:
            return None
        path = self._path(key)
        try:
            with warnings.catch_warnings():  # torch warns about a corrupt entry's bytes before it fails on them
                warnings.simplefilter("ignore", UserWarning)
                value = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None
        except Exception:  # a truncated or corrupt entry (pickle, zip, EOF errors...) is recomputed and rewritten
            return None
        if not isinstance(value, torch.Tensor) or value.ndim != 1:
            return None
        self._memory[key] = value
        return value

    def _store(self, key: str, value: torch.Tensor) -> None:
        self._memory[key] = value
        if self.weights_id is None:
            return
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                torch.save(value, tmp)
        except OSError:
            pass  # a read-only cache directory only costs re-encoding next time

    def embeddings(self, names: Sequence[str], templates: Sequence[Template], encode: Callable) -> torch.Tensor:
        """(len(names), D) float32 on the CPU; ``encode(missing_names)`` computes the names not cached."""
        keys = [self._key(name, templates) for name in names]
        found = {key: self._load(key) for key in dict.fromkeys(keys)}
        missing = [name for name, key in zip(names, keys) if found[key] is None]
        missing = list(dict.fromkeys(missing))
        if missing:
            encoded = encode(missing).float().cpu()
            for name, value in zip(missing, encoded):
                key = self._key(name, templates)
                self._store(key, value.clone())
                found[key] = self._memory[key]
        return torch.stack([found[key] for key in keys])
