"""Nearest-neighbour keypoint transfer, exactly as DHF evaluates (paper-protocol.md §7.3).

1. Both descriptor maps are bilinearly upsampled to their load size (``align_corners=False`` for maps
   whose cells tile the image; any other :class:`FeatureGrid` is resampled at each pixel's position
   in cell coordinates, clamped at the border).
2. Source keypoints (load frame) are rounded and clipped; the source descriptor is read there.
3. Cosine similarity against every target pixel; the argmax pixel is the prediction.

The naive form materialises the C × H × W upsampled target map (2 GB for SD-Concat-All at 224²). Here
the upsampling is linear and per channel, so the dot products and squared norms are accumulated over
channel chunks: memory is bounded by ``chunk_bytes`` and the result equals the naive computation
(``tests/test_readout.py`` checks both against each other).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .api import FeatureGrid

DEFAULT_CHUNK_BYTES = 32 * 2**20


def _sampling_grid(grid: FeatureGrid, load_hw: tuple[int, int], feat_hw: tuple[int, int],
                   device: torch.device) -> torch.Tensor:
    """grid_sample coordinates (align_corners=True) of every load pixel in the map's cell space."""
    (H, W), (h, w) = load_hw, feat_hw
    xs = (torch.arange(W, dtype=torch.float64, device=device) - grid.offset_x) / grid.stride_x
    ys = (torch.arange(H, dtype=torch.float64, device=device) - grid.offset_y) / grid.stride_y
    gx = 2 * xs / (w - 1) - 1 if w > 1 else torch.zeros_like(xs)
    gy = 2 * ys / (h - 1) - 1 if h > 1 else torch.zeros_like(ys)
    yy, xx = torch.meshgrid(gy, gx, indexing="ij")
    return torch.stack([xx, yy], dim=-1).unsqueeze(0)  # 1×H×W×2


def upsample(fmap: torch.Tensor, grid: FeatureGrid, load_hw: tuple[int, int],
             sampling: torch.Tensor | None = None) -> torch.Tensor:
    """C×h×w → C×H×W: the descriptor of every load-frame pixel."""
    feat_hw = tuple(fmap.shape[-2:])
    x = fmap.unsqueeze(0).float()
    if grid.is_spanning(load_hw, feat_hw):
        return F.interpolate(x, size=load_hw, mode="bilinear", align_corners=False)[0]
    if sampling is None:
        sampling = _sampling_grid(grid, load_hw, feat_hw, fmap.device)
    return F.grid_sample(x, sampling.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=True)[0]


def source_pixels(points_load: torch.Tensor, load_hw: tuple[int, int]) -> torch.Tensor:
    """Round and clip load-frame (x, y) points to integer pixels (N×2, long)."""
    H, W = load_hw
    px = torch.round(points_load.double()).long()
    px[:, 0] = px[:, 0].clamp(0, W - 1)
    px[:, 1] = px[:, 1].clamp(0, H - 1)
    return px


def nn_transfer(source_map: torch.Tensor, target_map: torch.Tensor,
                source_grid: FeatureGrid, target_grid: FeatureGrid,
                source_load_hw: tuple[int, int], target_load_hw: tuple[int, int],
                source_points: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Predicted target points (N×2 float, x then y, integer pixels of the target load frame)."""
    C = source_map.shape[0]
    if target_map.shape[0] != C:
        raise ValueError(f"source map has {C} channels, target map {target_map.shape[0]}")
    src_px = source_pixels(torch.as_tensor(source_points), source_load_hw).to(source_map.device)
    Hs, Ws = source_load_hw
    Ht, Wt = target_load_hw
    per_channel = max(Hs * Ws, Ht * Wt) * 4
    step = max(1, min(C, chunk_bytes // per_channel))
    s_sampling = None if source_grid.is_spanning(source_load_hw, tuple(source_map.shape[-2:])) else \
        _sampling_grid(source_grid, source_load_hw, tuple(source_map.shape[-2:]), source_map.device)
    t_sampling = None if target_grid.is_spanning(target_load_hw, tuple(target_map.shape[-2:])) else \
        _sampling_grid(target_grid, target_load_hw, tuple(target_map.shape[-2:]), target_map.device)

    n = src_px.shape[0]
    dots = torch.zeros(n, Ht * Wt, dtype=torch.float32, device=target_map.device)
    t_norm2 = torch.zeros(Ht * Wt, dtype=torch.float32, device=target_map.device)
    for c0 in range(0, C, step):
        s_up = upsample(source_map[c0:c0 + step], source_grid, source_load_hw, s_sampling)
        s_vec = s_up[:, src_px[:, 1], src_px[:, 0]].T  # N × c
        t_up = upsample(target_map[c0:c0 + step], target_grid, target_load_hw, t_sampling).reshape(s_vec.shape[1], -1)
        dots += s_vec.to(t_up.device) @ t_up
        t_norm2 += (t_up * t_up).sum(0)
    # |s| is a positive constant per row, so it cannot change the argmax; only the target norm matters
    cos = dots / t_norm2.sqrt().clamp_min(1e-12)
    idx = cos.argmax(dim=1)
    return torch.stack([idx % Wt, idx // Wt], dim=1).to(torch.float64)


def nn_transfer_naive(source_map, target_map, source_grid, target_grid, source_load_hw, target_load_hw,
                      source_points) -> torch.Tensor:
    """The reference form: full upsampled maps, normalised, one dense similarity. For tests only."""
    src_px = source_pixels(torch.as_tensor(source_points), source_load_hw)
    s_up = upsample(source_map, source_grid, source_load_hw)
    t_up = upsample(target_map, target_grid, target_load_hw)
    s_vec = F.normalize(s_up[:, src_px[:, 1], src_px[:, 0]].T, dim=1)
    t_vec = F.normalize(t_up.reshape(t_up.shape[0], -1), dim=0)
    idx = (s_vec @ t_vec).argmax(dim=1)
    Wt = target_load_hw[1]
    return torch.stack([idx % Wt, idx // Wt], dim=1).to(torch.float64)
