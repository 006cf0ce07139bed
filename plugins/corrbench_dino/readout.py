"""dino-vit-features' keypoint transfer: the patch that holds the keypoint, cosine argmax, patch centre.

The authors' PCK recipe (dino-vit-features issue #8, paper-protocol.md §6.1): take the patch containing
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
