"""``ClearCLIP``: dense features, text embeddings and whole-image segmentation with one open_clip model."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ClearCLIPError
from ..options import Decomposition, SegmentSettings, Template, get_decomposition
from ..vocabulary import Vocabulary
from .decomposition import PositionalEmbeddingCache, check_supported, dense_features, patch_size
from .model import OPENAI_MEAN, OPENAI_STD, autocast_dtype, load_model, resolve_device
from .segmentation import (
    LogitAccumulator,
    PreparedImage,
    Segmentation,
    category_map,
    model_input,
    prepare_image,
    reduce_logits,
    reduce_logits_refined,
)
from .text import DEFAULT_TEMPLATES, TextEmbeddingCache, check_context, encode_names, settings_templates
from .windows import Padding, Window, center_padding, padded_size, sliding_windows

class ClearCLIP:
    """Training-free open-vocabulary segmentation with a decomposed open_clip ViT.

    Arguments:
        model: an open_clip CLIP model with a ViT vision tower.
        tokenizer: its open_clip tokenizer.
        variant: a preset name (``clearclip``, ``vanilla``, ``maskclip``, ``sclip``) or a Decomposition.
        precision: ``fp32``, or ``fp16``/``bf16`` autocast on CUDA.
        window_batch_size: sliding windows (from one or several images) per forward pass; default
            16 on CUDA and 1 on the CPU, where larger batches measured no faster per window.
        compile: ``torch.compile`` the dense forward (once per window size); the first image pays
            the compilation, later ones run faster.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        variant: str | Decomposition = "clearclip",
        precision: str = "fp32",
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        weights_id: str | None = None,
        description: dict | None = None,
        cache_dir: str | Path | None = None,
        window_batch_size: int | None = None,
        compile: bool = False,
    ) -> None:
        check_supported(model.visual)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.decomposition = get_decomposition(variant)
        self.variant = variant if isinstance(variant, str) else str(variant)
        self.device = next(model.parameters()).device
        self.precision = precision
        self._autocast = autocast_dtype(precision, self.device)
        self.mean, self.std = tuple(mean), tuple(std)
        self.patch = patch_size(model.visual)
        self.weights_id = weights_id
        self.description = dict(description or {})
        self.window_batch_size = window_batch_size or (16 if self.device.type == "cuda" else 1)
        self._dense_features = torch.compile(dense_features) if compile else dense_features
        self._text_cache = TextEmbeddingCache(weights_id, Path(cache_dir) if cache_dir else None)
        self._pos_cache = PositionalEmbeddingCache()
        self._checked_vocabularies: set[tuple] = set()

    @classmethod
    def from_pretrained(
        cls,
        model_name: str,
        pretrained: str | None = "openai",
        device: str | torch.device = "auto",
        precision: str = "auto",
        variant: str | Decomposition = "clearclip",
        cache_dir: str | Path | None = None,
        **kwargs,
    ) -> "ClearCLIP":
        """Load ``model_name`` (``ViT-B-16``, ``local-dir:/path``, ``hf-hub:org/repo``) with ``pretrained``
        (a tag such as ``openai``, a weight file, or None for random weights). ``precision="auto"``
        is fp16 autocast on CUDA and fp32 on the CPU. The defaults are ``clearclip label``'s."""
        get_decomposition(variant)  # fail on a bad variant before loading weights
        resolved = resolve_device(device)
        if precision == "auto":
            precision = "fp16" if resolved.type == "cuda" else "fp32"
        autocast_dtype(precision, resolved)
        loaded = load_model(model_name, pretrained, device=resolved)
        return cls(
            loaded.model,
            loaded.tokenizer,
            variant=variant,
            precision=precision,
            mean=loaded.mean,
            std=loaded.std,
            weights_id=loaded.weights_id,
            description=loaded.description,
            cache_dir=cache_dir,
            **kwargs,
        )

    def _autocast_context(self):
        if self._autocast is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._autocast)

    @torch.inference_mode()
    def encode_dense(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B, 3, H, W), H and W multiples of the patch -> (B, H/p, W/p, D), L2-normalised."""
        with self._autocast_context():
            return self._dense_features(self.model.visual, pixels.to(self.device), self.decomposition, self._pos_cache)

    @torch.inference_mode()
    def encode_text(self, names: Sequence[str], templates: Sequence[Template] | None = None) -> torch.Tensor:
        """Template-ensembled embeddings (len(names), D), L2-normalised, on the model's device."""
        templates = tuple(templates) if templates is not None else DEFAULT_TEMPLATES
        embeddings = self._text_cache.embeddings(
            list(names), templates, lambda missing: encode_names(self.model, self.tokenizer, missing, templates, self.device)
        )
        return embeddings.to(self.device)

    @staticmethod
    def prepare(image) -> PreparedImage:
        """One image (PIL or HxW/HxWx3/HxWx4 uint8) for ``segment_prepared``; resizing happens on the device."""
        return prepare_image(image)

    def segment(self, image, classes: Sequence[str] | Vocabulary, background_threshold: float = 0.0, **overrides) -> Segmentation:
        """Segment one image. ``classes`` are strings (commas separate synonyms of a class).

        With ``background_threshold > 0`` pixels scoring below it get class 0. ``overrides``
        replace fields of SegmentSettings: templates, short_side, max_long_side, crop, stride, logit_scale,
        refine ("none" or "pamr"), pamr_iterations, pamr_dilations.
        """
        return self.segment_batch([image], classes, background_threshold, **overrides)[0]

    def segment_batch(
        self, images: Sequence, classes: Sequence[str] | Vocabulary, background_threshold: float = 0.0, **overrides
    ) -> list[Segmentation]:
        """Segment several images, batching their sliding windows together."""
        settings = SegmentSettings(background_threshold=background_threshold).with_overrides(**overrides)
        vocabulary = classes if isinstance(classes, Vocabulary) else Vocabulary.from_strings(classes)
        return self.segment_prepared([self.prepare(image) for image in images], vocabulary, settings)

    @torch.inference_mode()
    def segment_prepared(
        self, prepared: Sequence[PreparedImage], vocabulary: Vocabulary, settings: SegmentSettings
    ) -> list[Segmentation]:
        """Segment prepared images: windows of all images are grouped by size and batched."""
        return [Segmentation(labels.cpu().numpy(), scores.cpu().numpy(), vocabulary.names)
                for labels, scores in self._segment_on_device(prepared, vocabulary, settings)]

    @torch.inference_mode()
    def segment_categories(
        self, prepared: Sequence[PreparedImage], vocabulary: Vocabulary, settings: SegmentSettings,
        pixel_thresholds: Sequence[float] | None = None, window_batch_size: int | None = None,
    ) -> "BatchResult":
        """Segment, and turn each label map into a map of COCO category ids (0 for background and where the
        score is below its class's ``pixel_thresholds`` entry) on the device; the batch's maps and scores come
        back in one copy, started now and waited for by ``BatchResult.maps()``, so the next batch can be queued
        meanwhile. ``window_batch_size`` overrides the model's windows per pass for this call."""
        category_ids = [cid or 0 for cid in vocabulary.category_ids()]
        lookup = torch.tensor(category_ids, dtype=torch.int16 if max(category_ids) > 255 else torch.uint8)
        lookup = lookup.to(self.device)
        thresholds = None  # no class has a pixel threshold: nothing to compare on the device
        if pixel_thresholds is not None and any(pixel_thresholds):
            thresholds = torch.tensor(list(pixel_thresholds), dtype=torch.float32).to(self.device)
        maps = self._segment_on_device(prepared, vocabulary, settings, window_batch_size or self.window_batch_size)
        return BatchResult([(category_map(labels, scores, lookup, thresholds), scores) for labels, scores in maps])

    def _segment_on_device(
        self, prepared: Sequence[PreparedImage], vocabulary: Vocabulary, settings: SegmentSettings,
        window_batch_size: int | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        self._check_vocabulary(vocabulary, settings)
        text = self.encode_text(vocabulary.queries, settings_templates(settings))
        query_to_class = torch.tensor(vocabulary.query_to_class)
        pixels = [model_input(p.pixels.to(self.device, non_blocking=True), settings, self.mean, self.std)
                  for p in prepared]
        accumulators = [LogitAccumulator(len(text), *p.shape[-2:], self.device) for p in pixels]

        groups: dict[tuple[int, int], list[tuple[int, Window, Padding]]] = defaultdict(list)
        for index, image in enumerate(pixels):
            for window in sliding_windows(*image.shape[-2:], settings.crop, settings.stride):
                pad = center_padding(window.y2 - window.y1, window.x2 - window.x1, self.patch)
                groups[padded_size(window, pad)].append((index, window, pad))

        per_pass = window_batch_size or self.window_batch_size
        for items in groups.values():
            for start in range(0, len(items), per_pass):
                chunk = items[start : start + per_pass]
                crops = torch.stack([self._crop(pixels[i], window, pad) for i, window, pad in chunk])
                features = self.encode_dense(crops)
                for (index, window, pad), patch_logits in zip(chunk, features @ text.T):
                    accumulators[index].add(patch_logits, window, pad)
        results = []
        for image, guide, accumulator in zip(prepared, pixels, accumulators):
            if settings.refine == "pamr":
                results.append(reduce_logits_refined(accumulator.mean(), guide, image.original_size, settings,
                                                     query_to_class))
            else:
                results.append(reduce_logits(accumulator.mean(), image.original_size, settings.logit_scale,
                                             query_to_class, settings.background_threshold))
        return results

    def _check_vocabulary(self, vocabulary: Vocabulary, settings: SegmentSettings) -> None:
        if settings.background_threshold > 0 and not vocabulary.has_background:
            raise ClearCLIPError("background_threshold needs 'background' as the first class of the vocabulary: "
                                 "pixels below it get class 0")
        templates = settings_templates(settings)
        key = (tuple(vocabulary.queries), templates)
        if self.tokenizer is not None and key not in self._checked_vocabularies:
            check_context(self.tokenizer, vocabulary.queries, templates)
            self._checked_vocabularies.add(key)

    @staticmethod
    def _crop(image: torch.Tensor, window: Window, pad: Padding) -> torch.Tensor:
        crop = image[:, window.y1 : window.y2, window.x1 : window.x2]
        return F.pad(crop, tuple(pad)) if any(pad) else crop


class BatchResult:
    """Category maps and scores of a batch, packed into one buffer and copied to the host in one transfer
    (asynchronous from a GPU, into pinned memory)."""

    def __init__(self, maps: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._shapes = [tuple(categories.shape) for categories, _ in maps]
        self._dtype = maps[0][0].dtype if maps else torch.uint8
        parts = [scores for _, scores in maps] + [categories for categories, _ in maps]  # floats first: aligned views
        packed = torch.cat([t.reshape(-1).view(torch.uint8) for t in parts]) if maps else torch.empty(0, dtype=torch.uint8)
        if packed.device.type == "cuda":
            self._host = torch.empty(packed.shape, dtype=torch.uint8, pin_memory=True)
            self._host.copy_(packed, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host, self._event = packed, None

    def maps(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(categories (H, W) uint8 or uint16, scores (H, W) float32) per image, once the copy has landed."""
        if self._event is not None:
            self._event.synchronize()
        buffer = self._host.numpy()
        category_type = np.dtype(np.uint8 if self._dtype == torch.uint8 else np.uint16)
        pixels = [shape[0] * shape[1] for shape in self._shapes]
        ends = np.cumsum([4 * n for n in pixels] + [category_type.itemsize * n for n in pixels])
        parts = np.split(buffer, ends[:-1])
        scores = [part.view(np.float32).reshape(shape) for part, shape in zip(parts, self._shapes)]
        categories = [part.view(category_type).reshape(shape) for part, shape in zip(parts[len(pixels):], self._shapes)]
        return list(zip(categories, scores))


def class_pixel_shares(segmentation: Segmentation) -> list[tuple[str, float]]:
    """(class name, share of pixels) for each class present, largest first."""
    counts = np.bincount(segmentation.labels.ravel(), minlength=len(segmentation.classes))
    total = max(1, segmentation.labels.size)
    shares = [(segmentation.classes[i], counts[i] / total) for i in np.flatnonzero(counts)]
    return sorted(shares, key=lambda item: -item[1])
