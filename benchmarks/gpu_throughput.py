#!/usr/bin/env python
"""GPU throughput of ``dhf`` extraction: images/s, peak memory, achieved UNet TFLOP/s (issue 8).

Builds the SD-1.5 and SD-2.1-base UNet, VAE and text encoder from their published configs with
random weights (``corrbench_sd.configs``; nothing is downloaded) and runs corrbench's own ``dhf``
descriptor — DDIM inversion with conv2 hooks streaming every map into the aggregation network — at
several batch sizes and dtypes. For each setting it reports

- images/s of the whole extraction (VAE encode, 50 UNet calls, aggregation), and the projected time
  for the SPair-71k test split (1,800 images);
- peak GPU memory, and the peak *above the resident weights* per image, against the 0.95 GB
  (fp16) per-image feature stack the official implementation materialises;
- achieved TFLOP/s — FLOPs counted once with ``torch.utils.flop_counter.FlopCounterMode`` on one
  UNet forward and one VAE encode — in two forms: ``unet_tflops`` (a UNet-only loop at the same
  batch: the kernel efficiency the issue's "≥ 40 % of bf16 peak in the UNet" refers to) and
  ``e2e_tflops`` (VAE + UNet FLOPs of every call made over the whole extraction's wall time) — and
  their fractions of the device's dense peak for the dtype.

``--describe`` prints parameter counts and per-image FLOPs of the real architectures, built on the
meta device (no GPU, no memory): SD-1.5's UNet is 803 GFLOPs per 512 px forward, its VAE encoder
1,117 GFLOPs, so one ``dhf`` image is about 41 TFLOPs.

``--official`` adds the official implementation's structure as the baseline, in the same process
on the same weights: batch 2 (one image pair), the latent copied to the host after every step, all
50 UNet calls run in full, the 11 × 10,560-channel stack materialised in the compute dtype and then
copied to float32 and fed to the aggregation network. Its images/s is per *unique* image; the
official code also recomputes both images of every pair, which ``--pairs-per-image`` folds in.

Usage (GPU; see benchmarks/README.md)::

    python benchmarks/gpu_throughput.py --device cuda --models sd15,sd21 --dtypes bf16,fp16 \\
        --batch-sizes 1,4,8,16 --official --channels-last --compile --json gpu.json

CPU smoke test (the tiny random SD folder; ``tests/test_gpu_script.py`` runs it)::

    python benchmarks/gpu_throughput.py --tiny --device cpu --dtypes fp32 --batch-sizes 1,2 --official --check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

MODELS = {"sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd21": "stabilityai/stable-diffusion-2-1-base"}
DTYPES = {"fp16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp32": "float32", "float32": "float32"}
#: SPair-71k test split: images through ``dhf`` in the issue's target
SPAIR_TEST_IMAGES = 1800
#: the official per-image stack: 11 timesteps × 10,560 channels × 64 × 64 in fp16
#: (docs/reproduce.md#what-you-need-and-what-it-costs)
OFFICIAL_STACK_BYTES_FP16 = 11 * 10560 * 64 * 64 * 2

#: Dense (no sparsity) tensor-core peaks in TFLOP/s from the vendors' spec sheets, by device-name
#: substring (first match wins: more specific names first). ``--peak-tflops`` overrides.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7}),
    ("H100 PCIe", {"bfloat16": 756.0, "float16": 756.0, "float32": 378.0}),
    ("H100 NVL", {"bfloat16": 835.0, "float16": 835.0, "float32": 417.5}),
    ("H100", {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7}),  # SXM; float32 = TF32
    ("GH200", {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7}),
    ("A100", {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0}),
    ("L40S", {"bfloat16": 362.05, "float16": 362.05, "float32": 183.0}),
    ("L4", {"bfloat16": 121.0, "float16": 121.0, "float32": 60.0}),
    ("A10", {"bfloat16": 125.0, "float16": 125.0, "float32": 62.5}),
    ("RTX 4090", {"bfloat16": 165.2, "float16": 165.2, "float32": 82.6}),  # fp32 accumulate
)


# ------------------------------------------------------------------------------------------------
# Device facts
# ------------------------------------------------------------------------------------------------
def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def peak_tflops(name: str, dtype: str, override: float | None = None) -> float | None:
    if override:
        return float(override)
    for key, table in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return table.get(dtype)
    return None


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def memory_allocated(device: str) -> int | None:
    return torch.cuda.memory_allocated(torch.device(device)) if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def max_allocated(device: str) -> int | None:
    return torch.cuda.max_memory_allocated(torch.device(device)) if device.startswith("cuda") else None


# ------------------------------------------------------------------------------------------------
# FLOPs
# ------------------------------------------------------------------------------------------------
def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` as ``torch.utils.flop_counter.FlopCounterMode`` counts them (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        fn()
    return int(counter.get_total_flops())


def unet_forward_flops(unet, batch: int, latent_side: int, context, device: str) -> int:
    """FLOPs of one full UNet forward at ``batch`` (convolutions, matmuls, SDPA)."""
    x = torch.randn(batch, unet.config.in_channels, latent_side, latent_side, device=device, dtype=unet.dtype)
    t = torch.full((batch,), 500.0, device=device)
    ctx = context.expand(batch, -1, -1)
    # ``forward`` itself: a compiled UNet's ``__call__`` would trace again under the counting mode
    return count_flops(lambda: unet.forward(x, t, encoder_hidden_states=ctx))


def unet_only_seconds(ex, layers, batch: int, iters: int, device: str) -> float:
    """Seconds for ``iters`` UNet calls at ``batch`` made as extraction makes them, maps dropped.

    The same hooks, inputs and entry point (``extractor._unet``) as extraction, so a compiled UNet
    runs the graph extraction compiled instead of tracing a hook-less one.
    """
    from corrbench_sd.hooks import Conv2Capture

    side = ex.image_size // ex._vae_factor()
    steps = ex.schedule.inversion_steps()
    step = steps[len(steps) // 2]
    capture = Conv2Capture(layers, lambda *a: None, ex.output_resolution, grad_mode=None)  # slot None: dropped
    with torch.inference_mode(), capture.attached(ex.unet):
        # inference tensors, as in extraction: a compiled UNet guards on the dispatch keys too
        x = torch.randn(batch, ex.unet.config.in_channels, side, side, device=device)
        context = ex.components.text_embeddings([""]).expand(batch, -1, -1).contiguous()
        ex._unet(x, step, context, capture, stop=False)
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            ex._unet(x, step, context, capture, stop=False)
        synchronize(device)
        return time.perf_counter() - t0


def vae_encode_flops(ex, device: str) -> int:
    """FLOPs of encoding one image (the VAE encoder at ``image_size``)."""
    vae = ex.components.vae
    x = torch.randn(1, 3, ex.image_size, ex.image_size, device=device, dtype=vae.dtype)
    return count_flops(lambda: vae.encode(x))


def architecture_facts(model_id: str, image_size: int = 512) -> dict[str, Any]:
    """Parameter counts and per-image FLOPs of a published SD architecture, built on the meta device.

    Nothing is allocated or downloaded, so this runs anywhere in seconds: it states the work one
    ``dhf`` image costs (VAE encode + 50 UNet calls) before any GPU is measured.
    """
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from transformers import CLIPTextConfig, CLIPTextModel

    from corrbench_sd.configs import architecture

    arch = architecture(model_id)
    if arch is None:
        raise SystemExit(f"no published architecture for {model_id!r}; known: {', '.join(MODELS.values())}")
    with warnings.catch_warnings(), init_empty_weights():
        warnings.simplefilter("ignore")
        unet = UNet2DConditionModel.from_config(arch["unet"])
        vae = AutoencoderKL.from_config(arch["vae"])
        text = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in arch["text_encoder"].items()}))
    unet.set_attn_processor(AttnProcessor2_0())
    side = image_size // 8
    x = torch.randn(1, 4, side, side, device="meta")
    ctx = torch.randn(1, arch["tokenizer"]["model_max_length"], arch["unet"]["cross_attention_dim"], device="meta")
    unet_flops = count_flops(lambda: unet(x, torch.tensor([500.0], device="meta"), encoder_hidden_states=ctx))
    vae_flops = count_flops(lambda: vae.encode(torch.randn(1, 3, image_size, image_size, device="meta")))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"model": model_id, "image_size": image_size, "unet_params": count(unet), "vae_params": count(vae),
            "text_encoder_params": count(text), "unet_gflops_per_forward": unet_flops / 1e9,
            "vae_encode_gflops": vae_flops / 1e9,
            "dhf_tflops_per_image_50_steps": (vae_flops + 50 * unet_flops) / 1e12}


# ------------------------------------------------------------------------------------------------
# Building the descriptor
# ------------------------------------------------------------------------------------------------
@dataclass
class Setting:
    model: str  # sd15 / sd21 / tiny
    dtype: str  # torch dtype name
    batch: int
    mode: str  # corrbench (streaming) / official
    compile: bool = False
    channels_last: bool = False


def make_descriptor(model_spec: str, dtype: str, device: str, *, num_steps: int, image_size: int,
                    output_resolution: int, load_size: int, save_indices: Sequence[int] | None = None):
    """corrbench's ``dhf`` descriptor with random SD weights (published architecture) and a random network.

    ``save_indices`` replaces the paper's 11 saved steps (short smoke runs with few DDIM steps); the
    random network is then built for that many timesteps, as a checkpoint trained on them would be.
    """
    from corrbench_dhf.methods import DHF

    config = {"model": model_spec, "dtype": dtype, "num_steps": num_steps, "image_size": image_size,
              "output_resolution": output_resolution, "load_size": load_size, "weights": "random",
              "sd_weights": "random"}
    desc = DHF(config=config, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        desc.ensure_ready()
    if save_indices is not None:
        desc.indices = desc.extractor.schedule.check_indices(save_indices)
        desc.network = desc.build_network(desc.extractor.layer_channels(desc.layers), len(desc.indices))
    return desc


def tiny_folder(root: Path) -> Path:
    from corrbench.testing.sd import make_tiny_sd

    return make_tiny_sd(root / "tiny-sd")


@contextlib.contextmanager
def sdpa_backend(name: str | None) -> Iterator[None]:
    if not name:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]
    with sdpa_kernel(backend):
        yield


def prepare_unet(desc, *, channels_last: bool, compile_unet: bool, compile_mode: str,
                 compile_backend: str = "inductor") -> None:
    """Switch the descriptor's extractor to ``sd.channels_last`` / ``sd.compile`` as a user's config would."""
    from corrbench_sd.speed import prepare_unet as prepare

    ex = desc.extractor
    ex.channels_last = ex.channels_last or channels_last
    if compile_unet:
        ex.compile_mode = compile_mode
        ex.compile_backend = compile_backend
    prepare(ex.unet, mode=ex.compile_mode, channels_last=ex.channels_last, backend=ex.compile_backend)


# ------------------------------------------------------------------------------------------------
# The two extraction structures
# ------------------------------------------------------------------------------------------------
def run_corrbench(desc, images: torch.Tensor):
    """corrbench's path: ``Descriptor.describe`` (streaming aggregation, early stop, inference mode)."""
    return desc.describe(images)


