"""Nearest-neighbour keypoint transfer, exactly as DHF evaluates (docs/protocol.md#nearest-neighbour-readout).

The protocol: upsample both descriptor maps bilinearly to the load size (``align_corners=False``),
read the source descriptor at the rounded, clipped keypoint, take the cosine argmax over every target
pixel. Done naively that materialises a C × H × W map per image per pair (2 GB for SD-Concat-All at
224²) and dominates the run time.

Bilinear upsampling is separable and linear: ``U(T) = A_y · T · A_xᵀ`` per channel, each row of
``A`` holding at most two weights. Hence, without ever forming ``U(T)``:

- the dot products ``s · U(T)`` are the bilinear upsampling of the low-resolution map ``s · T``;
- the squared norms ``|U(T)[y, x]|²`` are a weighted sum of inner products between the (at most)
  four neighbouring cells each output pixel mixes, computed once per map at feature resolution;
- the source descriptor at a pixel mixes its four corner cells with the same weights.

The cost drops from O(C·H·W) per pair to O(N·C·h·w + N·H·W), and the result equals the naive
computation up to floating-point rounding (``tests/test_readout.py`` compares the two on maps of
every grid kind, using torch's own ``interpolate`` and ``grid_sample`` as the reference).

A :class:`FeatureGrid` places cell ``j`` at load pixel ``offset + j·stride``; a pixel's position in
cell units is clamped to the map (border padding). For the default grid whose cells tile the image
this is exactly ``F.interpolate(..., mode="bilinear", align_corners=False)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .api import FeatureGrid

#: Bump when the readout's arithmetic changes: cached predictions (see runner.py) are keyed by it.
READOUT_VERSION = "1"


def axis_weights(out_size: int, in_size: int, stride: float, offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For each output pixel: the lower input cell ``i0`` and the weight of cell ``i0 + 1``."""
    u = (torch.arange(out_size, dtype=torch.float64) - offset) / stride
    u = u.clamp(0, in_size - 1)
    i0 = u.floor().long().clamp(max=in_size - 1)
    return i0, u - i0


def interpolation_matrix(out_size: int, in_size: int, stride: float, offset: float) -> torch.Tensor:
    """The out × in matrix of the 1-D bilinear resampling (≤ 2 non-zeros per row)."""
    i0, w1 = axis_weights(out_size, in_size, stride, offset)
    m = torch.zeros(out_size, in_size + 1, dtype=torch.float64)
    rows = torch.arange(out_size)
    m[rows, i0] += 1 - w1
    m[rows, i0 + 1] += w1  # column in_size only ever gets weight 0 (clamped at the border)
    return m[:, :in_size]


def _pad_replicate(t: torch.Tensor) -> torch.Tensor:
    """C×h×w → C×(h+1)×(w+1) repeating the last row and column, so cell i0+1 always exists."""
    return F.pad(t.unsqueeze(0), (0, 1, 0, 1), mode="replicate")[0]


def _axes(grid: FeatureGrid, load_hw, feat_hw):
    (H, W), (h, w) = load_hw, feat_hw
    i0, wy = axis_weights(H, h, grid.stride_y, grid.offset_y)
    j0, wx = axis_weights(W, w, grid.stride_x, grid.offset_x)
    return i0, wy, j0, wx


