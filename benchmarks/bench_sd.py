"""Seconds per image of SD feature extraction by DDIM inversion, tiny random-weight SD model.

The full paper pipeline at its real sizes — 224 px input → 512 px → VAE → 64 × 64 latents → 50
inversion steps, 11 saved steps × 12 decoder layers resized to 64 × 64 — on the tiny model of
``corrbench.testing.sd`` (so nothing is downloaded), at batch 1 and batch 8: the per-image cost
should fall with the batch because the UNet runs many images per call. The consumer keeps only a
running sum of each map, so the timing is extraction, not storage. ``extra_info["s_per_image"]`` is
the mean time of one call divided by the batch size.

Run: ``pytest benchmarks/bench_sd.py --benchmark-enable --benchmark-only``; set
``CORRBENCH_BENCH_DEVICE=cuda`` to time a GPU (``CORRBENCH_BENCH_SD_MODEL=PATH`` for real weights).
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from corrbench.testing.sd import make_tiny_sd  # noqa: E402
from corrbench_sd.extractor import LAYERS, PAPER_SAVE_INDICES, SDFeatureExtractor  # noqa: E402

DEVICE = os.environ.get("CORRBENCH_BENCH_DEVICE", "cpu")


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    model = os.environ.get("CORRBENCH_BENCH_SD_MODEL") or str(make_tiny_sd(tmp_path_factory.mktemp("bench-sd") / "sd"))
    ex = SDFeatureExtractor(model, device=DEVICE)
    ex.components  # load outside the timed region
    return ex


def _sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


@pytest.mark.benchmark(group="sd-inversion")
@pytest.mark.parametrize("batch", [1, 8])
def test_sd_inversion_extraction(benchmark, extractor, batch):
    images = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    sums = torch.zeros(len(PAPER_SAVE_INDICES), len(LAYERS), device=DEVICE)

    def consume(slot, position, feat):
        sums[slot, position] += feat.sum()  # touch every map, keep nothing

    def run():
        with torch.inference_mode():
            extractor.invert(images, save_indices=PAPER_SAVE_INDICES, layers=LAYERS, consume=consume)
        _sync()

    benchmark.pedantic(run, rounds=2, warmup_rounds=1)
    assert torch.isfinite(sums).all() and bool((sums != 0).any())
    benchmark.extra_info.update({
        "batch": batch, "device": DEVICE, "steps": extractor.num_steps, "image_size": extractor.image_size,
        "saved_steps": len(PAPER_SAVE_INDICES), "layers": len(LAYERS),
        "s_per_image": benchmark.stats.stats.mean / batch,
    })
