"""Each registered readout's cost per pair, and flip test-time augmentation's per batch, beside a naive
dense reference, in one run.

The naive side upsamples both maps to the load frame (``upsample_reference``), normalises every target
pixel and forms the whole similarity map, then applies the readout's weighting; the fast side is the
readout as the runner calls it (separable upsampling, target norms prepared once per target). Every
benchmark checks that both sides agree before timing, so a fast wrong path cannot pass.

``mutual-nn`` is timed twice: with the source map's norms already known (the runner reads a source's
pairs one after another, so all but the first pair of a source find them) and computing them per pair.
Flip TTA is timed on a batch of two 224² images against describing each image and its PIL mirror one at
a time, mirroring the map back column by column and averaging in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from corrbench.api import Descriptor, FeatureGrid
from corrbench.plugins import get_host
from corrbench.readout import source_pixels, upsample_reference
from corrbench.readouts import (KernelSoftArgmax, MutualNearestNeighbour, NearestNeighbour, ReadoutInput, SoftArgmax,
                                WindowSoftArgmax)
from corrbench.tta import describe_flip_averaged

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


def _naive_mutual(src, tgt, points, radius):
    """Both maps upsampled, the whole similarity map forward, the whole source map backward."""
    px = source_pixels(points, LOAD)
    s_up = upsample_reference(src, GRID, LOAD).reshape(src.shape[0], -1)
    t_up = upsample_reference(tgt, GRID, LOAD).reshape(tgt.shape[0], -1)
    s_n, t_n = F.normalize(s_up, dim=0), F.normalize(t_up, dim=0)
    fwd = (s_n[:, px[:, 1] * LOAD[1] + px[:, 0]].T @ t_n).argmax(dim=1)
    bwd = (t_n[:, fwd].T @ s_n).argmax(dim=1)
    W = LOAD[1]
    points_out = torch.stack([fwd % W, fwd // W], dim=1).double()
    back = torch.stack([bwd % W, bwd // W], dim=1).double()
    return points_out, ((back - px.double()) ** 2).sum(dim=1) > radius ** 2


@pytest.mark.benchmark(group="readouts")
@pytest.mark.parametrize("source_norms", ["known", "per-pair"])
def test_mutual_nn_pair_cost(benchmark, ratio, source_norms):
    """mutual-nn on a pair of the same size as above, the target a noisy copy of the source (some kept, some not)."""
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(384, 64, 64, generator=gen)
    tgt = src + 6 * torch.randn(384, 64, 64, generator=gen)  # noisy enough that some keypoints fail
    points = torch.rand(10, 2, generator=gen).double() * 223
    d = _Plain()
    readout = MutualNearestNeighbour()
    prepared = readout.prepare_target(d, tgt, GRID, LOAD)
    x = ReadoutInput(d, src, tgt, GRID, GRID, LOAD, LOAD, points, prepared)
    radius = readout.radius(GRID)

    def fast():
        r = readout if source_norms == "known" else MutualNearestNeighbour()
        return r.transfer(x)

    out = fast()
    naive_points, naive_rejected = _naive_mutual(src, tgt, points, radius)
    assert torch.equal(out.points, naive_points) and torch.equal(out.rejected, naive_rejected)
    assert 0 < int(out.rejected.sum()) < len(points)
    benchmark(fast)
    ratio(benchmark, lambda: _naive_mutual(src, tgt, points, radius), rounds=3, per=1, unit="pair")


def _flip_images():
    from PIL import Image

    gen = torch.Generator().manual_seed(1)
    coarse = torch.rand(2, 3, 14, 14, generator=gen)
    batch = F.interpolate(coarse, size=LOAD, mode="bilinear", align_corners=False)
    batch = (batch * 255).round() / 255  # exact 8-bit images, so the PIL round trip is lossless
    pil = [Image.fromarray((b * 255).round().byte().permute(1, 2, 0).numpy(), "RGB") for b in batch]
    return batch.contiguous(), pil


def _naive_flip(d, pil):
    import numpy as np
    from PIL import ImageOps

    def tensor(im):
        return torch.from_numpy(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0)[None].contiguous()

    outs = []
    for im in pil:
        plain = d.describe(tensor(im))[0].double()
        mirrored = d.describe(tensor(ImageOps.mirror(im)))[0].double()
        C, h, w = plain.shape
        grid = d.feature_grid(LOAD, (h, w))
        back = torch.empty_like(mirrored)
        for j in range(w):  # cell j's mirror point, read by linear interpolation between two columns
            u = min(max((LOAD[1] - 1 - 2 * grid.offset_x - j * grid.stride_x) / grid.stride_x, 0.0), w - 1.0)
            j0 = min(int(u), w - 1)
            j1, a = min(j0 + 1, w - 1), u - j0
            back[:, :, j] = (1 - a) * mirrored[:, :, j0] + a * mirrored[:, :, j1]
        outs.append((plain + back) / 2)
    return torch.stack(outs)


@pytest.mark.benchmark(group="flip-tta")
@pytest.mark.parametrize("method", ["dsift", "colour-patch"])
def test_flip_tta_batch_cost(benchmark, ratio, method):
    """Two 224² images: dsift (a centred grid, the map is reversed) and colour-patch (resampled)."""
    d = get_host().methods.get(method)()
    batch, pil = _flip_images()
    got = describe_flip_averaged([d], batch)[0]
    torch.testing.assert_close(got.double(), _naive_flip(d, pil), rtol=1e-5, atol=1e-6)
    benchmark.pedantic(lambda: describe_flip_averaged([d], batch), rounds=3, warmup_rounds=0)
    ratio(benchmark, lambda: _naive_flip(d, pil), rounds=2, per=2, unit="image")
