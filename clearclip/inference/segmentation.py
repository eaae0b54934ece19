"""From pixels to a label map: preprocessing, window-logit accumulation, and the memory-bounded reduction.

Logits are kept queries-innermost (h, w, Q) throughout. The reduction never holds a
(queries x original height x original width) tensor: the averaged window logits stay at the
working resolution and are upsampled, soft-maxed and reduced to a label and a score in row
tiles of the original image.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..options import SegmentSettings
from .refine import OFFSETS, affinity, propagate, reach
from .windows import Padding, Window, padded_size, resized_size

# floats per band of rows (rows x width x queries) when logits are resized: on the CPU a few MB, so a
# band stays in cache; on a GPU 128 MB, so a window or a large image takes a handful of kernel launches
TILE_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 25}
# floats of PAMR affinities a band holds (8 x dilations x rows x width); a band of logits queries is as large
PAMR_ELEMENTS = {"cpu": 1 << 25, "cuda": 1 << 28}


@dataclass
class Segmentation:
    """A label map and the probability of the chosen class, at the original image size."""

    labels: np.ndarray  # (H, W) int32, index into the classes
    scores: np.ndarray  # (H, W) float32 in [0, 1]
    classes: list[str] = field(default_factory=list)  # display name of each class


@dataclass
class PreparedImage:
    """An RGB image as (H, W, 3) uint8 pixels, ready to travel to the model's device, which resizes and
    normalises it (``model_input``). Pinned by a DataLoader with ``pin_memory=True``."""

    pixels: torch.Tensor

    @property
    def original_size(self) -> tuple[int, int]:
        """(H, W): the size the result is mapped back to."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    def pin_memory(self) -> "PreparedImage":
        return PreparedImage(self.pixels.pin_memory())


def as_rgb_array(image) -> np.ndarray:
    """HxWx3 uint8 from a PIL image or an HxW / HxWx3 / HxWx4 uint8 array."""
    if hasattr(image, "convert"):  # PIL
        image = np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    image = np.ascontiguousarray(image[:, :, :3])
    return image if image.flags.writeable else image.copy()


def prepare_image(image) -> PreparedImage:
    """A PIL image or an HxW / HxWx3 / HxWx4 uint8 array as a PreparedImage (no copy when already RGB)."""
    return PreparedImage(torch.from_numpy(as_rgb_array(image)))


def model_input(pixels: torch.Tensor, settings: SegmentSettings, mean, std) -> torch.Tensor:
    """(3, h, w) float32 normalised pixels from (H, W, 3) uint8 ones, on their device: bilinear resize to the
    working size, rounded back to uint8 levels like cv2, then mean/std normalisation."""
    height, width = pixels.shape[:2]
    new_h, new_w = resized_size(height, width, settings.short_side, settings.max_long_side)
    image = pixels.permute(2, 0, 1).float().unsqueeze(0)
    if (new_h, new_w) != (height, width):
        image = F.interpolate(image, size=(new_h, new_w), mode="bilinear", align_corners=False)
        image = image.round_().clamp_(0, 255)
    mean_t = torch.tensor(mean, device=pixels.device).view(1, 3, 1, 1) * 255
    std_t = torch.tensor(std, device=pixels.device).view(1, 3, 1, 1) * 255
    return ((image - mean_t) / std_t)[0].contiguous()


