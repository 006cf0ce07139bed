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


@pytest.mark.benchmark(group="sd-shared-pass")
def test_shared_inversion_for_the_table_rows(benchmark, ratio, tmp_path):
    """The six SD-1.5 rows of the DHF table from one inversion vs each running its own (the naive form).

    Tiny random SD at the paper's sizes (512 px, 50 steps, 11 × 12 slots, 64 × 64) with random
    aggregation networks; outputs must be identical either way. The tiny UNet is so cheap that the
    aggregation networks dominate its time, so the time ratio here is near 1; the UNet-call and
    VAE-encode counts in ``extra_info`` are what carries over to the real model, where those calls
    are nearly all the cost. (Random networks put the pruned rows' slot at the clean pass, the
    cheapest case for running them separately.)
    """
    from corrbench.api import describe_together
    from corrbench_dhf.methods import DHF, DHFOneStep, DHFPruned, SDLayerPruned
    from corrbench_sd.methods import SDConcatAll, SDLayer4

    model = os.environ.get("CORRBENCH_BENCH_SD_MODEL") or str(make_tiny_sd(tmp_path / "sd"))
    sd = {"model": model, "weights": "random"} if "CORRBENCH_BENCH_SD_MODEL" not in os.environ else {"model": model}
    dhf = {"model": model, "weights": "random", "sd_weights": sd.get("weights", "pretrained")}
    if "CORRBENCH_BENCH_SD_MODEL" not in os.environ:
        sd["weights"] = dhf["sd_weights"] = "pretrained"  # the tiny folder's own (random) weights
    rows = [SDLayer4(sd, DEVICE), SDConcatAll(sd, DEVICE), DHF(dhf, DEVICE), DHFOneStep(dhf, DEVICE),
            SDLayerPruned(dhf, DEVICE), DHFPruned(dhf, DEVICE)]
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    for d in rows:
        d.ensure_ready()

    def shared():
        out = describe_together(rows, images)
        _sync()
        return out

    def separate():
        out = [d.describe(images) for d in rows]
        _sync()
        return out

    # the work that transfers to a GPU: UNet forwards and VAE encodes, counted on the shared modules
    comps = rows[0].extractor.components
    calls = {"unet": 0, "vae": 0}
    hooks = [comps.unet.register_forward_pre_hook(lambda *a: calls.__setitem__("unet", calls["unet"] + 1)),
             comps.vae.encoder.register_forward_pre_hook(lambda *a: calls.__setitem__("vae", calls["vae"] + 1))]
    try:
        together = shared()
        counted_shared, calls = dict(calls), {"unet": 0, "vae": 0}
        apart = separate()
        counted_separate = dict(calls)
    finally:
        for h in hooks:
            h.remove()
    for a, b in zip(together, apart):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    benchmark.pedantic(shared, rounds=2, warmup_rounds=0)
    ratio(benchmark, separate, rounds=2, per=images.shape[0], unit="image")
    benchmark.extra_info.update({"rows": [d.name for d in rows], "batch": images.shape[0], "device": DEVICE,
                                 "unet_calls_shared": counted_shared["unet"],
                                 "unet_calls_separate": counted_separate["unet"],
                                 "vae_encodes_shared": counted_shared["vae"],
                                 "vae_encodes_separate": counted_separate["vae"]})
