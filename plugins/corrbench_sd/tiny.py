"""Tiny, weightless configurations of the SD methods for tests (``Descriptor.tiny_config``).

A random-weight SD pipeline with SD's decoder structure but a few channels per block is written once
into the caller's work folder (:func:`corrbench.testing.sd.make_tiny_sd`) and loaded through the same
code path as real weights. Inputs are small (32 px load, 64 px UNet input, 16 × 16 maps) and the
inversion runs 10 steps, so one image takes well under a second on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_SEED = 0
TINY_NUM_STEPS = 10
#: the saved steps of the tiny inversion: the clean pass, a middle step and the noisiest, clean first
TINY_SAVE_INDICES = (9, 5, 0)


def tiny_sd_folder(workdir: str | Path, seed: int = TINY_SEED) -> Path:
    """The tiny pipeline folder under ``workdir``, written on first use."""
    from corrbench.testing.sd import make_tiny_sd

    folder = Path(workdir) / f"tiny-sd-seed{seed}"
    if not (folder / "model_index.json").is_file():
        make_tiny_sd(folder, seed=seed)
    return folder


def tiny_sd_config(workdir: str | Path, seed: int = TINY_SEED) -> dict[str, Any]:
    """The SD-shared keys (without the ``sd.`` prefix) that select the tiny pipeline and sizes."""
    return {"model": str(tiny_sd_folder(workdir, seed)), "weights": "pretrained", "image_size": 64,
            "output_resolution": 16, "load_size": 32, "num_steps": TINY_NUM_STEPS,
            "raw_indices": list(TINY_SAVE_INDICES)}