def run_official(desc, images: torch.Tensor, *, host_copy: bool = True):
    """The official implementation's structure on the same modules and numbers.

    Every one of the 50 UNet calls runs in full, the latent goes to the host and back after each
    step, every captured map is written into one ``B × S·ΣC × R × R`` stack in the compute dtype,
    which is then copied to float32 and fed to the aggregation network's stack-then-aggregate form.
    The UNet calls go through the extractor's own ``_unet`` (the same hooks and inputs), so the
    comparison is of the structure alone.
    """
    from corrbench_sd.ddim import ddim_update
    from corrbench_sd.hooks import Conv2Capture

    ex = desc.extractor
    net = desc.network
    channels = list(net.layer_channels)
    offsets = [sum(channels[:n]) for n in range(len(channels))]
    per_t = sum(channels)
    R = ex.output_resolution
    unet = ex.unet
    indices = tuple(desc.indices)
    slot_of = {k: s for s, k in enumerate(indices)}
    with torch.inference_mode():
        stack = torch.empty((images.shape[0], len(indices) * per_t, R, R), dtype=unet.dtype, device=images.device)

        def consume(slot, position, feat):
            c0 = slot * per_t + offsets[position]
            stack[:, c0:c0 + channels[position]] = feat.to(stack.dtype)

        capture = Conv2Capture(desc.layers, consume, R, grad_mode=None)
        with capture.attached(unet):
            x = ex.encode(images)
            context = ex.components.text_embeddings([""]).expand(x.shape[0], -1, -1)
            for step in ex.schedule.inversion_steps():  # all of them, no early stop
                capture.slot = slot_of.get(step.index)
                eps = ex._unet(x, step, context, capture, stop=False)
                x = ddim_update(x, eps, step)
                if host_copy:  # the official loop keeps the latent trajectory on the host
                    x = x.cpu().to(images.device)
        return net(stack.float())


