"""PAMR written plainly from the method note (shared/method/pamr.md), in the original module's way: 3x3
kernels applied with dilation by conv2d, every neighbour stacked, for comparison with clearclip.refine."""

import torch
import torch.nn.functional as F


def _kernels(positions):
    weight = torch.zeros(len(positions), 1, 3, 3)
    for i, (y, x) in enumerate(positions):
        weight[i, 0, y, x] = 1
    return weight


NEIGHBOURS = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
STENCIL = [(y, x) for y in range(3) for x in range(3)]


def _stack(x, positions, dilations, difference=False):
    """(B, K, P·D, H, W): the values at each kernel position, for each dilation (replicate borders)."""
    b, k, h, w = x.shape
    x = x.reshape(b * k, 1, h, w)
    kernel = _kernels(positions)
    if difference:
        kernel[:, 0, 1, 1] -= 1  # neighbour minus centre
    out = [F.conv2d(F.pad(x, [d] * 4, mode="replicate"), kernel, dilation=d) for d in dilations]
    return torch.cat(out, 1).reshape(b, k, -1, h, w)


def reference_pamr(image, mask, iterations=10, dilations=(8, 16)):
    """image (K, H, W) guide, mask (C, H, W) logits -> refined (C, H, W)."""
    x, m = image[None], mask[None]
    std = _stack(x, STENCIL, dilations).std(2, keepdim=True)
    affinity = -_stack(x, NEIGHBOURS, dilations, difference=True).abs() / (1e-8 + 0.1 * std)
    affinity = F.softmax(affinity.mean(1, keepdim=True), 2)
    for _ in range(iterations):
        m = (_stack(m, NEIGHBOURS, dilations) * affinity).sum(2)
    return m[0]
