"""Seconds per image (extraction) and per pair (matching) of the DINO and DHPF baselines.

Real architectures at their paper input sizes with random weights (nothing is downloaded): DINO ViT-S/8
at 224² and stride 4 (3,025 tokens, blocks 0–9), DHPF ResNet-101 at 240² (34 candidate layers) and its
per-pair matcher (3,600² correlation, Regularized Hough Matching). Run with
``pytest benchmarks/bench_baselines.py --benchmark-enable --benchmark-only``; ``--device`` is not a
pytest option here: set ``CORRBENCH_BENCH_DEVICE=cuda`` to time a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

DEVICE = os.environ.get("CORRBENCH_BENCH_DEVICE", "cpu")


def _sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


@pytest.fixture(scope="module")
def dino():
    from corrbench_dino.descriptor import DinoDescriptor

    d = DinoDescriptor({"weights": "random"}, device=DEVICE)
    d.ensure_ready()
    return d


@pytest.fixture(scope="module")
def dhpf():
    from corrbench_dhpf.descriptor import DHPFDescriptor

    d = DHPFDescriptor({"weights": "random"}, device=DEVICE)
    d.ensure_ready()
    return d


@pytest.mark.benchmark(group="baselines-extract")
def test_dino_vits8_stride4_extract_224(benchmark, dino):
    images = torch.rand(1, 3, 224, 224, device=DEVICE)

    def run():
        out = dino.describe(images)
        _sync()
        return out

    out = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update({"per": "image", "map": list(out.shape), "device": DEVICE})


@pytest.mark.benchmark(group="baselines-match")
def test_dino_binned_patch_centre_transfer(benchmark, dino):
    maps = dino.describe(torch.rand(2, 3, 224, 224, device=DEVICE))
    grid = dino.feature_grid((224, 224), tuple(maps.shape[-2:]))
    points = torch.rand(10, 2, device=DEVICE) * 224

    def run():
        out = dino.transfer(maps[0], maps[1], grid, grid, (224, 224), (224, 224), points)
        _sync()
        return out

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update({"per": "pair", "descriptor_dim": dino.run_info()["descriptor_dim"]})


@pytest.mark.benchmark(group="baselines-extract")
def test_dhpf_resnet101_extract_240(benchmark, dhpf):
    images = torch.rand(1, 3, 240, 240, device=DEVICE)

    def run():
        out = dhpf.describe(images)
        _sync()
        return out

    out = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update({"per": "image", "packed_values": out.shape[-1], "device": DEVICE})


@pytest.mark.benchmark(group="baselines-match")
def test_dhpf_gated_rhm_transfer(benchmark, dhpf):
    maps = dhpf.describe(torch.rand(2, 3, 240, 240, device=DEVICE))
    grid = dhpf.feature_grid((240, 240), tuple(maps.shape[-2:]))
    points = torch.rand(10, 2, device=DEVICE) * 240

    def run():
        out = dhpf.transfer(maps[0], maps[1], grid, grid, (240, 240), (240, 240), points)
        _sync()
        return out

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update({"per": "pair", "layers_per_pair": dhpf.run_info()["layers_per_pair"]["mean"]})


def _log_bin_per_pixel(x: torch.Tensor, hierarchy: int = 2) -> torch.Tensor:
    """The upstream form of log-binning: a Python loop over cells and bins (docs/methods.md#dino-and-dinov2)."""
    import torch.nn.functional as F

    B, D, h, w = x.shape
    pools = [x] + [F.avg_pool2d(x, 3 ** k, 1, 3 ** k // 2, count_include_pad=False) for k in range(1, hierarchy)]
    out = torch.zeros(B, D * (1 + 8 * hierarchy), h, w)
    for y in range(h):
        for xx in range(w):
            part = 0
            for k in range(hierarchy):
                s = 3 ** k
                for i in range(y - s, y + s + 1, s):
                    for j in range(xx - s, xx + s + 1, s):
                        if i == y and j == xx and k:
                            continue
                        out[:, part * D:(part + 1) * D, y, xx] = pools[k][:, :, min(max(i, 0), h - 1),
                                                                          min(max(j, 0), w - 1)]
                        part += 1
    return out


@pytest.mark.benchmark(group="baselines-match")
def test_log_bin_vectorised_vs_per_pixel_loop(benchmark, ratio):
    from corrbench_dino.binning import log_bin

    x = torch.randn(1, 384, 55, 55)  # ViT-S/8 key facet at 224², stride 4
    out = benchmark.pedantic(lambda: log_bin(x, 2), rounds=5, warmup_rounds=1)
    assert out.shape == (1, 6528, 55, 55)
    ratio(benchmark, lambda: _log_bin_per_pixel(x, 2), rounds=1, per=1, unit="map")
