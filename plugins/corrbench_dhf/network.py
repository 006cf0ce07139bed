"""The Diffusion Hyperfeatures aggregation network (docs/methods.md#aggregation-network) and its streaming form.

Module names follow the official code exactly (``bottleneck_layers.{l}.0.{shortcut,conv1,conv2,conv3}``
with a ``.norm`` child, ``mixing_weights``) so that the released checkpoints load with ``strict=True``.
The bottleneck is detectron2's ``BottleneckBlock`` re-written here in plain torch (detectron2 is not a
dependency): 1×1 C→w, GN, ReLU; 3×3 w→w, GN, ReLU; 1×1 w→P, GN; plus a projected shortcut; add; ReLU.

Slot order is **timestep-major**: mixing slot ``i`` is layer ``i mod L`` at timestep slot ``i div L``
(pitfall P1: the official ``mixing_weights_names`` get this wrong, so corrbench never uses them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

#: The loss temperature is fixed (a plain tensor in the official code, never trained or saved).
TEMPERATURE = 0.07
DEFAULT_PROJECTION_DIM = 384
DEFAULT_NORM_GROUPS = 32


class ConvNorm(nn.Conv2d):
    """A bias-free convolution followed by an optional norm stored as the child ``norm``.

    Mirrors detectron2's ``Conv2d`` wrapper so state-dict keys read ``conv1.weight``, ``conv1.norm.weight``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, padding: int = 0,
                 norm: nn.Module | None = None):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return self.norm(x) if self.norm is not None else x


