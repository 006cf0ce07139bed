"""Each registered readout's cost per pair, beside a naive dense reference, in one run.

The naive side upsamples both maps to the load frame (``upsample_reference``), normalises every target
pixel and forms the whole similarity map, then applies the readout's weighting; the fast side is the
readout as the runner calls it (separable upsampling, target norms prepared once per target). Every
benchmark checks that both sides agree before timing, so a fast wrong path cannot pass.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from corrbench.api import Descriptor, FeatureGrid
from corrbench.readout import source_pixels, upsample_reference
from corrbench.readouts import KernelSoftArgmax, NearestNeighbour, ReadoutInput, SoftArgmax, WindowSoftArgmax

LOAD = (224, 224)
GRID = FeatureGrid.spanning(LOAD, (64, 64))  # SD / DHF-like 64 × 64 maps
READOUTS = {
    "nn": NearestNeighbour(),
    "soft-argmax": SoftArgmax(),
    "window-soft-argmax": WindowSoftArgmax(),
    "kernel-soft-argmax": KernelSoftArgmax(),
}


class _Plain(Descriptor):
    name = "plain"
    weight_free = True


def _naive(readout, src, tgt, points):
    px = source_pixels(points, LOAD)
    s = F.normalize(upsample_reference(src, GRID, LOAD)[:, px[:, 1], px[:, 0]].T.double(), dim=1)
    t = F.normalize(upsample_reference(tgt, GRID, LOAD).reshape(src.shape[0], -1).double(), dim=0)
    cos = (s @ t).reshape(-1, *LOAD)
    if isinstance(readout, NearestNeighbour):
        idx = cos.reshape(cos.shape[0], -1).argmax(dim=1)
        return torch.stack([idx % LOAD[1], idx // LOAD[1]], dim=1).double()
    p = readout.weights(cos)
    ys, xs = torch.arange(LOAD[0], dtype=torch.float64), torch.arange(LOAD[1], dtype=torch.float64)
    return torch.stack([(p.sum(dim=1) * xs).sum(dim=1), (p.sum(dim=2) * ys).sum(dim=1)], dim=1)


@pytest.mark.benchmark(group="readouts")
@pytest.mark.parametrize("name", list(READOUTS))
def test_readout_pair_cost(benchmark, ratio, name):
    """One pair, 10 keypoints, 384 channels on 64 × 64 maps upsampled to 224²."""
    gen = torch.Generator().manual_seed(0)
    src, tgt = torch.randn(384, 64, 64, generator=gen), torch.randn(384, 64, 64, generator=gen)
    points = torch.rand(10, 2, generator=gen).double() * 223
    readout, d = READOUTS[name], _Plain()
    prepared = readout.prepare_target(d, tgt, GRID, LOAD)
    x = ReadoutInput(d, src, tgt, GRID, GRID, LOAD, LOAD, points, prepared)
    fast = benchmark(lambda: readout.transfer(x).points)
    torch.testing.assert_close(fast, _naive(readout, src, tgt, points), rtol=0, atol=1e-6)
    ratio(benchmark, lambda: _naive(readout, src, tgt, points), rounds=3, per=1, unit="pair")
