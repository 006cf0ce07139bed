"""Per-image extraction of the weight-free family (``dsift``, ``colour-patch``, ``random-conv``) at
batch 1 and 8, and unique-image extraction against the naive per-pair recomputation.

The SD, DHF, DINO and DHPF families are measured with tiny models in ``bench_sd.py``,
``bench_dhf.py`` and ``bench_baselines.py`` (their plugins' owners keep those), and the full-size
SD/DHF path in ``gpu_throughput.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corrbench.images import load_rgb, to_input
from corrbench.plugins import get_host

CLASSIC = ["dsift", "colour-patch", "random-conv"]


def _descriptor(name: str):
    desc = get_host().methods.get(name)(config={}, device="cpu")
    desc.ensure_ready()
    return desc


@pytest.mark.benchmark(group="extract-classic")
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("method", CLASSIC)
def test_extract(benchmark, method, batch):
    desc = _descriptor(method)
    size = desc.preprocessing().load_size
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    out = benchmark(lambda: desc.describe(images))
    assert out.shape[0] == batch
    if not benchmark.disabled:
        s = benchmark.stats.stats.min
        benchmark.extra_info.update(s_per_image=s / batch, images_per_s=batch / s,
                                    feature_shape=list(out.shape[1:]))


@pytest.mark.benchmark(group="extract-unique-vs-per-pair")
def test_unique_images_vs_per_pair_recomputation(benchmark, ratio, synthetic_dataset):
    """What the runner does (each unique image once, batches of 8) against the official codes' habit
    of describing both images of every pair (batch 2), on the first 40 synthetic test pairs."""
    desc = _descriptor("dsift")
    prep = desc.preprocessing()
    pairs = list(synthetic_dataset.pairs())[:40]
    cache = {}

    def tensor(path):
        if path not in cache:  # decoding is the same for both sides: keep it out of the comparison
            cache[path] = torch.from_numpy(to_input(load_rgb(path), prep))
        return cache[path]

    unique = list(dict.fromkeys(p for pair in pairs for p in (pair.source, pair.target)))
    for p in unique:
        tensor(p)

    def per_image():
        out = {}
        for i in range(0, len(unique), 8):
            chunk = unique[i:i + 8]
            for path, f in zip(chunk, desc.describe(torch.stack([tensor(p) for p in chunk]))):
                out[path] = f
        return out

    def per_pair():
        return [desc.describe(torch.stack([tensor(pair.source), tensor(pair.target)])) for pair in pairs]

    feats = benchmark.pedantic(per_image, rounds=3, iterations=1)
    # the same maps either way (batching does not change a weight-free descriptor's output)
    first = per_pair()[0]
    torch.testing.assert_close(first[0], feats[pairs[0].source])
    ratio(benchmark, per_pair, rounds=2, per=len(unique), unit="unique-image")
    benchmark.extra_info.update(pairs=len(pairs), unique_images=len(unique),
                                per_pair_images=2 * len(pairs), recomputation_factor=2 * len(pairs) / len(unique))
    assert np.isfinite(float(first.sum()))
