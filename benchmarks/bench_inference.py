"""Inference speed and memory: ClearCLIP.segment against a baseline that follows the official code.

The baseline (below) is a port of the reference implementation's ``forward_slide`` and
``postprocess``: one window at a time, explicit attention matrices, window logits upsampled and
padded to the full working image, full-resolution upsampling and softmax over every query.
Both run the same random-weight ViT-B/16 (the real one's FLOPs) on the same synthetic images.

    python benchmarks/bench_inference.py --quick              # this CPU, under 5 minutes
    python benchmarks/bench_inference.py --device cuda         # a GPU: bf16 batched vs the fp16 baseline
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from contextlib import nullcontext

import numpy as np
import open_clip
import psutil
import torch
import torch.nn.functional as F

from clearclip import ClearCLIP, SegmentSettings
from clearclip.evaluation.benchmarks import BENCHMARKS
from clearclip.inference.segmentation import model_input
from clearclip.inference.text import DEFAULT_TEMPLATES, encode_names


# ----------------------------------------------------------------------------- baseline (official code, ported)
def baseline_custom_attn(attn_layer, x):
    """ClearCLIP's custom_attn with attn_type 'qq' on LND tokens (no residual, no FFN around it)."""
    num_heads = attn_layer.num_heads
    _, bsz, embed_dim = x.size()
    head_dim = embed_dim // num_heads
    scale = head_dim ** -0.5
    q, k, v = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)
    q = q.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    attn_weights = torch.softmax(torch.bmm(q * scale, q.transpose(1, 2)), dim=-1)
    attn_output = torch.bmm(attn_weights, v).transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    return attn_layer.out_proj(attn_output)


def baseline_encode(visual, img):
    """encode_image(img, return_all=True) of the reference: tokens after the decomposed last block."""
    b, _, h, w = img.shape
    x = visual.conv1(img)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding.to(x.dtype) + torch.zeros(b, 1, x.shape[-1], dtype=x.dtype, device=x.device), x], 1)
    pos = visual.positional_embedding
    n = pos.shape[0] - 1
    g0 = int(n ** 0.5)
    patch_pos = pos[1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    h0, w0 = h // visual.patch_size[0] + 0.1, w // visual.patch_size[1] + 0.1
    patch_pos = F.interpolate(patch_pos, scale_factor=(h0 / g0, w0 / g0), mode="bicubic")
    pos = torch.cat([pos[:1], patch_pos.permute(0, 2, 3, 1).reshape(-1, pos.shape[-1])])
    x = visual.ln_pre(x + pos.to(x.dtype))
    x = x.permute(1, 0, 2)  # reference runs LND
    for blk in visual.transformer.resblocks[:-1]:
        x = blk(x.permute(1, 0, 2)).permute(1, 0, 2)
    blk = visual.transformer.resblocks[-1]
    x = baseline_custom_attn(blk.attn, blk.ln_1(x))
    x = x.permute(1, 0, 2)
    return visual.ln_post(x) @ visual.proj


def baseline_forward_feature(visual, img, text, patch):
    feats = baseline_encode(visual, img)[:, 1:]
    feats = feats / feats.norm(dim=-1, keepdim=True)
    logits = feats @ text.T
    h, w = img.shape[-2] // patch, img.shape[-1] // patch
    logits = logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], h, w)
    return F.interpolate(logits, size=img.shape[-2:], mode="bilinear")


