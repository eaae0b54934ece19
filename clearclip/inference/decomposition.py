"""ClearCLIP's decomposed last block and the dense forward pass of an open_clip ViT.

Every residual block runs as ``x = [x +] out_proj(attention(ln_1(x))) [+ mlp(ln_2(x))]`` with
``scaled_dot_product_attention``: the first blocks in their unmodified form (``qk`` attention,
residual and FFN), the last one in its decomposed form (``qq`` is ClearCLIP's). The
unmodified last block is never run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ClearCLIPError
from ..options import UNMODIFIED, Decomposition


def check_supported(visual: nn.Module) -> None:
    """Fail loudly when the vision tower is not the open_clip ViT layout the decomposition reads.

    open_clip's ``main`` branch replaced ``nn.MultiheadAttention`` inside its blocks; this
    check is what turns such a change into a clear error instead of wrong numbers.
    """
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj")
    missing = [name for name in needed if not hasattr(visual, name)]
    if missing:
        raise ClearCLIPError(
            f"{type(visual).__name__} is not an open_clip VisionTransformer (missing {', '.join(missing)}); "
            "ClearCLIP needs a ViT backbone"
        )
    if getattr(visual, "attn_pool", None) is not None:
        raise ClearCLIPError("vision towers with attentional pooling (CoCa) are not supported")
    for index, block in enumerate(visual.transformer.resblocks):
        attn = getattr(block, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention) or attn.in_proj_weight is None:
            raise ClearCLIPError(
                f"block {index}'s attention is {type(attn).__name__}, not nn.MultiheadAttention with a packed "
                "in_proj; this open_clip version changed its internals (install open_clip_torch>=3,<4)"
            )
        for name in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2"):
            if not hasattr(block, name):
                raise ClearCLIPError(f"block {index} has no '{name}'; install open_clip_torch>=3,<4")


def resample_positional_embedding(pos: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resample of the patch positions from ``grid`` to ``new_grid``; the class position is kept.

    Uses ``scale_factor=((gh + 0.1) / g0, (gw + 0.1) / g0)`` like the reference implementation,
    which maps coordinates slightly differently from passing the target size.
    """
    if tuple(new_grid) == tuple(grid):
        return pos
    g0h, g0w = grid
    gh, gw = new_grid
    cls_pos, patch_pos = pos[:1], pos[1:]
    patch_pos = patch_pos.float().reshape(1, g0h, g0w, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(
        patch_pos, scale_factor=((gh + 0.1) / g0h, (gw + 0.1) / g0w), mode="bicubic", align_corners=False
    )
    if patch_pos.shape[-2:] != (gh, gw):  # float rounding of the scale factor; never seen, but be explicit
        raise RuntimeError(f"positional embedding resampled to {tuple(patch_pos.shape[-2:])}, wanted {new_grid}")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(gh * gw, -1)
    return torch.cat([cls_pos, patch_pos.to(pos.dtype)], dim=0)


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = t.shape
    return t.view(b, n, heads, c // heads).transpose(1, 2)


def run_block(block: nn.Module, x: torch.Tensor, decomposition: Decomposition = UNMODIFIED) -> torch.Tensor:
    """Run an open_clip ``ResidualAttentionBlock`` on batch-first tokens (B, N, C), decomposed as asked.

    With ``UNMODIFIED`` this is the block's own forward, computed with SDPA.
    """
    attn: nn.MultiheadAttention = block.attn
    y = block.ln_1(x)
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (_split_heads(t, attn.num_heads) for t in (q, k, v))
    kind = decomposition.attention
    if kind == "identity":
        out = v
    elif kind == "qq+kk":
        out = F.scaled_dot_product_attention(q, q, v) + F.scaled_dot_product_attention(k, k, v)
    else:
        pick = {"q": q, "k": k, "v": v}
        out = F.scaled_dot_product_attention(pick[kind[0]], pick[kind[1]], v)
    out = out.transpose(1, 2).reshape(x.shape)
    out = block.ls_1(attn.out_proj(out))
    x = x + out if decomposition.residual else out
    if decomposition.ffn:
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x


class PositionalEmbeddingCache:
    """Resampled positional embeddings per grid size, so each window shape is interpolated once."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int, torch.dtype, torch.device], torch.Tensor] = {}

    def get(self, visual: nn.Module, new_grid: tuple[int, int]) -> torch.Tensor:
        pos = visual.positional_embedding
        key = (*new_grid, pos.dtype, pos.device)
        if key not in self._cache:
            self._cache[key] = resample_positional_embedding(pos.detach(), tuple(visual.grid_size), new_grid)
        return self._cache[key]


def dense_features(
    visual: nn.Module,
    pixels: torch.Tensor,
    decomposition: Decomposition,
    pos_cache: PositionalEmbeddingCache | None = None,
) -> torch.Tensor:
    """Patch embeddings (B, H/p, W/p, D), L2-normalised, of normalised pixels (B, 3, H, W)."""
    patch_h, patch_w = visual.patch_size
    b, _, h, w = pixels.shape
    if h % patch_h or w % patch_w:
        raise ValueError(f"pixel size {h}x{w} is not a multiple of the patch size {patch_h}x{patch_w}")
    grid = (h // patch_h, w // patch_w)
    pos = (pos_cache or PositionalEmbeddingCache()).get(visual, grid)

    x = visual.conv1(pixels.to(visual.conv1.weight.dtype))
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(b, 1, -1)
    x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)
    x = visual.ln_pre(x)

    *first_blocks, last_block = visual.transformer.resblocks
    for block in first_blocks:
        x = run_block(block, x)
    x = run_block(last_block, x, decomposition)

    x = visual.ln_post(x[:, 1:]) @ visual.proj
    x = F.normalize(x.float(), dim=-1)
    return x.reshape(b, grid[0], grid[1], -1)


def patch_size(visual: nn.Module) -> int:
    """The (square) patch size of a ViT tower."""
    ph, pw = visual.patch_size
    if ph != pw:
        raise ClearCLIPError(f"non-square patches {ph}x{pw} are not supported")
    return int(ph)