def target_norms(target_map: torch.Tensor, grid: FeatureGrid, load_hw: tuple[int, int]) -> torch.Tensor:
    """|U(T)[y, x]| for every load pixel (H×W, float64), from neighbour inner products at feature resolution."""
    t = _pad_replicate(target_map.double())
    h, w = target_map.shape[-2:]
    P, Q, R, S = t[:, :h, :w], t[:, :h, 1:], t[:, 1:, :w], t[:, 1:, 1:]
    n = (t * t).sum(0)  # (h+1)×(w+1)
    hprod = (t[:, :, :w] * t[:, :, 1:]).sum(0)  # row i, columns j and j+1
    vprod = (t[:, :h, :] * t[:, 1:, :]).sum(0)  # column j, rows i and i+1
    diag = (P * S).sum(0)
    anti = (R * Q).sum(0)
    i0, wy, j0, wx = _axes(grid, load_hw, (h, w))
    I, J = i0[:, None], j0[None, :]
    a, b = (1 - wy)[:, None], wy[:, None]  # weights of rows i0, i0+1
    c, d = (1 - wx)[None, :], wx[None, :]  # weights of columns j0, j0+1
    wP, wQ, wR, wS = a * c, a * d, b * c, b * d
    norm2 = (wP * wP * n[I, J] + wQ * wQ * n[I, J + 1] + wR * wR * n[I + 1, J] + wS * wS * n[I + 1, J + 1]
             + 2 * wP * wQ * hprod[I, J] + 2 * wR * wS * hprod[I + 1, J]
             + 2 * wP * wR * vprod[I, J] + 2 * wQ * wS * vprod[I, J + 1]
             + 2 * wP * wS * diag[I, J] + 2 * wQ * wR * anti[I, J])
    return norm2.clamp_min(0).sqrt()


def source_pixels(points_load: torch.Tensor, load_hw: tuple[int, int]) -> torch.Tensor:
    """Round and clip load-frame (x, y) points to integer pixels (N×2, long)."""
    H, W = load_hw
    px = torch.round(torch.as_tensor(points_load).double()).long()
    px[:, 0] = px[:, 0].clamp(0, W - 1)
    px[:, 1] = px[:, 1].clamp(0, H - 1)
    return px


def sample_points(fmap: torch.Tensor, grid: FeatureGrid, load_hw: tuple[int, int], px: torch.Tensor) -> torch.Tensor:
    """The upsampled descriptors U(F) at integer load pixels ``px`` (N×2 x, y) → N×C (float64)."""
    h, w = fmap.shape[-2:]
    i0, wy, j0, wx = _axes(grid, load_hw, (h, w))
    ys, xs = px[:, 1], px[:, 0]
    I, J, b, d = i0[ys], j0[xs], wy[ys], wx[xs]
    I1, J1 = (I + 1).clamp(max=h - 1), (J + 1).clamp(max=w - 1)  # clamping = the replicated border

    def cells(rows, cols):  # gather the corner cells first, convert only those
        return fmap[:, rows, cols].T.double()

    return (((1 - b) * (1 - d))[:, None] * cells(I, J) + ((1 - b) * d)[:, None] * cells(I, J1)
            + (b * (1 - d))[:, None] * cells(I1, J) + (b * d)[:, None] * cells(I1, J1))


