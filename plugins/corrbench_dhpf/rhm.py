"""Hyperpixel geometry, Regularized Hough Matching and keypoint transfer (docs/methods.md#dhpf-and-hpf).

Hyperpixels live on a grid with ``jump`` pixels between cells; cell (x, y) owns the box
[jump·x − rf//2, jump·y − rf//2, jump·x + rf//2, jump·y + rf//2], centred at (jump·x, jump·y) (DHPF: jump 4,
rf 11 on a 60×60 grid at 240²). All coordinates are load-frame pixels; cells are row-major, x fastest.

RHM votes every match (i, j) with its appearance score into a translation histogram: the offset
(W_s, H_s) − c(i) + c(j) falls in a (W_s + W_t) × (H_s + H_t) space of ``ncells`` square bins. The
histogram is smoothed with a normalised 7×7 Gaussian (σ = 7/2/2.354, zero padding) and every match gets
the smoothed value of its bin as geometric score. DHPF transfers a keypoint k as
k + mean over the source boxes that contain k (borders inclusive) of c(j*(i)) − c(i), where j*(i) is the
best target cell of source cell i.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def cell_centres(grid_hw: tuple[int, int], jump: float, device=None) -> torch.Tensor:
    """(h·w)×2 centres (x, y) of a hyperpixel grid, row-major."""
    h, w = grid_hw
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float64),
                            torch.arange(w, device=device, dtype=torch.float64), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], 1) * jump


def boxes(centres: torch.Tensor, rf: int) -> torch.Tensor:
    half = rf // 2
    return torch.cat([centres - half, centres + half], 1)


def keep_inside(box: torch.Tensor, load_hw: tuple[int, int], margin: float) -> torch.Tensor:
    """HPF's pruning: boxes may stick out of the image by less than ``margin`` (one jump) only."""
    H, W = load_hw
    return (box[:, 0] >= -margin) & (box[:, 1] >= -margin) & (box[:, 2] < W + margin) & (box[:, 3] < H + margin)


def appearance(src: torch.Tensor, tgt: torch.Tensor, exponent: int, eps: float) -> torch.Tensor:
    """N×M scores ReLU(⟨s, t⟩ / (‖s‖‖t‖ + eps))^exponent for N×C and M×C hyperpixels.

    DHPF: exponent 2, eps 1e-3; HPF: exponent 3, no eps (zero-norm vectors give 0, not NaN).
    """
    src, tgt = src.float(), tgt.float()
    dots = src @ tgt.T
    norms = src.norm(dim=1)[:, None] * tgt.norm(dim=1)[None, :] + eps
    return (dots / norms.clamp_min(1e-30)).clamp_min(0).pow(exponent)


def hough_space(src_wh: tuple[float, float], tgt_wh: tuple[float, float], ncells: int) -> tuple[int, int, float]:
    """(bins along x, bins along y, cell side) of the translation space."""
    width, height = src_wh[0] + tgt_wh[0], src_wh[1] + tgt_wh[1]
    side = math.sqrt(width * height / ncells)
    return int(width / side) + 1, int(height / side) + 1, side


def bin_ids(src_centres: torch.Tensor, tgt_centres: torch.Tensor, src_wh: tuple[float, float],
            tgt_wh: tuple[float, float], ncells: int) -> tuple[torch.Tensor, int, int]:
    """N×M flat bin index of every match's vote, and the space's (nx, ny)."""
    nx, ny, side = hough_space(src_wh, tgt_wh, ncells)
    ids = None
    for axis, n, stride in ((0, nx, 1), (1, ny, nx)):  # one axis at a time: N×M tensors are large (3,600²)
        vote = (src_wh[axis] - src_centres[:, axis])[:, None] + tgt_centres[None, :, axis]
        # the authors' .long() truncates; votes are non-negative on the grids used, the clamp is a guard
        b = torch.div(vote, side).trunc_().long().clamp_(0, n - 1)
        ids = b * stride if ids is None else ids.add_(b * stride)
    return ids, nx, ny


def gaussian2d(side: int = 7) -> torch.Tensor:
    half = side // 2
    sigma = side / 2 / 2.354
    r = torch.arange(-half, half + 1, dtype=torch.float64)
    g = torch.exp(-(r[None, :] ** 2 + r[:, None] ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def geometric_score(votes: torch.Tensor, ids: torch.Tensor, nx: int, ny: int, gauss_side: int = 7) -> torch.Tensor:
    """RHM's N×M geometric score: the Gaussian-smoothed vote histogram read at each match's bin."""
    space = torch.zeros(nx * ny, dtype=votes.dtype, device=votes.device)
    space.index_add_(0, ids.reshape(-1), votes.reshape(-1))
    kernel = gaussian2d(gauss_side).to(votes)
    smooth = F.conv2d(space.view(1, 1, ny, nx), kernel[None, None], padding=gauss_side // 2).reshape(-1)
    return smooth[ids]


def mutual_nn(corr: torch.Tensor) -> torch.Tensor:
    """DHPF's re-weighting C ⊙ (C / row max) ⊙ (C / column max); an all-zero row or column stays zero."""
    row = corr.max(dim=1, keepdim=True).values
    col = corr.max(dim=0, keepdim=True).values
    row = torch.where(row == 0, torch.full_like(row, 1e-30), row)
    col = torch.where(col == 0, torch.full_like(col, 1e-30), col)
    return corr * (corr / row) * (corr / col)


def transfer_keypoints(corr: torch.Tensor, src_centres: torch.Tensor, tgt_centres: torch.Tensor, rf: int,
                       points: torch.Tensor) -> torch.Tensor:
    """DHPF/HPF keypoint transfer: neighbour-averaged displacement of the best matches.

    A keypoint that no source box covers (possible only outside the image) uses its nearest cell.
    """
    best = corr.argmax(dim=1)  # j*(i)
    disp = tgt_centres[best] - src_centres  # N×2
    pts = points.to(src_centres)
    half = rf // 2
    diff = (pts[:, None, :] - src_centres[None, :, :]).abs()  # K×N×2
    inside = ((diff[..., 0] <= half) & (diff[..., 1] <= half)).to(disp.dtype)
    count = inside.sum(1)
    nearest = diff.pow(2).sum(-1).argmin(1)
    fallback = torch.nn.functional.one_hot(nearest, src_centres.shape[0]).to(disp.dtype)
    weights = torch.where(count[:, None] > 0, inside, fallback)
    return pts + (weights @ disp) / weights.sum(1, keepdim=True)