# ------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------
@dataclass
class Row:
    device: str
    model: str
    dtype: str
    mode: str
    batch: int
    compile: bool
    channels_last: bool
    sdpa: str
    iters: int
    seconds: float
    images_per_s: float
    s_per_image: float
    spair_test_minutes: float
    unet_calls_per_batch: int
    unet_gflops_per_image_call: float
    vae_gflops_per_image: float
    e2e_tflops: float
    unet_tflops: float | None = None
    peak_tflops: float | None = None
    e2e_fraction_of_peak: float | None = None
    unet_fraction_of_peak: float | None = None
    peak_gpu_mb: float | None = None
    weights_gpu_mb: float | None = None
    peak_above_weights_mb_per_image: float | None = None
    stack_fraction: float | None = None
    sync_warnings: int | None = None
    dynamo_graphs: int | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def _images(batch: int, side: int, device: str, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator("cpu").manual_seed(seed)
    return torch.rand(batch, 3, side, side, generator=gen).to(device)


class UNetCallCounter:
    """Counts the extractor's UNet calls, early-stopped ones included.

    It wraps the extractor's ``_unet`` method rather than hooking the module: a hook on a compiled
    UNet changes its guards and would make dynamo trace it again.
    """

    def __init__(self, extractor):
        self.extractor = extractor
        self.calls = 0

    def __enter__(self):
        inner = self.extractor._unet

        def counted(*args, **kwargs):
            self.calls += 1
            return inner(*args, **kwargs)

        self.extractor._unet = counted
        return self

    def __exit__(self, *exc):
        del self.extractor._unet  # the class's method again
        return False


def _dynamo_graphs() -> int | None:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"].get("unique_graphs", 0))
    except Exception:  # private API: informational only
        return None


def measure(desc, setting: Setting, *, device: str, iters: int, warmup: int, peak: float | None,
            sdpa: str | None, sync_debug: bool, unet_only_iters: int) -> Row:
    ex = desc.extractor
    unet = ex.unet
    load = desc.preprocessing().load_size
    images = _images(setting.batch, load, device)
    fn = run_corrbench if setting.mode == "corrbench" else run_official
    side = ex.image_size // ex._vae_factor()
    context = ex.components.text_embeddings([""])
    with sdpa_backend(sdpa):
        flops_call = unet_forward_flops(unet, 1, side, context, device)  # per image (FLOPs are linear in batch)
        flops_vae = vae_encode_flops(ex, device)
        with UNetCallCounter(ex) as counter:
            fn(desc, images)
        calls = counter.calls
        for _ in range(max(0, warmup - 1)):
            fn(desc, images)
        synchronize(device)
        weights_bytes = memory_allocated(device)
        reset_peak(device)
        sync_count = None
        with warnings.catch_warnings(record=True) as caught:
            if sync_debug and device.startswith("cuda"):
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
            try:
                t0 = time.perf_counter()
                for _ in range(iters):
                    out = fn(desc, images)
                synchronize(device)
                seconds = time.perf_counter() - t0
            finally:
                if sync_debug and device.startswith("cuda"):
                    torch.cuda.set_sync_debug_mode(0)
                    sync_count = sum("synchroniz" in str(w.message).lower() for w in caught) // max(iters, 1)
        del out
        peak_bytes = max_allocated(device)
        unet_tflops = None
        if unet_only_iters > 0:
            unet_s = unet_only_seconds(ex, desc.layers, setting.batch, unet_only_iters, device)
            unet_tflops = flops_call * setting.batch * unet_only_iters / unet_s / 1e12
    n_images = setting.batch * iters
    ips = n_images / seconds
    # VAE + UNet FLOPs over the whole wall time (the early-stopped last call of the streaming path is
    # counted as a full one, < 1 % of the work); the UNet-only loop is the clean kernel-efficiency figure
    e2e = (flops_vae + flops_call * calls) * setting.batch * iters / seconds / 1e12
    row = Row(device=device_name(device), model=setting.model, dtype=setting.dtype, mode=setting.mode,
              batch=setting.batch, compile=setting.compile, channels_last=setting.channels_last,
              sdpa=sdpa or "default", iters=iters, seconds=seconds, images_per_s=ips, s_per_image=1 / ips,
              spair_test_minutes=SPAIR_TEST_IMAGES / ips / 60, unet_calls_per_batch=calls,
              unet_gflops_per_image_call=flops_call / 1e9, vae_gflops_per_image=flops_vae / 1e9, e2e_tflops=e2e,
              unet_tflops=unet_tflops,
              peak_tflops=peak, sync_warnings=sync_count, dynamo_graphs=_dynamo_graphs() if setting.compile else None)
    if peak:
        row.e2e_fraction_of_peak = e2e / peak
        row.unet_fraction_of_peak = unet_tflops / peak if unet_tflops is not None else None
    if peak_bytes is not None:
        row.peak_gpu_mb = peak_bytes / 2**20
        row.weights_gpu_mb = weights_bytes / 2**20
        per_image = (peak_bytes - weights_bytes) / setting.batch
        row.peak_above_weights_mb_per_image = per_image / 2**20
        row.stack_fraction = per_image / OFFICIAL_STACK_BYTES_FP16
    return row


def check_parity(desc, device: str, batch: int = 2) -> float:
    """Max relative difference between corrbench's streaming output and the official structure's."""
    images = _images(batch, desc.preprocessing().load_size, device, seed=1)
    a = run_corrbench(desc, images).float()
    b = run_official(desc, images, host_copy=False).float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default="sd15,sd21", help="sd15, sd21 (published architectures, random weights)")
    p.add_argument("--tiny", action="store_true", help="the tiny random SD folder instead (CPU smoke test)")
    p.add_argument("--dtypes", default="bf16,fp16", help="bf16, fp16, fp32")
    p.add_argument("--batch-sizes", default="1,4,8,16")
    p.add_argument("--iters", type=int, default=3, help="timed batches per setting")
    p.add_argument("--warmup", type=int, default=1, help="untimed batches first (compilation, autotuning)")
    p.add_argument("--unet-iters", type=int, default=5, help="UNet-only timed forwards per setting (0: skip)")
    p.add_argument("--official", action="store_true", help="also run the official structure (batch 2) as baseline")
    p.add_argument("--official-only", action="store_true", help="only the official structure")
    p.add_argument("--compile", action="store_true", help="also run each setting with torch.compile on the UNet")
    p.add_argument("--compile-mode", default="max-autotune-no-cudagraphs")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend (the CPU smoke test uses eager: it traces, generates no code)")
    p.add_argument("--channels-last", action="store_true", help="also run each setting with channels-last")
    p.add_argument("--sdpa", choices=["flash", "efficient", "cudnn", "math"], default=None,
                   help="force one SDPA backend (default: PyTorch's choice)")
    p.add_argument("--sync-debug", action="store_true",
                   help="count host synchronisations per batch (torch.cuda.set_sync_debug_mode)")
    p.add_argument("--check", action="store_true", help="check corrbench's output equals the official structure's")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak, if not in the table")
    p.add_argument("--num-steps", type=int, default=50)
    p.add_argument("--save-indices", default=None,
                   help="saved step indices, e.g. 3,0 with --num-steps 4 (default: the paper's 49,45,...,0)")
    p.add_argument("--image-size", type=int, default=None, help="UNet input side (default 512; tiny: 64)")
    p.add_argument("--output-resolution", type=int, default=None, help="feature map side (default 64; tiny: 16)")
    p.add_argument("--json", type=Path, default=None, help="write the rows and the environment here")
    p.add_argument("--describe", action="store_true",
                   help="only print parameter counts and per-image FLOPs of --models (meta device, no GPU needed)")
    return p.parse_args(argv)


