"""Flip test-time augmentation: each image's features averaged with those of its horizontal mirror.

A descriptor describes the batch and its mirror image; the mirror's map is mirrored back onto the
original map's cells and the two are averaged (docs/protocol.md#flip-test-time-augmentation).

Where a mirrored cell lands. :class:`~corrbench.api.FeatureGrid` uses pixel-index coordinates: pixel
``k`` covers ``[k - 0.5, k + 0.5]``, so a load frame of width ``W`` spans ``[-0.5, W - 0.5]`` and the
mirror maps ``x`` to ``W - 1 - x`` (pixel ``k`` to pixel ``W - 1 - k``; in edge coordinates, where the
frame spans ``[0, W]``, the same map reads ``x ↦ W - x``). Cell ``i`` of the mirror image's map
describes its point ``o + i·s``, which is the original's point ``W - 1 - o - i·s``. Reversing the cell
index (cell ``i`` → ``w - 1 - i``) puts it back exactly where the original's cell ``w - 1 - i`` lies,
``o + (w - 1 - i)·s``, for every ``i`` if and only if::

    2·o + (w - 1)·s = W - 1        (the cells are centred in the frame)

(:func:`flip_symmetric`). Cells that tile the frame (``FeatureGrid.spanning``: ``o = s/2 - 1/2``,
``s = W/w``) always are; sliding windows are when they cover the width without a remainder (dsift's
grid, a ViT whose patches tile the image). Then the mirror is an index reversal and exact. Otherwise
(``colour-patch``'s cells centred on pixels ``0, 2, …`` of an even width) the mirrored map is
resampled onto the original cells by linear interpolation along x between the two nearest mirrored
cells, clamped to the border cell outside them — the border handling the readouts use.

Not done here: GeoAware-SC's pose-aware variant (``ADAPT_FLIP``) matches the *source* both as is and
mirrored and keeps, per pair, the orientation whose matches agree better (by instance masks, or by
a mutual-nearest-neighbour distance). That is a per-pair choice between two sets of predictions, so it
belongs to the readout and needs the mirrored source's map at readout time (a second cached map per
image), not a change of the features; without the mask model it is possible in principle, but it is a
runner and cache change, left for later.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .api import FeatureGrid, describe_together
from .errors import DescriptorOutputError

if TYPE_CHECKING:  # pragma: no cover
    from typing import Sequence

    import torch

    from .api import Descriptor


def flip_symmetric(grid: FeatureGrid, load_w: int, feat_w: int) -> bool:
    """True when mirroring the load frame (width ``load_w``) maps cell ``i`` onto cell ``feat_w - 1 - i``."""
    return math.isclose(2 * grid.offset_x + (feat_w - 1) * grid.stride_x, load_w - 1, rel_tol=0, abs_tol=1e-9)


def mirror_back(flipped: "torch.Tensor", grid: FeatureGrid, load_w: int) -> "torch.Tensor":
    """The map of a mirrored image (…×w, last axis x) mirrored back onto the original image's cells.

    An index reversal when :func:`flip_symmetric`; otherwise each original cell reads the mirrored map
    at its mirror point, linearly interpolated along x (clamped to the border cells).
    """
    import torch

    w = flipped.shape[-1]
    if flip_symmetric(grid, load_w, w):
        return flipped.flip(-1)
    x = grid.offset_x + torch.arange(w, dtype=torch.float64) * grid.stride_x  # original cell centres
    u = ((load_w - 1 - x - grid.offset_x) / grid.stride_x).clamp(0, w - 1)  # mirror point, in cells
    j0 = u.floor().long().clamp(max=w - 1)
    j1 = (j0 + 1).clamp(max=w - 1)
    a = (u - j0).to(flipped.dtype if flipped.is_floating_point() else torch.float32).to(flipped.device)
    j0, j1 = j0.to(flipped.device), j1.to(flipped.device)
    return flipped.index_select(-1, j0) * (1 - a) + flipped.index_select(-1, j1) * a


def describe_flip_averaged(descriptors: "list[Descriptor]", batch: "torch.Tensor",
                           categories: "Sequence[str | None] | None" = None) -> "list[torch.Tensor]":
    """Like :func:`corrbench.api.describe_together` (one descriptor: a list of one, described alone),
    with each output the average of the batch's features and of its mirror's, mirrored back.

    ``categories`` (one per image) go to a lone descriptor's :meth:`~corrbench.api.Descriptor.describe`
    for both the batch and its mirror (a mirror keeps its category), as the runner passes them without flips.

    ``batch`` is B×3×H×W in the load frame. The mirror batch is described in a second call of the same
    size (not one call of twice the batch: the caller's batch size is its memory budget). The average is
    taken in at least float32 and returned in the descriptor's dtype.
    """
    import torch

    if not descriptors:
        return []

    def describe(images: "torch.Tensor") -> "list[torch.Tensor]":
        if len(descriptors) == 1:
            if categories is None:
                return [descriptors[0].describe(images)]
            return [descriptors[0].describe(images, categories=categories)]
        return describe_together(list(descriptors), images)

    plain = describe(batch)
    mirrored = describe(batch.flip(-1))
    H, W = int(batch.shape[-2]), int(batch.shape[-1])
    out = []
    with torch.inference_mode():
        for d, a, b in zip(descriptors, plain, mirrored):
            if a.shape != b.shape:
                raise DescriptorOutputError(f"{d.name}: the mirrored batch gave a map of shape {tuple(b.shape)}, "
                                            f"the batch {tuple(a.shape)}")
            grid = d.feature_grid((H, W), tuple(a.shape[-2:]))
            wide = torch.promote_types(a.dtype, torch.float32)
            back = mirror_back(b.to(wide), grid, W)
            out.append(((a.to(wide) + back) / 2).to(a.dtype))
    return out


__all__ = ["describe_flip_averaged", "flip_symmetric", "mirror_back"]
