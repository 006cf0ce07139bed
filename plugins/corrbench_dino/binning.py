"""dino-vit-features' log-binning of a descriptor map (docs/methods.md#dino-and-dinov2), vectorised.

For level k = 0 … hierarchy−1 with spacing s = 3^k the map is average-pooled with a s×s window
(stride 1, only in-image cells counted; level 0 is the map itself) and sampled at the nine offsets
(dy, dx) ∈ {−s, 0, s}², dy outer, dx inner, clamping out-of-range positions to the border (not zeros).
Levels after the first skip the centre offset. Bins are concatenated bin-major, each bin holding all
D channels: ``1 + 8 · hierarchy`` bins, i.e. 17 · 384 = 6,528 channels for ViT-S at hierarchy 2.
The upstream per-pixel Python loop gives the same numbers (``tests/test_dino.py`` checks it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from corrbench.errors import UsageError


def num_bins(hierarchy: int) -> int:
    return 1 + 8 * hierarchy


def bin_offsets(hierarchy: int) -> list[tuple[int, int, int]]:
    """(level, dy, dx) of every bin, in output order."""
    if not isinstance(hierarchy, int) or hierarchy < 1:
        raise UsageError(f"hierarchy {hierarchy!r} must be a positive integer")
    out = []
    for k in range(hierarchy):
        s = 3 ** k
        out += [(k, dy, dx) for dy in (-s, 0, s) for dx in (-s, 0, s) if k == 0 or dy or dx]
    return out


def pooled_levels(x: torch.Tensor, hierarchy: int) -> list[torch.Tensor]:
    """P_0 … P_{hierarchy−1}: the map average-pooled over 3^k × 3^k in-image cells (P_0 is the map)."""
    return [x if k == 0 else F.avg_pool2d(x, kernel_size=3 ** k, stride=1, padding=3 ** k // 2,
                                          count_include_pad=False)
            for k in range(hierarchy)]


def log_bin(x: torch.Tensor, hierarchy: int = 2) -> torch.Tensor:
    """B×D×h×w → B×(D·(1 + 8·hierarchy))×h×w."""
    offsets = bin_offsets(hierarchy)
    h, w = x.shape[-2:]
    levels = pooled_levels(x, hierarchy)
    padded = [F.pad(p, (3 ** k,) * 4, mode="replicate") for k, p in enumerate(levels)]
    # replicate padding by s makes P[clamp(y + dy), clamp(x + dx)] a plain slice
    bins = [padded[k][..., 3 ** k + dy:3 ** k + dy + h, 3 ** k + dx:3 ** k + dx + w] for k, dy, dx in offsets]
    return torch.cat(bins, dim=1)