def environment(device: str) -> dict[str, Any]:
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "device": device_name(device),
           "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:  # pragma: no cover
        pass
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        env.update(gpu_memory_gb=props.total_memory / 2**30, sm_count=props.multi_processor_count,
                   capability=f"{props.major}.{props.minor}")
    return env


def format_table(rows: Sequence[Row]) -> str:
    head = ("model", "dtype", "mode", "B", "cmp", "cl", "img/s", "SPair min", "peak MB", "MB/img", "/stack",
            "UNet TF/s", "%peak", "e2e TF/s", "syncs")
    lines = [" | ".join(head)]
    for r in rows:
        if r.error:
            lines.append(f"{r.model} | {r.dtype} | {r.mode} | {r.batch} | {int(r.compile)} | {int(r.channels_last)} | "
                         f"error: {r.error}")
            continue
        f = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
        lines.append(" | ".join([r.model, r.dtype, r.mode, str(r.batch), str(int(r.compile)), str(int(r.channels_last)),
                                 f(r.images_per_s, ".3g"), f(r.spair_test_minutes, ".3g"), f(r.peak_gpu_mb, ".0f"),
                                 f(r.peak_above_weights_mb_per_image, ".0f"), f(r.stack_fraction, ".3f"),
                                 f(r.unet_tflops, ".3g"), f(None if r.unet_fraction_of_peak is None
                                                            else 100 * r.unet_fraction_of_peak, ".0f"),
                                 f(r.e2e_tflops, ".3g"), f(r.sync_warnings, "d")]))
    return "\n".join(lines)


