"""Naming mixing slots: slot index → (timestep slot, layer) → saved step index, UNet timestep, SD module.

Computed from the slot order (timestep-major, docs/methods.md#the-12-decoder-layers) and the DDIM
arithmetic (docs/methods.md#ddim-inversion),
never from the checkpoints' ``mixing_weights_names`` (pitfall P1). Needs no torch or diffusers, so
plots and reports can label slots cheaply.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

#: DHF's layers (up_blocks[i].resnets[j]), named 1 … 12 in this order
LAYERS: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2),
                                       (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2))
PAPER_SAVE_INDICES: tuple[int, ...] = (49, 45, 40, 35, 30, 25, 20, 15, 10, 5, 0)
TRAIN_TIMESTEPS = 1000


def inversion_timestep(index: int, num_steps: int = 50) -> int:
    """UNet timestep at which the inversion computes saved index ``index`` (49 → −1, 45 → 60, 0 → 960)."""
    ratio = TRAIN_TIMESTEPS // num_steps
    i = num_steps - 1 - index  # inversion step number
    return -1 if i == 0 else (i - 1) * ratio


def generation_timestep(index: int, num_steps: int = 50) -> int:
    """UNet timestep of generation step ``index`` (0 → 980, 49 → 0)."""
    ratio = TRAIN_TIMESTEPS // num_steps
    return (num_steps - 1 - index) * ratio


@dataclass(frozen=True)
class SlotInfo:
    slot: int  # mixing-weight index
    timestep_slot: int
    layer: int  # 0-based position in the layer list
    layer_name: int  # 1-based, DHF's naming
    module: str  # e.g. up_blocks.1.resnets.0 (the conv2 output of it)
    save_index: int
    unet_timestep: int  # during inversion
    weight: float | None = None  # softmax mixing weight, when known

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def label(self) -> str:
        return f"slot {self.slot}: layer {self.layer_name} ({self.module}) at t={self.unet_timestep}"


def slot_info(slot: int, *, save_indices: Sequence[int] = PAPER_SAVE_INDICES,
              layers: Sequence[tuple[int, int]] = LAYERS, num_steps: int = 50,
              weight: float | None = None) -> SlotInfo:
    n_layers = len(layers)
    s, l = divmod(int(slot), n_layers)
    if not 0 <= s < len(save_indices):
        raise IndexError(f"slot {slot} outside 0..{n_layers * len(save_indices) - 1}")
    i, j = layers[l]
    k = int(save_indices[s])
    return SlotInfo(int(slot), s, l, l + 1, f"up_blocks.{i}.resnets.{j}", k, inversion_timestep(k, num_steps),
                    weight)