def c2_msra_fill(conv: nn.Conv2d) -> None:
    """detectron2's initialisation: Kaiming normal, fan-out, ReLU gain; zero bias."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class BottleneckBlock(nn.Module):
    """detectron2 ``BottleneckBlock`` with GroupNorm, stride 1, one group, no zero-init of the last norm."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int, num_groups: int):
        super().__init__()
        for c in (out_channels, bottleneck_channels):
            if c % num_groups:
                raise ValueError(f"GroupNorm with {num_groups} groups needs channels divisible by it, got {c}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        # detectron2 adds a projection shortcut only when the channel count changes; keep that rule
        self.shortcut = (ConvNorm(in_channels, out_channels, 1, norm=nn.GroupNorm(num_groups, out_channels))
                         if in_channels != out_channels else None)
        self.conv1 = ConvNorm(in_channels, bottleneck_channels, 1, norm=nn.GroupNorm(num_groups, bottleneck_channels))
        self.conv2 = ConvNorm(bottleneck_channels, bottleneck_channels, 3, padding=1,
                              norm=nn.GroupNorm(num_groups, bottleneck_channels))
        self.conv3 = ConvNorm(bottleneck_channels, out_channels, 1, norm=nn.GroupNorm(num_groups, out_channels))
        for layer in (self.shortcut, self.conv1, self.conv2, self.conv3):
            if layer is not None:
                c2_msra_fill(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out = out + (self.shortcut(x) if self.shortcut is not None else x)
        return F.relu_(out)


@dataclass(frozen=True)
class Slot:
    """One mixing slot: index ``i`` = ``timestep_slot * num_layers + layer``."""

    index: int
    timestep_slot: int
    layer: int


def slot_index(timestep_slot: int, layer: int, num_layers: int) -> int:
    return timestep_slot * num_layers + layer


def slot_of(index: int, num_layers: int) -> Slot:
    return Slot(index, index // num_layers, index % num_layers)


class AggregationNetwork(nn.Module):
    """Bottleneck per layer (shared across timesteps) + one softmax-normalised weight per (timestep, layer)."""

    def __init__(self, layer_channels: Sequence[int], num_timesteps: int, *,
                 projection_dim: int = DEFAULT_PROJECTION_DIM, num_norm_groups: int = DEFAULT_NORM_GROUPS):
        super().__init__()
        if num_timesteps < 1 or not layer_channels:
            raise ValueError("an aggregation network needs at least one layer and one timestep")
        if projection_dim % 4:
            raise ValueError(f"projection_dim must be divisible by 4 (bottleneck width = P/4), got {projection_dim}")
        self.layer_channels = [int(c) for c in layer_channels]
        self.num_timesteps = int(num_timesteps)
        self.projection_dim = int(projection_dim)
        self.num_norm_groups = int(num_norm_groups)
        self.bottleneck_layers = nn.ModuleList(
            nn.Sequential(BottleneckBlock(c, projection_dim, projection_dim // 4, num_norm_groups))
            for c in self.layer_channels
        )
        self.mixing_weights = nn.Parameter(torch.ones(self.num_layers * self.num_timesteps))
        # a plain tensor (not a parameter or buffer): fixed temperature, absent from the state dict
        self.logit_scale = torch.tensor(math.log(1 / TEMPERATURE))

    @property
    def num_layers(self) -> int:
        return len(self.layer_channels)

    @property
    def num_slots(self) -> int:
        return self.num_layers * self.num_timesteps

    def mixing_softmax(self) -> torch.Tensor:
        # pitfall P2: the official code calls softmax without dim; on the 1-D vector that is dim 0
        return torch.softmax(self.mixing_weights, dim=0)

    def slot(self, index: int) -> Slot:
        if not 0 <= index < self.num_slots:
            raise IndexError(f"slot {index} outside 0..{self.num_slots - 1}")
        return slot_of(index, self.num_layers)

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        """The official stack-then-aggregate form on a timestep-major ``B × S·ΣC × H × W`` tensor."""
        expected = self.num_timesteps * sum(self.layer_channels)
        if stacked.shape[1] != expected:
            raise ValueError(f"expected {expected} stacked channels "
                             f"({self.num_timesteps} timesteps × {sum(self.layer_channels)}), got {stacked.shape[1]}")
        weights = self.mixing_softmax()
        out = None
        start = 0
        for i in range(self.num_slots):
            layer = i % self.num_layers
            end = start + self.layer_channels[layer]
            term = weights[i] * self.bottleneck_layers[layer](stacked[:, start:end])
            out = term if out is None else out + term
            start = end
        return out

    def streaming(self, *, track_grad: bool = False) -> "StreamingAggregator":
        return StreamingAggregator(self, track_grad=track_grad)


class StreamingAggregator:
    """Accumulates Σᵢ softmax(w)ᵢ · B_{layer}(feature) one captured map at a time.

    Pass the instance as the SD extractor's ``consume(slot, layer, feat)``: each map goes through its
    bottleneck as soon as it exists, so only the 384-channel accumulator outlives the UNet call.
    With ``track_grad`` the work is recorded by autograd even when the extractor runs under
    ``inference_mode``/``no_grad`` (pitfall P7: the inference tensor is cloned before it feeds autograd).
    """

    def __init__(self, network: AggregationNetwork, *, track_grad: bool = False):
        self.network = network
        self.track_grad = track_grad
        with self._grad_context():
            self.weights = network.mixing_softmax()
        self.output: torch.Tensor | None = None
        self.seen: set[tuple[int, int]] = set()

    def _grad_context(self):
        if not self.track_grad:
            return _nullcontext()
        return _GradContext()

    def __call__(self, timestep_slot: int, layer: int, feat: torch.Tensor) -> None:
        net = self.network
        if not (0 <= timestep_slot < net.num_timesteps and 0 <= layer < net.num_layers):
            raise IndexError(f"feature for timestep slot {timestep_slot}, layer {layer} does not fit a network "
                             f"of {net.num_timesteps} timesteps × {net.num_layers} layers")
        if (timestep_slot, layer) in self.seen:
            raise ValueError(f"feature for timestep slot {timestep_slot}, layer {layer} arrived twice")
        if feat.shape[1] != net.layer_channels[layer]:
            raise ValueError(f"layer {layer} feature has {feat.shape[1]} channels, "
                             f"the network expects {net.layer_channels[layer]}")
        self.seen.add((timestep_slot, layer))
        with self._grad_context():  # indexing the weights is recorded too
            weight = self.weights[slot_index(timestep_slot, layer, net.num_layers)]
            if self.track_grad and feat.is_inference():
                feat = feat.clone()
            term = weight * net.bottleneck_layers[layer](feat)
            self.output = term if self.output is None else self.output + term

    def result(self) -> torch.Tensor:
        net = self.network
        missing = [(s, l) for s in range(net.num_timesteps) for l in range(net.num_layers)
                   if (s, l) not in self.seen]
        if missing or self.output is None:
            raise RuntimeError(f"streaming aggregation incomplete: {len(missing)} of {net.num_slots} "
                               f"(timestep slot, layer) maps never arrived, first {missing[:3]}")
        return self.output


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class _GradContext:
    """Leave inference mode and re-enable autograd locally (the extractor may run under either)."""

    def __enter__(self):
        self._inference = torch.inference_mode(False)
        self._grad = torch.enable_grad()
        self._inference.__enter__()
        self._grad.__enter__()

    def __exit__(self, *exc):
        self._grad.__exit__(*exc)
        self._inference.__exit__(*exc)
        return False


def cosine_logits(source: torch.Tensor, target: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """``N × M`` logits: cosine similarity between rows of ``source`` (N × C) and ``target`` (M × C) times scale."""
    return F.normalize(source, dim=-1) @ F.normalize(target, dim=-1).T * scale
