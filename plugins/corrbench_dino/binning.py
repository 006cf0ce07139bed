"""dino-vit-features' log-binning of a descriptor map (baselines.md B4), vectorised.

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


def log_bin(x: torch.Tensor, hierarchy: int = 2) -> torch.Tensor:
    """B×D×h×w → B×(D·(1 + 8·hierarchy))×h×w."""
    if not isinstance(hierarchy, int) or hierarchy < 1:
        raise UsageError(f"hierarchy {hierarchy!r} must be a positive integer")
    h, w = x.shape[-2:]
    bins = []
    for k in range(hierarchy):
        s = 3 ** k
        pooled = x if s == 1 else F.avg_pool2d(x, kernel_size=s, stride=1, padding=s // 2, count_include_pad=False)
        # replicate padding by s makes P[clamp(y + dy), clamp(x + dx)] a plain slice
        padded = F.pad(pooled, (s, s, s, s), mode="replicate")
        for dy in (-s, 0, s):
            for dx in (-s, 0, s):
                if k > 0 and dy == 0 and dx == 0:
                    continue
                bins.append(padded[..., s + dy:s + dy + h, s + dx:s + dx + w])
    return torch.cat(bins, dim=1)
