"""PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), placed as NACLIP places it: on the
logits at the original image size, guided by the normalised image resized to that size.

For each dilation d the 8 neighbours of a pixel are at (±d, ±d), (±d, 0), (0, ±d), borders replicated.
Affinities come from the guide once (the standard deviation of the 3x3 dilated stencils, all dilations
together; ``-|x_i - x_j| / (1e-8 + 0.1 sigma_i)`` averaged over channels; softmax over the neighbours), then
every class channel is replaced by its affinity-weighted neighbours, ``iterations`` times.

Memory: the affinities are ``8·D`` floats a pixel, shared by all classes; propagation adds one neighbour at
a time, so nothing of size classes x 8·D x H x W is ever held. ``reach`` says how far influence travels,
which is the halo that makes row bands exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..options import DEFAULT_PAMR_DILATIONS, DEFAULT_PAMR_ITERATIONS

OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))  # (dy, dx) in units of d


def reach(iterations: int, dilations: Sequence[int]) -> int:
    """Pixels a value can travel in ``iterations`` steps: rows this far from a band's edge are exact."""
    return iterations * max(dilations)


def _neighbours(padded: torch.Tensor, d: int, height: int, width: int, dy: int, dx: int) -> torch.Tensor:
    """The view of a padded (..., H + 2d, W + 2d) tensor holding each pixel's neighbour at (dy·d, dx·d)."""
    return padded[..., d + dy * d : d + dy * d + height, d + dx * d : d + dx * d + width]


def _replicate(x: torch.Tensor, d: int) -> torch.Tensor:
    return F.pad(x[None], (d, d, d, d), mode="replicate")[0]


def affinity(guide: torch.Tensor, dilations: Sequence[int] = DEFAULT_PAMR_DILATIONS) -> torch.Tensor:
    """(8·D, H, W) weights of each pixel's neighbours, summing to 1, from a (K, H, W) guide image."""
    channels, height, width = guide.shape
    padded = [_replicate(guide, d) for d in dilations]
    stencil = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    count = len(stencil) * len(dilations)
    mean = sum(_neighbours(p, d, height, width, dy, dx) for p, d in zip(padded, dilations) for dy, dx in stencil) / count
    squares = sum((_neighbours(p, d, height, width, dy, dx) - mean) ** 2
                  for p, d in zip(padded, dilations) for dy, dx in stencil)
    scale = (squares / (count - 1)).sqrt_().mul_(0.1).add_(1e-8)  # 0.1 x the unbiased standard deviation
    del mean, squares
    weights = torch.empty((len(OFFSETS) * len(dilations), height, width), dtype=guide.dtype, device=guide.device)
    index = 0
    for p, d in zip(padded, dilations):
        for dy, dx in OFFSETS:
            torch.mean((guide - _neighbours(p, d, height, width, dy, dx)).abs_().div_(scale).neg_(), 0, out=weights[index])
            index += 1
    weights -= weights.max(0, keepdim=True).values  # softmax over the neighbours, in place
    weights.exp_()
    return weights.div_(weights.sum(0, keepdim=True))


def propagate(mask: torch.Tensor, weights: torch.Tensor, dilations: Sequence[int] = DEFAULT_PAMR_DILATIONS,
              iterations: int = DEFAULT_PAMR_ITERATIONS) -> torch.Tensor:
    """``iterations`` times, every (C, H, W) channel becomes the ``weights``-weighted sum of its neighbours."""
    _, height, width = mask.shape
    for _ in range(iterations):
        result = torch.zeros_like(mask)
        index = 0
        for d in dilations:
            padded = _replicate(mask, d)
            for dy, dx in OFFSETS:
                result.addcmul_(_neighbours(padded, d, height, width, dy, dx), weights[index])
                index += 1
        mask = result
    return mask

