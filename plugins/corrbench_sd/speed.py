"""The UNet fast path: ``sd.compile`` (``torch.compile``) and ``sd.channels_last``.

Both change how fast the same numbers come out, never which numbers (up to kernel rounding, like a
different batch size), so they are left out of the feature-cache key (``Descriptor.runtime_keys``).
``sd.channels_last`` is refused on a CPU device: there torch's GroupNorm on channels-last float32
inputs loses precision badly enough to change the features (:data:`CHANNELS_LAST_CPU_REFUSAL`).

The UNet is shared by every SD method of a process (``loading.get_components``), so it is prepared
once, in place, and remembers how: a second method asking for the same settings costs nothing, and
one asking for none keeps the compiled UNet (the same numbers, already paid for).

Compilation is per input shape (``dynamic=False``: static shapes let inductor pick the fastest
kernels), so the extractor pads a batch smaller than the largest one seen to that size — the last,
ragged batch of a dataset would otherwise compile the UNet again, minutes with autotuning. UNet rows
are independent (group norm, attention and convolutions act per image), so padding rows changes no
real row.
"""

from __future__ import annotations

from typing import Any

from corrbench.errors import UsageError

#: ``sd.compile`` values → torch.compile mode (None: no compilation). ``true`` means the mode that
#: autotunes kernels without CUDA graphs (graphs would pin the recorded feature maps' memory).
COMPILE_MODES: dict[str, str | None] = {
    "false": None, "off": None, "none": None, "0": None,
    "true": "max-autotune-no-cudagraphs", "on": "max-autotune-no-cudagraphs", "1": "max-autotune-no-cudagraphs",
    "default": "default", "reduce-overhead": "reduce-overhead", "max-autotune": "max-autotune",
    "max-autotune-no-cudagraphs": "max-autotune-no-cudagraphs",
}


def compile_mode(value: Any) -> str | None:
    """``sd.compile`` as given (bool or string) → a torch.compile mode, or None for eager."""
    key = str(value).strip().lower()
    if key not in COMPILE_MODES:
        raise UsageError(f"sd.compile={value!r}: expected true, false or a torch.compile mode "
                         f"({', '.join(m for m in COMPILE_MODES if m not in ('on', 'off', 'none', '0', '1'))})")
    return COMPILE_MODES[key]


def as_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower()
    if key in ("true", "1", "yes", "on"):
        return True
    if key in ("false", "0", "no", "off"):
        return False
    raise UsageError(f"{what}={value!r}: expected true or false")


#: Why ``sd.channels_last=true`` is refused on a CPU (measured with torch 2.14.1: ``nn.GroupNorm(32, 64)``
#: on ``randn(1, 64, 256, 256) * 0.01 + 5`` is off by 2.8e-5 relative to float64 on a contiguous input
#: and by 0.88 on a channels-last one; the SD VAE and UNet are full of such group norms).
CHANNELS_LAST_CPU_REFUSAL = (
    "sd.channels_last=true is refused on CPU: torch's CPU GroupNorm on channels-last float32 inputs loses "
    "precision (relative error up to ~0.9 against float64, where a contiguous input gives ~3e-5), which "
    "would change the features; use it on CUDA only")


def is_cpu(device: Any) -> bool:
    """Whether ``device`` (a string or torch.device) names the CPU."""
    return str(device).strip().lower().split(":")[0] == "cpu"


def check_channels_last(channels_last: bool, device: Any) -> None:
    """Refuse ``sd.channels_last=true`` on a CPU device (see :data:`CHANNELS_LAST_CPU_REFUSAL`)."""
    if channels_last and is_cpu(device):
        raise UsageError(CHANNELS_LAST_CPU_REFUSAL)


def check_runtime_config(config: dict[str, Any], device: Any = None) -> None:
    """Fail on a bad ``sd.compile`` / ``sd.channels_last`` when the method is made, not at the first batch.

    With ``device`` given, ``sd.channels_last=true`` on a CPU is refused as well.
    """
    compile_mode(config.get("compile", False))
    channels_last = as_bool(config.get("channels_last", False), "sd.channels_last")
    if device is not None:
        check_channels_last(channels_last, device)


def is_compiled(unet) -> bool:
    """Whether ``nn.Module.compile`` was called on ``unet`` (hooks must then stay graph-friendly)."""
    return getattr(unet, "_compiled_call_impl", None) is not None


def prepare_unet(unet, *, mode: str | None, channels_last: bool, backend: str = "inductor") -> None:
    """Channels-last weights and/or ``torch.compile`` on the shared UNet, each applied at most once."""
    import torch

    if channels_last and not getattr(unet, "_corrbench_channels_last", False):
        unet.to(memory_format=torch.channels_last)
        unet._corrbench_channels_last = True
    if mode is not None and not is_compiled(unet):
        options: dict[str, Any] = {"dynamic": False, "backend": backend}
        if backend == "inductor":  # the mode names inductor's presets; other backends take none
            options["mode"] = mode
        unet.compile(**options)


def padded_batch(batch: int, unet) -> int:
    """The batch size to run a compiled UNet at: the largest seen so far (recorded on the UNet)."""
    if not is_compiled(unet):
        return batch
    largest = max(batch, int(getattr(unet, "_corrbench_largest_batch", 0)))
    unet._corrbench_largest_batch = largest
    return largest
