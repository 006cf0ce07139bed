"""Peak memory per image of ``dhf`` extraction: streaming versus materialised aggregation.

*Streaming* (what ``dhf`` does): each captured map goes through its bottleneck inside the UNet forward
and is added to a 384 × R × R accumulator. *Materialised* (the official code's shape): all
(timestep, layer) maps are stacked into one S·ΣC × R × R tensor first, then aggregated.

Memory is measured with **torch's CPU memory profiler** (``torch.profiler.profile(profile_memory=True)``):
its ``[memory]`` events carry the running total of bytes allocated by torch's CPU allocator, so the
peak is the largest total seen while one image is described (allocations made before, such as the
weights, are not counted). ``tracemalloc`` is not used: it sees Python's allocator only, not tensors.

Two scales:

- ``pipeline``: the whole extraction (tiny random-weight SD of ``corrbench.testing.sd`` at the paper's
  512 px / 50 steps / 11 × 12 slots / R = 64 / projection 384). Its decoder has 144 channels per step
  instead of SD's 10,560, so the stack is small here; this run checks the two forms agree and measures
  the whole path.
- ``sd-channels``: the aggregation alone with SD-1.5's real channel counts (1280 × 6, 640 × 3, 320 × 3),
  the maps simulated in the order the extractor delivers them. This is where the 11 × 10,560-channel
  stack (1.9 GB in float32 per image at R = 64) appears or not.

Run as a script (``python benchmarks/bench_dhf.py [--scale sd-channels] [--resolution 64]``) for a
table, or with pytest (``pytest benchmarks/bench_dhf.py --benchmark-enable``) for timed, smaller runs
whose ``extra_info`` holds the peaks.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

SD15_CHANNELS = [1280] * 6 + [640] * 3 + [320] * 3


def peak_cpu_bytes(fn: Callable[[], object]) -> tuple[int, object]:
    """Peak bytes held by torch's CPU allocator while ``fn`` runs (relative to its start)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0]
    return (max(totals) if totals else 0), result


# -- aggregation with simulated SD-sized maps --------------------------------------------------------------
def simulated_maps(channels, timesteps, resolution, seed=0):
    """Yields (slot, layer, map) in the extractor's order; each map is made when asked for, like a hook."""
    gen = torch.Generator().manual_seed(seed)
    for s in range(timesteps):
        for l, c in enumerate(channels):
            yield s, l, torch.randn(1, c, resolution, resolution, generator=gen)


def aggregate_streaming(network, channels, timesteps, resolution):
    agg = network.streaming()
    for s, l, feat in simulated_maps(channels, timesteps, resolution):
        agg(s, l, feat)
        del feat
    return agg.result()


def aggregate_materialised(network, channels, timesteps, resolution):
    per_t = sum(channels)
    stack = torch.empty(1, timesteps * per_t, resolution, resolution)
    offsets = [sum(channels[:n]) for n in range(len(channels))]
    for s, l, feat in simulated_maps(channels, timesteps, resolution):
        stack[:, s * per_t + offsets[l]: s * per_t + offsets[l] + channels[l]] = feat
    return network(stack)


def bench_sd_channels(resolution: int = 64, timesteps: int = 11) -> dict:
    from corrbench_dhf.network import AggregationNetwork

    torch.manual_seed(0)
    net = AggregationNetwork(SD15_CHANNELS, timesteps).eval()
    rows = {}
    outs = {}
    for name, fn in (("streaming", aggregate_streaming), ("materialised", aggregate_materialised)):
        t0 = time.perf_counter()
        with torch.inference_mode():
            peak, out = peak_cpu_bytes(lambda: fn(net, SD15_CHANNELS, timesteps, resolution))
        rows[name] = {"peak_mb": peak / 2**20, "seconds": time.perf_counter() - t0}
        outs[name] = out
    torch.testing.assert_close(outs["streaming"], outs["materialised"], rtol=1e-4, atol=1e-5)
    stack_mb = timesteps * sum(SD15_CHANNELS) * resolution ** 2 * 4 / 2**20
    return {"scale": "sd-channels", "resolution": resolution, "timesteps": timesteps,
            "stack_mb_float32": stack_mb, **rows}


