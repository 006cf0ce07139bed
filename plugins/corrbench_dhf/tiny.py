"""Tiny, weightless configurations of the DHF methods for tests (``Descriptor.tiny_config``).

The tiny SD pipeline of :mod:`corrbench_sd.tiny` plus a seeded random aggregation network saved in
the official checkpoint format, so the tiny methods load it through the same code as released weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corrbench_sd.tiny import TINY_NUM_STEPS, TINY_SAVE_INDICES, TINY_SEED, tiny_sd_config, tiny_sd_folder

#: DHF layers (0-based) whose maps are constant in the tiny pipeline: at its 64 px input the first up
#: block works on a 1 × 1 latent. A constant map has zero variance, and the bottleneck's one-channel
#: GroupNorm then scales float32 round-off up to unit-size features, which change with the batch and the
#: CPU (6 % between CPU capabilities). The tiny network gives these layers mixing weight exactly 0.
CONSTANT_LAYERS = (0, 1, 2)


def tiny_checkpoint(workdir: str | Path, seed: int = TINY_SEED) -> Path:
    """A seeded random aggregation network for the tiny pipeline, in the official format (written once)."""
    import torch

    from corrbench_sd.extractor import LAYERS, SDFeatureExtractor

    from .checkpoint import save_checkpoint
    from .network import AggregationNetwork

    path = Path(workdir) / f"tiny-dhf-seed{seed}.pt"
    if path.is_file():
        return path
    sd = tiny_sd_folder(workdir, seed)
    channels = SDFeatureExtractor(str(sd)).layer_channels(LAYERS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = AggregationNetwork(channels, len(TINY_SAVE_INDICES), projection_dim=32, num_norm_groups=8)
        with torch.no_grad():  # distinct mixing weights, so the pruned rows' argmax slot is well defined
            net.mixing_weights.copy_(torch.randn(net.mixing_weights.shape) * 0.5)
            for slot in range(net.num_slots):  # softmax gives these exactly 0: see CONSTANT_LAYERS
                if slot % net.num_layers in CONSTANT_LAYERS:
                    net.mixing_weights[slot] = -1e4
    return save_checkpoint(path, net, step=0,
                           config={"save_timestep": list(TINY_SAVE_INDICES), "num_timesteps": TINY_NUM_STEPS,
                                   "num_norm_groups": 8, "projection_dim": 32, "model_id": "tiny-sd",
                                   "note": f"corrbench tiny configuration: random weights, seed {seed}, "
                                           f"layers {list(CONSTANT_LAYERS)} weighted 0"})


def tiny_dhf_config(workdir: str | Path, *, with_checkpoint: bool = True, seed: int = TINY_SEED) -> dict[str, Any]:
    sd = tiny_sd_config(workdir, seed)
    cfg = {k: v for k, v in sd.items() if k not in ("weights", "raw_indices")}  # DHF saves its network's steps
    cfg["weights"] = str(tiny_checkpoint(workdir, seed)) if with_checkpoint else "random"
    return cfg
