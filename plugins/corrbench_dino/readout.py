"""dino-vit-features' keypoint transfer: the patch that holds the keypoint, cosine argmax, patch centre.

The authors' PCK recipe (dino-vit-features issue #8; docs/methods.md#dino-and-dinov2): take the patch containing
the source keypoint, compare its descriptor by cosine with every target descriptor, and predict the
centre pixel of the best target patch. With overlapping patches a pixel lies in several; the one whose
centre is nearest is taken. Centres come from the maps' :class:`~corrbench.FeatureGrid`
(``FeatureGrid.patches``: cell j at ``j · stride + (patch − 1) / 2`` in pixel-index coordinates, which is
the upstream ``j · stride + patch // 2`` in corner coordinates; the 0.5 px is the convention, not a shift).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from corrbench.api import FeatureGrid
from corrbench.readouts import Readout, ReadoutInput, ReadoutOutput

#: target cells compared per chunk of source points (bounds memory for big maps)
_CHUNK = 256


def nearest_cell(points: torch.Tensor, grid: FeatureGrid,
                 feat_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of the cell whose centre is nearest to each (x, y) point (ties go up), clipped."""
    h, w = feat_hw
    pts = points.double()
    ix = torch.floor((pts[:, 0] - grid.offset_x) / grid.stride_x + 0.5).long().clamp(0, w - 1)
    iy = torch.floor((pts[:, 1] - grid.offset_y) / grid.stride_y + 0.5).long().clamp(0, h - 1)
    return iy, ix


def cell_centres(iy: torch.Tensor, ix: torch.Tensor, grid: FeatureGrid) -> torch.Tensor:
    return torch.stack([grid.offset_x + ix.double() * grid.stride_x, grid.offset_y + iy.double() * grid.stride_y], 1)


def patch_centre_transfer(source_map: torch.Tensor, target_map: torch.Tensor, source_grid: FeatureGrid,
                          target_grid: FeatureGrid, source_points: torch.Tensor) -> torch.Tensor:
    """N×2 target points (x, y; target load frame) for N×2 source points (source load frame)."""
    C, hs, ws = source_map.shape
    _, ht, wt = target_map.shape
    iy, ix = nearest_cell(torch.as_tensor(source_points).to(source_map.device), source_grid, (hs, ws))
    src = F.normalize(source_map[:, iy, ix].T.float(), dim=1)  # N×C
    tgt = F.normalize(target_map.reshape(C, -1).float(), dim=0)  # C×(ht·wt)
    best = torch.cat([(src[i:i + _CHUNK] @ tgt).argmax(dim=1) for i in range(0, src.shape[0], _CHUNK)]) \
        if src.shape[0] else torch.zeros(0, dtype=torch.long, device=src.device)
    return cell_centres(best // wt, best % wt, target_grid)


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[..., y, x] = x[..., clamp(y + dy), clamp(x + dx)]`` (border-replicate, as the binning clamps)."""
    if dy == 0 and dx == 0:
        return x
    h, w = x.shape[-2:]
    rows = (torch.arange(h, device=x.device) + dy).clamp_(0, h - 1)
    cols = (torch.arange(w, device=x.device) + dx).clamp_(0, w - 1)
    return x.index_select(-2, rows).index_select(-1, cols)


def binned_patch_centre_transfer(source_map: torch.Tensor, target_map: torch.Tensor, source_grid: FeatureGrid,
                                 target_grid: FeatureGrid, source_points: torch.Tensor, hierarchy: int) -> torch.Tensor:
    """:func:`patch_centre_transfer` on log-binned maps without materialising the binned target.

    A binned descriptor is the concatenation of shifted, pooled copies of the map (:mod:`.binning`), so
    its dot product with a source descriptor is a sum over bins of (source bin · pooled map) read at the
    bin's shifted position, and its squared norm the same sum of per-cell squared norms. Computing that
    per pooling level needs N·h·w numbers instead of the 17·D·h·w of the binned map (79 MB for ViT-S at
    55×55); the result is the same cosine argmax (``tests/test_dino.py`` checks it against the
    materialised form).
    """
    from .binning import bin_offsets, pooled_levels

    C, hs, ws = source_map.shape
    _, ht, wt = target_map.shape
    iy, ix = nearest_cell(torch.as_tensor(source_points).to(source_map.device), source_grid, (hs, ws))
    offsets = bin_offsets(hierarchy)
    s_levels = pooled_levels(source_map.unsqueeze(0).float(), hierarchy)
    t_levels = pooled_levels(target_map.unsqueeze(0).float(), hierarchy)
    # source descriptors at the keypoints only: one D-vector per bin, read at the clamped offset cell
    s_bins = torch.stack([s_levels[k][0][:, (iy + dy).clamp(0, hs - 1), (ix + dx).clamp(0, ws - 1)].T
                          for k, dy, dx in offsets], 1)  # N×bins×D
    s_bins = s_bins / s_bins.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
    N = s_bins.shape[0]
    dots = torch.zeros(N, ht, wt, device=target_map.device)
    norm2 = torch.zeros(ht, wt, device=target_map.device)
    for k, level in enumerate(t_levels):
        flat = level[0].reshape(C, -1)
        sq = flat.pow(2).sum(0).view(ht, wt)
        bins = [b for b, (kk, _, _) in enumerate(offsets) if kk == k]
        # one product per level: every bin of the level against the pooled map, then each shifted in place
        prods = (s_bins[:, bins].reshape(-1, C) @ flat).view(N, len(bins), ht, wt)
        for j, b in enumerate(bins):
            _, dy, dx = offsets[b]
            dots += _shift(prods[:, j], dy, dx)
            norm2 += _shift(sq, dy, dx)
    best = (dots / norm2.sqrt().clamp_min(1e-12)).flatten(1).argmax(dim=1)
    return cell_centres(best // wt, best % wt, target_grid)


class PatchCentre(Readout):
    """dino-vit-features: the patch holding the keypoint, cosine argmax over target patches, its centre."""

    name = "patch-centre"
    description = "the patch holding the keypoint, cosine argmax over target patches, the patch centre (dino-vit-features)"

    def transfer(self, x: ReadoutInput) -> ReadoutOutput:
        own = getattr(x.descriptor, "patch_centre_transfer", None)  # a method may know a faster exact form
        if own is not None:
            return ReadoutOutput(own(x.source_map, x.target_map, x.source_grid, x.target_grid, x.source_points))
        d = x.descriptor
        return ReadoutOutput(patch_centre_transfer(d.readout_features(x.source_map), d.readout_features(x.target_map),
                                                   x.source_grid, x.target_grid, x.source_points))
