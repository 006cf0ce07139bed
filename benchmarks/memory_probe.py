#!/usr/bin/env python
"""Peak working memory of ``dhf`` extraction per image, on the real SD architecture, on any device.

Issue 8's memory target is "peak memory per image ≤ 1/10 of the materialised stack" (the official code
keeps 11 × 10,560 × 64 × 64 values per image: 951 MB in fp16). Working memory per UNet call does not
depend on how many DDIM steps run — the streaming path keeps only the 384-channel accumulator between
calls — so a 2-step inversion with both steps saved measures the same peak as the paper's 50 steps at
a fraction of the time, which makes the full-size SD-1.5 UNet (random weights) measurable on a CPU.

How the peak is read:

- CUDA: ``torch.cuda.max_memory_allocated`` minus what was allocated before the call;
- CPU: the PyTorch profiler's allocator events (``profile_memory=True``, ``bench_dhf.peak_cpu_bytes``):
  their running total counts only allocations made during the call, so its maximum is the peak above
  what existed before (weights, the cached empty-prompt embedding). PyTorch's CPU allocator does not
  cache, so this is the working set the call needs.

The peak is taken at two batch sizes; the difference per added image is the marginal memory an image
costs (what decides how large a batch fits), ``peak / batch`` the average.

    python benchmarks/memory_probe.py --device cpu --dtype float32 --batch-sizes 1,2 --json mem.json
    python benchmarks/memory_probe.py --tiny --batch-sizes 1,2      # seconds: the smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dhf import peak_cpu_bytes  # noqa: E402
from gpu_throughput import (MODELS, OFFICIAL_STACK_BYTES_FP16, _images, device_name,  # noqa: E402
                            make_descriptor, tiny_folder)

MB = 2**20


def peak_bytes(fn, device: str) -> int:
    """Bytes ``fn()`` needs above what is allocated when it starts, at its high-water mark."""
    if device.startswith("cuda"):
        dev = torch.device(device)
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        fn()
        torch.cuda.synchronize(dev)
        return torch.cuda.max_memory_allocated(dev) - before
    return peak_cpu_bytes(fn)[0]


def probe(spec: str, *, device: str, dtype: str, batches: Sequence[int], image_size: int, resolution: int,
          load_size: int) -> dict[str, Any]:
    desc = make_descriptor(spec, dtype, device, num_steps=2, image_size=image_size, output_resolution=resolution,
                           load_size=load_size, save_indices=[1, 0])
    desc.extractor.components.text_embeddings([""])  # cached now, so the text encoder is not in the peak
    rows = []
    for batch in batches:
        images = _images(batch, load_size, device)
        t0 = time.perf_counter()
        peak = peak_bytes(lambda: desc.describe(images), device)
        rows.append({"batch": batch, "peak_mb": peak / MB, "peak_mb_per_image": peak / batch / MB,
                     "seconds": time.perf_counter() - t0})
        print(f"batch {batch}: peak above weights {peak / MB:.1f} MB ({peak / batch / MB:.1f} MB per image)", flush=True)
    out: dict[str, Any] = {"rows": rows}
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        out["marginal_mb_per_image"] = (b["peak_mb"] - a["peak_mb"]) / (b["batch"] - a["batch"])
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="sd15", choices=sorted(MODELS))
    p.add_argument("--tiny", action="store_true", help="the tiny random SD folder (smoke test)")
    p.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16")
    p.add_argument("--batch-sizes", default="1,2")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    with tempfile.TemporaryDirectory(prefix="corrbench-mem-") as tmp:
        if args.tiny:
            spec, image_size, resolution, load = str(tiny_folder(Path(tmp))), 64, 16, 32
        else:
            spec, image_size, resolution, load = MODELS[args.model], 512, 64, 224
        result = probe(spec, device=args.device, dtype=args.dtype, batches=batches, image_size=image_size,
                       resolution=resolution, load_size=load)
    stack_mb = OFFICIAL_STACK_BYTES_FP16 / MB
    result.update(model="tiny" if args.tiny else MODELS[args.model], device=device_name(args.device),
                  dtype=args.dtype, image_size=image_size, official_stack_mb_per_image_fp16=stack_mb,
                  torch=torch.__version__, date=time.strftime("%Y-%m-%d"))
    if "marginal_mb_per_image" in result:
        result["marginal_fraction_of_stack"] = result["marginal_mb_per_image"] / stack_mb
        print(f"marginal {result['marginal_mb_per_image']:.1f} MB per image = "
              f"{result['marginal_fraction_of_stack']:.3f} of the official {stack_mb:.0f} MB fp16 stack")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