# -- the whole pipeline on the tiny SD ------------------------------------------------------------------------
def bench_pipeline(model: str | None = None, image_size: int = 512, resolution: int = 64, num_steps: int = 50,
                   load_size: int = 224) -> dict:
    from corrbench.testing.sd import make_tiny_sd
    from corrbench_dhf.methods import DHF

    with tempfile.TemporaryDirectory() as tmp:
        model = model or str(make_tiny_sd(Path(tmp) / "sd"))
        d = DHF({"model": model, "weights": "random", "image_size": image_size, "output_resolution": resolution,
                 "num_steps": num_steps, "load_size": load_size})
        d.ensure_ready()
        image = torch.rand(1, 3, load_size, load_size, generator=torch.Generator().manual_seed(0))
        rows, outs = {}, {}

        def streaming():
            return d.extract(image)

        def materialised():
            return d.network(d.extract_raw(image))

        for name, fn in (("streaming", streaming), ("materialised", materialised)):
            t0 = time.perf_counter()
            with torch.inference_mode():
                peak, out = peak_cpu_bytes(fn)
            rows[name] = {"peak_mb": peak / 2**20, "seconds": time.perf_counter() - t0}
            outs[name] = out
        torch.testing.assert_close(outs["streaming"], outs["materialised"], rtol=1e-4, atol=1e-5)
        channels = d.network.layer_channels
        stack_mb = len(d.indices) * sum(channels) * resolution ** 2 * 4 / 2**20
    return {"scale": "pipeline (tiny SD)", "image_size": image_size, "resolution": resolution,
            "num_steps": num_steps, "timesteps": len(d.indices), "channels_per_step": sum(channels),
            "stack_mb_float32": stack_mb, **rows}


def _print(result: dict) -> None:
    print(json.dumps(result, indent=2))
    s, m = result["streaming"], result["materialised"]
    print(f"| {result['scale']} | R={result['resolution']} | streaming {s['peak_mb']:.1f} MB, {s['seconds']:.1f} s "
          f"| materialised {m['peak_mb']:.1f} MB, {m['seconds']:.1f} s | stack alone {result['stack_mb_float32']:.1f} MB |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=["pipeline", "sd-channels", "both"], default="both")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--num-steps", type=int, default=50)
    ap.add_argument("--model", default=None, help="SD folder (default: a tiny random one)")
    args = ap.parse_args(argv)
    if args.scale in ("pipeline", "both"):
        _print(bench_pipeline(args.model, args.image_size, args.resolution, args.num_steps))
    if args.scale in ("sd-channels", "both"):
        _print(bench_sd_channels(args.resolution))


# -- pytest-benchmark entry points (smaller sizes so they finish quickly on a CPU) ------------------------------
try:
    import pytest
except ImportError:  # pragma: no cover - script use without pytest
    pytest = None

if pytest is not None:

    @pytest.mark.benchmark(group="dhf-memory")
    def test_dhf_streaming_memory_sd_channels(benchmark):
        result = benchmark.pedantic(lambda: bench_sd_channels(resolution=16), rounds=1, iterations=1)
        benchmark.extra_info.update(result)
        # the stack is never built: the streaming peak stays below the stack alone
        assert result["streaming"]["peak_mb"] < result["stack_mb_float32"] < result["materialised"]["peak_mb"]

    @pytest.mark.benchmark(group="dhf-memory")
    def test_dhf_streaming_memory_pipeline(benchmark):
        result = benchmark.pedantic(lambda: bench_pipeline(image_size=128, resolution=32, num_steps=50),
                                    rounds=1, iterations=1)
        benchmark.extra_info.update(result)
        assert result["streaming"]["peak_mb"] < result["materialised"]["peak_mb"]


if __name__ == "__main__":
    main()