def _source_positions(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices and weights of bilinear resampling with ``align_corners=False``, as torch computes them."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    src = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=in_size - 1)
    i1 = (i0 + 1).clamp_(max=in_size - 1)
    return i0, i1, src - i0.float()


def _row_weights(r0: torch.Tensor, r1: torch.Tensor, w1: torch.Tensor, first: int, rows: int, scale: float) -> torch.Tensor:
    """(len(r0), rows) matrix resampling source rows ``first:first + rows`` to the output rows, times ``scale``."""
    weights = torch.zeros((len(r0), rows), dtype=torch.float32, device=r0.device)
    weights.scatter_add_(1, (r0 - first)[:, None], ((1 - w1) * scale)[:, None])
    weights.scatter_add_(1, (r1 - first)[:, None], (w1 * scale)[:, None])
    return weights


def max_probability(tile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last dim of scaled logits (..., Q): the largest probability and its query index.

    Soft-maxes first, like the reference: torch's fused last-dim softmax is faster than a max,
    subtract, exp and sum, and ties break the same way.
    """
    return torch.softmax(tile, dim=-1).max(dim=-1)


def resized_rows(logits: torch.Tensor, size: tuple[int, int], start: int, stop: int, scale: float = 1.0) -> torch.Tensor:
    """Rows ``start:stop`` of the bilinear resize (``align_corners=False``) of (h, w, Q) logits to (*size, Q),
    times ``scale``, channels last.

    Rows are resampled by one small matmul (resampling and scaling are linear), columns by torch's kernel
    on the channels-last view, so the band is never copied to change its layout.
    """
    in_h, in_w, queries = logits.shape
    r0, r1, rw = _source_positions(in_h, size[0])  # on the host: reading them never waits for a GPU
    first, last = int(r0[start]), int(r1[stop - 1])
    weights = _row_weights(r0[start:stop], r1[start:stop], rw[start:stop], first, last - first + 1, scale)
    rows = weights.to(logits.device) @ logits.reshape(in_h, in_w * queries)[first : last + 1]
    band = F.interpolate(rows.view(1, stop - start, in_w, queries).permute(0, 3, 1, 2), size=(stop - start, size[1]),
                         mode="bilinear", align_corners=False)
    return band.permute(0, 2, 3, 1)[0].contiguous()  # already channels-last: no copy


def resized_bands(
    logits: torch.Tensor, size: tuple[int, int], band_elements: int | None = None, scale: float = 1.0
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``resized_rows`` band after band: ``(start, stop, band)`` with at most ``band_elements`` floats a band
    (default: ``TILE_ELEMENTS`` of the logits' device type)."""
    queries = logits.shape[-1]
    band_elements = band_elements or TILE_ELEMENTS.get(logits.device.type, TILE_ELEMENTS["cpu"])
    rows_per_band = max(1, band_elements // max(1, queries * size[1]))
    for start in range(0, size[0], rows_per_band):
        stop = min(start + rows_per_band, size[0])
        yield start, stop, resized_rows(logits, size, start, stop, scale)


def reduce_logits(
    logits: torch.Tensor,
    size: tuple[int, int],
    logit_scale: float,
    query_to_class: torch.Tensor,
    background_threshold: float = 0.0,
    tile_elements: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (int32) and scores (float32) at ``size``, on the logits' device, from averaged logits (h, w, Q)
    at the working resolution.

    Equal to: bilinear resize to ``size``, ``softmax(logit_scale * logits)`` over queries,
    max over each class's queries, argmax, and class 0 where the score is below
    ``background_threshold``. Computed in row tiles of at most ``tile_elements`` floats (default:
    ``TILE_ELEMENTS`` of the device type), queries innermost, so no (Q, H, W) tensor is ever held.
    """
    labels = torch.empty(size, dtype=torch.int32, device=logits.device)
    scores = torch.empty(size, dtype=torch.float32, device=logits.device)
    query_to_class = query_to_class.to(device=logits.device, dtype=torch.int32)
    for start, stop, tile in resized_bands(logits, size, tile_elements, logit_scale):
        scores[start:stop], best = max_probability(tile)
        labels[start:stop] = query_to_class[best]
    if background_threshold > 0:
        labels[scores < background_threshold] = 0
    return labels, scores


def category_map(labels: torch.Tensor, scores: torch.Tensor, category_ids: torch.Tensor,
                 pixel_thresholds: torch.Tensor | None) -> torch.Tensor:
    """The map of ``category_ids[class]`` per pixel, 0 where the score is below ``pixel_thresholds[class]``
    (None: no pixel thresholds), on the labels' device."""
    categories = category_ids[labels]
    if pixel_thresholds is not None:
        categories[scores < pixel_thresholds[labels]] = 0
    return categories


def reduce_logits_refined(
    logits: torch.Tensor,
    guide: torch.Tensor,
    size: tuple[int, int],
    settings: SegmentSettings,
    query_to_class: torch.Tensor,
    band_elements: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``reduce_logits`` with PAMR between the resize and the softmax: the (3, h, w) normalised ``guide`` and
    the (h, w, Q) logits are resized to ``size``, the logits refined, then soft-maxed and reduced.

    Row bands of at most ``band_elements`` affinities (default: ``PAMR_ELEMENTS``) carry a halo of
    ``iterations x max(dilations)`` rows on their inner sides and queries go in chunks, so the result equals
    the whole-image computation; across chunks the softmax is accumulated online (running maximum and sum).
    """
    out_h, out_w = size
    queries = logits.shape[-1]
    dilations, iterations = settings.pamr_dilations, settings.pamr_iterations
    halo = reach(iterations, dilations)
    budget = band_elements or PAMR_ELEMENTS.get(logits.device.type, PAMR_ELEMENTS["cpu"])
    neighbours = len(OFFSETS) * len(dilations)
    whole = out_h * out_w * neighbours <= 2 * budget
    rows_per_band = out_h if whole else max(halo, budget // (neighbours * out_w) - 2 * halo)
    guide = guide.permute(1, 2, 0).contiguous()
    query_to_class = query_to_class.to(device=logits.device, dtype=torch.int32)
    labels = torch.empty(size, dtype=torch.int32, device=logits.device)
    scores = torch.empty(size, dtype=torch.float32, device=logits.device)
    for start in range(0, out_h, rows_per_band):
        stop = min(start + rows_per_band, out_h)
        first, last = max(0, start - halo), min(out_h, stop + halo)
        weights = affinity(resized_rows(guide, size, first, last).permute(2, 0, 1), dilations)
        chunk = max(1, budget // (4 * (last - first) * out_w))  # a band's logits and propagation's copies
        top = total = best = None
        for q0 in range(0, queries, chunk):
            band = resized_rows(logits[..., q0 : q0 + chunk].contiguous(), size, first, last, settings.logit_scale)
            refined = propagate(band.permute(2, 0, 1).contiguous(), weights, dilations, iterations)
            refined = refined[:, start - first : stop - first]
            chunk_top, chunk_best = refined.max(0)
            if top is None:
                top, best = chunk_top, chunk_best
                total = torch.exp(refined - top).sum(0)
            else:
                new_top = torch.maximum(top, chunk_top)
                total = total * torch.exp(top - new_top) + torch.exp(refined - new_top).sum(0)
                best = torch.where(chunk_top > top, chunk_best + q0, best)
                top = new_top
        scores[start:stop] = total.reciprocal()  # the top query's probability, exp(top - top) / total
        labels[start:stop] = query_to_class[best]
    if settings.background_threshold > 0:
        labels[scores < settings.background_threshold] = 0
    return labels, scores


class LogitAccumulator:
    """Sum of upsampled window logits and the per-pixel window count of one image (working resolution)."""

    def __init__(self, queries: int, height: int, width: int, device) -> None:
        self.sum = torch.zeros((height, width, queries), dtype=torch.float32, device=device)
        self.count = torch.zeros((height, width, 1), dtype=torch.float32, device=device)

    def add(self, patch_logits: torch.Tensor, window: Window, pad: Padding) -> None:
        """Add a window's patch logits (gh, gw, Q), resized to the padded window, without the padding."""
        height, width = padded_size(window, pad)
        for start, stop, band in resized_bands(patch_logits, (height, width)):
            top, bottom = max(start, pad.top), min(stop, height - pad.bottom)
            if top < bottom:
                rows = slice(window.y1 + top - pad.top, window.y1 + bottom - pad.top)
                self.sum[rows, window.x1 : window.x2] += band[top - start : bottom - start, pad.left : width - pad.right]
        self.count[window.y1 : window.y2, window.x1 : window.x2] += 1

    def mean(self) -> torch.Tensor:
        """The averaged logits (h, w, Q); frees the buffers."""
        if bool((self.count == 0).any()):
            raise RuntimeError("sliding windows left pixels uncovered")
        result = self.sum.div_(self.count)
        del self.sum, self.count
        return result