def ratios(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Best corrbench images/s over the official structure's, per model and dtype."""
    out = []
    for key in sorted({(r.model, r.dtype) for r in rows}):
        ok = [r for r in rows if (r.model, r.dtype) == key and not r.error]
        ours = [r for r in ok if r.mode == "corrbench"]
        official = [r for r in ok if r.mode == "official"]
        if ours and official:
            best = max(ours, key=lambda r: r.images_per_s)
            base = max(official, key=lambda r: r.images_per_s)
            out.append({"model": key[0], "dtype": key[1], "corrbench_images_per_s": best.images_per_s,
                        "corrbench_setting": {"batch": best.batch, "compile": best.compile,
                                              "channels_last": best.channels_last},
                        "official_images_per_s": base.images_per_s,
                        "speedup": best.images_per_s / base.images_per_s})
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.describe:
        facts = [architecture_facts(MODELS[m], args.image_size or 512) for m in _csv(args.models)]
        print(json.dumps(facts, indent=2))
        return {"architectures": facts}
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here (use --tiny --device cpu for the smoke test)")
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    dtypes = [DTYPES[d.lower()] for d in _csv(args.dtypes)]
    batches = [int(b) for b in _csv(args.batch_sizes)]
    tmp = tempfile.TemporaryDirectory(prefix="corrbench-gpu-")
    if args.tiny:
        models = {"tiny": str(tiny_folder(Path(tmp.name)))}
        image_size = args.image_size or 64
        resolution = args.output_resolution or 16
    else:
        models = {m: MODELS[m] for m in _csv(args.models)}
        image_size = args.image_size or 512
        resolution = args.output_resolution or 64
    name = device_name(device)
    variants = [(False, False)]
    if args.channels_last:
        variants.append((False, True))
    if args.compile:
        variants.append((True, args.channels_last))
    rows: list[Row] = []
    parity: dict[str, float] = {}
    try:
        for model_key, spec in models.items():
            for dtype in dtypes:
                desc = make_descriptor(spec, dtype, device, num_steps=args.num_steps, image_size=image_size,
                                       output_resolution=resolution, load_size=224 if not args.tiny else 32,
                                       save_indices=[int(k) for k in _csv(args.save_indices)] if args.save_indices
                                       else None)
                peak = peak_tflops(name, dtype, args.peak_tflops)
                if args.check:
                    parity[f"{model_key}/{dtype}"] = check_parity(desc, device)
                plan: list[Setting] = []
                if args.official or args.official_only:  # first: later settings leave the UNet compiled/channels-last
                    plan.append(Setting(model_key, dtype, 2, "official"))
                if not args.official_only:
                    for compile_unet, cl in variants:
                        plan += [Setting(model_key, dtype, b, "corrbench", compile_unet, cl) for b in batches]
                for setting in plan:
                    if setting.compile or setting.channels_last:
                        prepare_unet(desc, channels_last=setting.channels_last, compile_unet=setting.compile,
                                     compile_mode=args.compile_mode, compile_backend=args.compile_backend)
                    try:
                        row = measure(desc, setting, device=device, iters=args.iters, warmup=args.warmup, peak=peak,
                                      sdpa=args.sdpa, sync_debug=args.sync_debug, unet_only_iters=args.unet_iters)
                    except Exception as exc:  # an OOM or a compile failure is a result, not a crash
                        row = Row(name, model_key, dtype, setting.mode, setting.batch, setting.compile,
                                  setting.channels_last, args.sdpa or "default", 0, math.nan, math.nan, math.nan,
                                  math.nan, 0, math.nan, math.nan, math.nan, error=f"{type(exc).__name__}: {str(exc)[:300]}")
                        if device.startswith("cuda"):
                            torch.cuda.empty_cache()
                    rows.append(row)
                    print(format_table([row]).splitlines()[-1], flush=True)
                del desc
                from corrbench_sd.loading import clear_cache

                clear_cache()  # the next dtype/model builds its own UNet
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
    finally:
        tmp.cleanup()
    report = {"environment": environment(device), "argv": list(sys.argv if argv is None else argv),
              "rows": [asdict(r) for r in rows], "ratios": ratios(rows), "parity_max_rel_diff": parity,
              "official_stack_mb_per_image_fp16": OFFICIAL_STACK_BYTES_FP16 / 2**20}
    print()
    print(format_table(rows))
    for r in report["ratios"]:
        print(f"{r['model']} {r['dtype']}: corrbench {r['corrbench_images_per_s']:.3g} img/s vs official structure "
              f"{r['official_images_per_s']:.3g} img/s = {r['speedup']:.2f}x")
    for key, diff in parity.items():
        print(f"parity {key}: max relative difference corrbench vs official structure {diff:.2e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


if __name__ == "__main__":
    main()