def nn_transfer(source_map: torch.Tensor, target_map: torch.Tensor,
                source_grid: FeatureGrid, target_grid: FeatureGrid,
                source_load_hw: tuple[int, int], target_load_hw: tuple[int, int],
                source_points: torch.Tensor, target_norm: torch.Tensor | None = None,
                return_margin: bool = False):
    """Predicted target points (N×2 float64, x then y, integer pixels of the target load frame).

    ``target_norm`` (from :func:`target_norms`) may be passed in when one target serves many pairs.

    With ``return_margin`` the result is ``(points, margins)``: the same points and an N×2 float64
    tensor of cosine-similarity gaps (see :func:`match_margins`), column 0 the *local* margin (best
    minus second best over all target pixels) and column 1 the *far* margin (best minus the best pixel
    more than one pixel away from the argmax, in x or y). They tell how much the similarities would have
    to move to change the match: a far margin ``m`` means no perturbation of the cosines below ``m / 2``
    can move the prediction by more than one pixel; a local margin ``m`` means it cannot move at all.
    """
    cos, s_norm = _scaled_cosines(source_map, target_map, source_grid, target_grid, source_load_hw,
                                  target_load_hw, source_points, target_norm)
    Wt = target_load_hw[1]
    idx = cos.reshape(cos.shape[0], -1).argmax(dim=1)
    points = torch.stack([idx % Wt, idx // Wt], dim=1).to(torch.float64)
    if not return_margin:
        return points
    # divide by |s| only now (the argmax above is computed exactly as without margins)
    return points, match_margins(cos / s_norm[:, None, None], idx)


def mutual_nn_transfer(source_map: torch.Tensor, target_map: torch.Tensor,
                       source_grid: FeatureGrid, target_grid: FeatureGrid,
                       source_load_hw: tuple[int, int], target_load_hw: tuple[int, int],
                       source_points: torch.Tensor, radius: float,
                       target_norm: torch.Tensor | None = None, source_norm: torch.Tensor | None = None):
    """:func:`nn_transfer` plus a cycle check: ``(points, margins, back, rejected)``.

    ``points`` and ``margins`` are exactly those of ``nn_transfer(..., return_margin=True)``. ``back``
    (N×2 float64, source load pixels) is the nearest neighbour in the upsampled *source* map of the
    upsampled target descriptor at each predicted pixel: the same exact separable computation with the
    roles swapped (the predicted points are integer pixels, so the backward lookup reads them without
    rounding). ``rejected`` (N bools) is True where ``back`` lies farther than ``radius`` (Euclidean,
    source load pixels) from the keypoint's rounded, clipped source pixel — the pixel whose descriptor
    was matched, so a keypoint that returns to itself is kept at ``radius = 0``.
    ``source_norm`` is :func:`target_norms` of the source map (pass it when one source serves many pairs).
    """
    points, margins = nn_transfer(source_map, target_map, source_grid, target_grid, source_load_hw,
                                  target_load_hw, source_points, target_norm=target_norm, return_margin=True)
    back = nn_transfer(target_map, source_map, target_grid, source_grid, target_load_hw, source_load_hw,
                       points, target_norm=source_norm)
    start = source_pixels(source_points, source_load_hw).double().to(back.device)
    # squared integer offsets are exact in float64: the comparison has no round-off near the boundary
    rejected = ((back - start) ** 2).sum(dim=1) > float(radius) ** 2
    return points, margins, back, rejected


def _scaled_cosines(source_map, target_map, source_grid, target_grid, source_load_hw, target_load_hw,
                    source_points, target_norm=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N×H×W cosines times |s|, |s|): every target pixel of the upsampled map, by the separable algebra.

    |s| is a positive constant per row: it cannot move an argmax, so the argmax readout never divides by it.
    """
    C, h, w = target_map.shape
    if source_map.shape[0] != C:
        raise ValueError(f"source map has {source_map.shape[0]} channels, target map {C}")
    px = source_pixels(source_points, source_load_hw)
    s = sample_points(source_map, source_grid, source_load_hw, px)  # N×C
    low = (s @ target_map.double().reshape(C, h * w)).reshape(-1, h, w)  # N×h×w: s · T per cell
    Ht, Wt = target_load_hw
    Ay = interpolation_matrix(Ht, h, target_grid.stride_y, target_grid.offset_y)
    Ax = interpolation_matrix(Wt, w, target_grid.stride_x, target_grid.offset_x)
    dots = Ay @ low @ Ax.T  # N×H×W: s · U(T)
    if target_norm is None:
        target_norm = target_norms(target_map, target_grid, target_load_hw)
    return dots / target_norm.clamp_min(1e-12), s.norm(dim=1).clamp_min(1e-12)


def cosine_maps(source_map: torch.Tensor, target_map: torch.Tensor, source_grid: FeatureGrid,
                target_grid: FeatureGrid, source_load_hw: tuple[int, int], target_load_hw: tuple[int, int],
                source_points: torch.Tensor, target_norm: torch.Tensor | None = None) -> torch.Tensor:
    """N×H×W float64: the cosine similarity of each source keypoint's feature (sampled bilinearly, as
    :func:`nn_transfer` does) with every pixel of the bilinearly upsampled target map — the exact map that
    the soft readouts (:mod:`corrbench.readouts`) weigh."""
    scaled, s_norm = _scaled_cosines(source_map, target_map, source_grid, target_grid, source_load_hw,
                                     target_load_hw, source_points, target_norm)
    return scaled / s_norm[:, None, None]


def match_margins(cos: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
    """Per row of an N×H×W similarity map: N×2 float64 ``[local, far]`` margins of its argmax.

    ``local`` = best − second best over all pixels (0 for a tie, e.g. identical border pixels of a
    clamped upsampling); ``far`` = best − best over the pixels farther than one pixel from the argmax
    (Chebyshev distance > 1), i.e. a competitor that would move the match by more than a pixel.
    A margin is ``inf`` when there is no such competitor (a map of one pixel, or of at most 3×3).
    """
    n, H, W = cos.shape
    if n == 0:
        return torch.zeros(0, 2, dtype=torch.float64)
    flat = cos.reshape(n, -1).double()
    if idx is None:
        idx = flat.argmax(dim=1)
    best = flat.gather(1, idx[:, None])[:, 0]
    inf = torch.full_like(best, float("inf"))
    if H * W < 2:
        return torch.stack([inf, inf], dim=1)
    masked = flat.clone()
    masked.scatter_(1, idx[:, None], float("-inf"))
    local = best - masked.max(dim=1).values
    y, x = idx // W, idx % W
    near = (((torch.arange(H)[None, :, None] - y[:, None, None]).abs() <= 1)
            & ((torch.arange(W)[None, None, :] - x[:, None, None]).abs() <= 1))
    far_best = flat.masked_fill(near.reshape(n, -1), float("-inf")).max(dim=1).values
    far = torch.where(torch.isinf(far_best), inf, best - far_best)
    return torch.stack([local, far], dim=1)


# ----------------------------------------------------------------------------------------------
# The reference form, for tests: full upsampled maps through torch's own resampling, one dense similarity.
# ----------------------------------------------------------------------------------------------
def upsample_reference(fmap: torch.Tensor, grid: FeatureGrid, load_hw: tuple[int, int]) -> torch.Tensor:
    (H, W), (h, w) = load_hw, tuple(fmap.shape[-2:])
    x = fmap.unsqueeze(0).double()
    if grid.is_spanning(load_hw, (h, w)):
        return F.interpolate(x, size=load_hw, mode="bilinear", align_corners=False)[0]
    xs = (torch.arange(W, dtype=torch.float64) - grid.offset_x) / grid.stride_x
    ys = (torch.arange(H, dtype=torch.float64) - grid.offset_y) / grid.stride_y
    gx = 2 * xs / (w - 1) - 1 if w > 1 else torch.zeros_like(xs)
    gy = 2 * ys / (h - 1) - 1 if h > 1 else torch.zeros_like(ys)
    yy, xx = torch.meshgrid(gy, gx, indexing="ij")
    sampling = torch.stack([xx, yy], dim=-1).unsqueeze(0)
    return F.grid_sample(x, sampling, mode="bilinear", padding_mode="border", align_corners=True)[0]


def nn_transfer_naive(source_map, target_map, source_grid, target_grid, source_load_hw, target_load_hw,
                      source_points) -> torch.Tensor:
    px = source_pixels(source_points, source_load_hw)
    s_up = upsample_reference(source_map, source_grid, source_load_hw)
    t_up = upsample_reference(target_map, target_grid, target_load_hw)
    s_vec = F.normalize(s_up[:, px[:, 1], px[:, 0]].T, dim=1)
    t_vec = F.normalize(t_up.reshape(t_up.shape[0], -1), dim=0)
    idx = (s_vec @ t_vec).argmax(dim=1)
    Wt = target_load_hw[1]
    return torch.stack([idx % Wt, idx // Wt], dim=1).to(torch.float64)