def baseline_segment(visual, image, text, query_idx, mean, std, crop=448, stride=224, prob_thd=0.0, logit_scale=50.0,
                     device="cpu", autocast=None):
    img = model_input(torch.from_numpy(image), SegmentSettings(), mean, std)[None].to(device)  # as ours
    patch = visual.patch_size[0]
    batch_size, _, h_img, w_img = img.shape
    num_queries = text.shape[0]
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    preds = img.new_zeros((batch_size, num_queries, h_img, w_img))
    count_mat = img.new_zeros((batch_size, 1, h_img, w_img))
    with torch.autocast(device_type=img.device.type, dtype=autocast) if autocast else nullcontext():
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y1, x1 = h_idx * stride, w_idx * stride
                y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
                y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
                crop_img = img[:, :, y1:y2, x1:x2]
                crop_seg_logit = baseline_forward_feature(visual, crop_img, text, patch).float()
                preds += F.pad(crop_seg_logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
                count_mat[:, :, y1:y2, x1:x2] += 1
    logits = preds / count_mat
    logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear")
    seg_logits = (logits[0] * logit_scale).softmax(0)
    num_cls = max(query_idx) + 1
    if num_cls != len(query_idx):
        cls_index = F.one_hot(torch.tensor(query_idx, device=seg_logits.device)).T.view(num_cls, len(query_idx), 1, 1)
        seg_logits = (seg_logits.unsqueeze(0) * cls_index).max(1)[0]
    seg_pred = seg_logits.argmax(0)
    scores = seg_logits.max(0)[0]
    seg_pred[scores < prob_thd] = 0
    return seg_pred.cpu().numpy(), scores.cpu().numpy(), h_grids * w_grids


# ----------------------------------------------------------------------------- measurement
class PeakMemory:
    """Peak process RSS (CPU) or allocated memory (CUDA) above the level at entry, in MiB; the largest over
    every ``with`` block it was used in."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.process = psutil.Process()
        self.start = self.process.memory_info().rss
        self.top = self.start
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.top = max(self.top, self.process.memory_info().rss)
            time.sleep(0.02)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = max(self.peak, (torch.cuda.max_memory_allocated() - self.start) / 2**20)
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.peak, (self.top - self.start) / 2**20)


def vit_window_flops(visual, height: int, width: int) -> float:
    """Multiply-adds x2 of one window through the decomposed ViT (last block without FFN)."""
    patch = visual.patch_size[0]
    tokens = (height // patch) * (width // patch) + 1
    width_ = visual.conv1.out_channels
    mlp = visual.transformer.resblocks[0].mlp.c_fc.out_features
    layers = len(visual.transformer.resblocks)
    attn = 2 * tokens * width_ * 3 * width_ + 2 * 2 * tokens * tokens * width_ + 2 * tokens * width_ * width_
    ffn = 2 * 2 * tokens * width_ * mlp
    embed = 2 * tokens * 3 * patch * patch * width_
    return embed + layers * attn + (layers - 1) * ffn + 2 * tokens * width_ * visual.proj.shape[1]


def synthetic_images(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        low = rng.integers(0, 255, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
        t = torch.from_numpy(low).permute(2, 0, 1)[None].float()
        images.append(F.interpolate(t, size=(height, width), mode="bilinear")[0].permute(1, 2, 0).byte().numpy())
    return images


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device, fn):
    """(seconds, result) of one call, synchronised on CUDA."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def run_case(cc, compiled, name, images, vocabulary, device, baseline_autocast, report_flops, rounds):
    """Baseline and ours, interleaved ``rounds`` times with the order swapped every round; each side keeps its
    fastest round (timeit's rule), and the worst round's own ratio is reported too."""
    text = cc.encode_text(vocabulary.queries)

    def baseline():
        return [baseline_segment(cc.model.visual, image, text, vocabulary.query_to_class, cc.mean, cc.std,
                                 device=device, autocast=baseline_autocast) for image in images]

    if compiled is not None:
        compiled.segment(images[0], vocabulary)  # compilation happens here, outside the timing
    times = {"base": [], "ours": [], "compiled": []}
    base_mem, our_mem = PeakMemory(device), PeakMemory(device)
    for round_ in range(rounds):
        for side in ("base", "ours") if round_ % 2 == 0 else ("ours", "base"):  # neither always runs first
            if side == "base":
                with base_mem:
                    seconds, base = timed(device, baseline)
            else:
                with our_mem:
                    seconds, ours = timed(device, lambda: cc.segment_batch(images, vocabulary))
            times[side].append(seconds)
        if compiled is not None:
            times["compiled"].append(timed(device, lambda: compiled.segment_batch(images, vocabulary))[0])
    base_s, ours_s = min(times["base"]), min(times["ours"])
    windows = sum(n for _, _, n in base)
    agree = np.mean([np.mean(o.labels == b[0]) for o, b in zip(ours, base)])
    score_diff = max(float(np.abs(o.scores - b[1]).max()) for o, b in zip(ours, base))
    row = {
        "case": name, "images": len(images), "windows": windows,
        "base img/s": len(images) / base_s, "ours img/s": len(images) / ours_s,
        "ours win/s": windows / ours_s, "base MiB": base_mem.peak, "ours MiB": our_mem.peak,
        "speedup": base_s / ours_s, "worst round": min(b / o for b, o in zip(times["base"], times["ours"])),
        "labels equal": agree, "max |score diff|": score_diff,
    }
    if compiled is not None:
        row["compiled img/s"] = len(images) / min(times["compiled"])
        row["speedup compiled"] = base_s / min(times["compiled"])
    if report_flops:
        flops = windows * vit_window_flops(cc.model.visual, 448, 448)
        row["ours TFLOP/s"] = flops / ours_s / 1e12
        row["base TFLOP/s"] = flops / base_s / 1e12
    return row


def text_case(model, tokenizer, names, device):
    templates = DEFAULT_TEMPLATES

    def full_context():
        full = []
        for name in names:
            feats = model.encode_text(tokenizer([t.format(name) for t in templates]).to(device)).float()
            feats = F.normalize(feats, dim=-1).mean(0)
            full.append(F.normalize(feats, dim=-1))
        return torch.stack(full)

    with torch.inference_mode():
        full_seconds, full = timed(device, full_context)
        short_seconds, short = timed(device, lambda: encode_names(model, tokenizer, names, templates, device))
    return full_seconds, short_seconds, float((full - short).abs().max())


def memory_case(device, refine="none"):
    """A 6000x4000 image with the 171 COCO-Stuff classes through a small ViT (ViT-S-16, random)."""
    model = open_clip.create_model("ViT-S-16", pretrained=None).to(device).eval()
    cc = ClearCLIP(model, open_clip.get_tokenizer("ViT-S-16"))
    vocabulary = BENCHMARKS["coco_stuff"].vocabulary()
    image = synthetic_images(1, 4000, 6000)[0]
    templates = ("a photo of a {}.",)  # one template: the text side is not what this case measures
    cc.encode_text(vocabulary.queries, templates)
    rss_before = psutil.Process().memory_info().rss / 2**20
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        seg = cc.segment(image, vocabulary, templates=templates, refine=refine)
        seconds = time.perf_counter() - start
    straightforward = len(vocabulary.queries) * image.shape[0] * image.shape[1] * 4 * 2 / 2**30  # logits + softmax
    return seg, seconds, mem.peak, rss_before, straightforward


def pamr_case(cc, images, vocabulary, device):
    """Seconds per image of segment_batch without and with PAMR (default iterations and dilations)."""
    plain, _ = timed(device, lambda: cc.segment_batch(images, vocabulary))
    refined, _ = timed(device, lambda: cc.segment_batch(images, vocabulary, refine="pamr"))
    return plain / len(images), refined / len(images)


def print_table(rows):
    keys = list(rows[0])
    print(" | ".join(f"{k:>14}" for k in keys))
    for row in rows:
        print(" | ".join(f"{v:>14.3f}" if isinstance(v, float) else f"{str(v):>14}" for v in row.values()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="fewer images and classes; under 5 minutes on 2 cores")
    parser.add_argument("--precision", default=None, help="ours on CUDA: bf16 (default) or fp16; CPU: fp32")
    parser.add_argument("--compile", action="store_true", help="also time ClearCLIP(compile=True), after its warm-up")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    precision = "fp32" if device.type == "cpu" else (args.precision or "bf16")
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {os.cpu_count()} cpus"))

    for refine in ("none", "pamr"):
        seg, seconds, peak, before, straightforward = memory_case(device, refine)
        print(f"\nmemory, refine={refine}: 6000x4000 image, 171 classes, ViT-S-16 ({device}): {seconds:.1f} s; peak "
              f"process RSS {before + peak:.0f} MiB ({peak:.0f} MiB above the {before:.0f} MiB before the call); a "
              f"full-resolution logits + softmax pipeline would need {straightforward:.1f} GiB for those two tensors")

    model = open_clip.create_model("ViT-B-16", pretrained=None).to(device).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    cc = ClearCLIP(model, tokenizer, precision=precision)
    compiled = ClearCLIP(model, tokenizer, precision=precision, compile=True) if args.compile else None
    voc, stuff = BENCHMARKS["voc21"].vocabulary(), BENCHMARKS["coco_stuff"].vocabulary()
    n_small, n_hd = (2, 2) if args.quick else (8, 3)
    if device.type == "cuda":
        n_small, n_hd = n_small * 8, n_hd * 8
    cases = [("500x375 / 21", synthetic_images(n_small, 375, 500), voc),
             ("1920x1080 / 171", synthetic_images(n_hd, 1080, 1920, 1), stuff)]
    if not args.quick:
        cases += [("500x375 / 171", synthetic_images(n_small, 375, 500, 2), stuff),
                  ("1920x1080 / 21", synthetic_images(n_hd, 1080, 1920, 3), voc)]
    baseline_autocast = torch.float16 if device.type == "cuda" else None
    cc.segment(cases[0][1][0], voc)  # warm-up (allocations, kernels)
    rounds = 2 if args.quick else 3
    rows = [run_case(cc, compiled, name, images, vocab, device, baseline_autocast, device.type == "cuda", rounds)
            for name, images, vocab in cases]
    print(f"\nsegmentation, best of {rounds} interleaved rounds: baseline = official code one window at a time "
          f"({'fp16' if baseline_autocast else 'fp32'}); ours = ClearCLIP.segment_batch ({precision}, {cc.window_batch_size} windows per batch)"
          + ("; compiled = the same with compile=True (after its warm-up)" if compiled else ""))
    print_table(rows)

    print(f"\nPAMR (10 iterations, dilations 8 and 16), seconds per image, {device}:")
    for name, images, vocab in cases[:2]:
        plain, refined = pamr_case(cc, images[:1] if device.type == "cpu" else images, vocab, device)
        print(f"  {name:<16} without {plain:7.2f} s, with PAMR {refined:7.2f} s ({refined / plain:.1f}x)")

    names = stuff.names[:8] if args.quick else stuff.names
    full_s, short_s, diff = text_case(model, tokenizer, names, device)
    print(f"\ntext: {len(names)} classes x 80 templates: full 77-token context {full_s:.1f} s, truncated {short_s:.1f} s, "
          f"speedup {full_s / short_s:.2f}x, max |difference| {diff:.2e}")

    return 0


if __name__ == "__main__":
    sys.exit(main())
