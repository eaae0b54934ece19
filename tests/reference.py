"""A plain re-implementation of ClearCLIP, written from ../shared/method/clearclip.md, one window at a time.

Independent of the library on purpose: explicit attention matrices instead of SDPA, open_clip's
own full-context text encoder, full-resolution softmax and one-hot synonym merging.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def reference_dense(model, pixels, attention="qq", residual=False, ffn=False):
    visual = model.visual
    assert visual.transformer.batch_first
    b, _, h, w = pixels.shape
    p = visual.patch_size[0]
    gh, gw = h // p, w // p
    x = visual.conv1(pixels)
    c = x.shape[1]
    x = x.reshape(b, c, -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(b, 1, c), x], dim=1)
    pos = visual.positional_embedding
    g0 = int(math.sqrt(pos.shape[0] - 1))
    if (gh, gw) != (g0, g0):
        patch_pos = pos[1:].reshape(1, g0, g0, c).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, scale_factor=((gh + 0.1) / g0, (gw + 0.1) / g0), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], patch_pos.permute(0, 2, 3, 1).reshape(-1, c)])
    x = visual.ln_pre(x + pos)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    block = visual.transformer.resblocks[-1]
    heads = block.attn.num_heads
    y = block.ln_1(x)
    qkv = y @ block.attn.in_proj_weight.T + block.attn.in_proj_bias
    q, k, v = (t.reshape(b, -1, heads, c // heads).permute(0, 2, 1, 3) for t in qkv.split(c, dim=-1))
    scale = (c // heads) ** -0.5

    def attend(a, bb):
        return torch.softmax(a @ bb.transpose(-1, -2) * scale, dim=-1) @ v

    outs = {"qk": lambda: attend(q, k), "qq": lambda: attend(q, q), "kk": lambda: attend(k, k),
            "vv": lambda: attend(v, v), "identity": lambda: v, "qq+kk": lambda: attend(q, q) + attend(k, k)}
    out = outs[attention]().permute(0, 2, 1, 3).reshape(b, -1, c)
    out = out @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    x = x + out if residual else out
    if ffn:
        x = x + block.mlp(block.ln_2(x))
    x = visual.ln_post(x) @ visual.proj
    x = x[:, 1:]
    x = x / x.norm(dim=-1, keepdim=True)
    return x.reshape(b, gh, gw, -1)


def reference_text(model, tokenizer, names, templates):
    rows = []
    for name in names:
        feats = model.encode_text(tokenizer([t.format(name) for t in templates]))
        feats = feats / feats.norm(dim=-1, keepdim=True)
        mean = feats.mean(dim=0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)


def reference_resize(image_uint8, short_side, max_long_side):
    h, w = image_uint8.shape[:2]
    scale = min(short_side / min(h, w), max_long_side / max(h, w))
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    t = torch.from_numpy(image_uint8).permute(2, 0, 1)[None].float()
    return F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False).round().clamp(0, 255)


def compute_padsize(h, w, patch):
    l = r = t = bt = 0
    if w % patch:
        lr = patch - w % patch
        l, r = lr // 2, lr - lr // 2
    if h % patch:
        tb = patch - h % patch
        t, bt = tb // 2, tb - tb // 2
    return l, r, t, bt


@torch.no_grad()
def reference_segment(model, image_uint8, text, query_idx, mean, std, *, short_side=448, max_long_side=2048,
                      crop=448, stride=224, logit_scale=50.0, prob_thd=0.0, attention="qq", residual=False, ffn=False,
                      return_probs=False):
    """Labels and scores of one image, following the reference forward_slide and postprocess."""
    img = reference_resize(image_uint8, short_side, max_long_side)
    img = (img / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    _, _, h_img, w_img = img.shape
    p = model.visual.patch_size[0]
    q = text.shape[0]
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    preds = torch.zeros(1, q, h_img, w_img)
    count = torch.zeros(1, 1, h_img, w_img)
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * stride, wi * stride
            y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            crop_img = img[:, :, y1:y2, x1:x2]
            hh, ww = crop_img.shape[2:]
            pad = compute_padsize(hh, ww, p)
            if any(pad):
                crop_img = F.pad(crop_img, pad)
            feats = reference_dense(model, crop_img, attention, residual, ffn)
            logits = torch.einsum("bhwd,qd->bqhw", feats, text)
            logits = F.interpolate(logits, size=crop_img.shape[-2:], mode="bilinear", align_corners=False)
            if any(pad):
                logits = logits[:, :, pad[2]:pad[2] + hh, pad[0]:pad[0] + ww]
            preds += F.pad(logits, (x1, w_img - x2, y1, h_img - y2))
            count[:, :, y1:y2, x1:x2] += 1
    logits = preds / count
    logits = F.interpolate(logits, size=image_uint8.shape[:2], mode="bilinear", align_corners=False)[0]
    probs = (logits * logit_scale).softmax(0)
    query_idx = torch.tensor(query_idx)
    num_cls = int(query_idx.max()) + 1
    if num_cls != len(query_idx):
        one_hot = F.one_hot(query_idx).T.view(num_cls, len(query_idx), 1, 1)
        probs = (probs[None] * one_hot).max(1)[0]
    labels = probs.argmax(0)
    scores = probs.max(0)[0]
    labels[scores < prob_thd] = 0
    if return_probs:
        return labels.numpy().astype(np.int32), scores.numpy(), probs.numpy()
    return labels.numpy().astype(np.int32), scores.numpy()
