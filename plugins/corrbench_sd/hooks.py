"""Forward hooks on the UNet decoder's ``up_blocks[i].resnets[j].conv2`` (DHF's feature tensor).

The conv2 output is the ResNet block's residual branch before the shortcut is added and before the
division by ``output_scale_factor`` (paper-protocol §2.4, pitfall P3). Hooks replace DHF's copied
``forward`` (which breaks across diffusers versions, P8); they are registered inside a context manager
and always removed, also when the UNet raises.

Each captured map is turned into float32, bilinearly resized (``align_corners=False``) to the output
resolution and handed to ``consume(slot, layer_position, feature)`` at once, inside the UNet forward,
so nothing is stored between layers or steps.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

Layer = tuple[int, int]
Consume = Callable[[int, int, "object"], None]


class StopForward(Exception):
    """Raised by the hook of the deepest requested layer when the rest of the UNet is not needed."""


def conv2_path(layer: Layer) -> str:
    i, j = layer
    return f"up_blocks.{i}.resnets.{j}.conv2"


def check_layers(unet, layers: Sequence[Layer]) -> tuple[Layer, ...]:
    """Validate ``(i, j)`` pairs against the UNet's decoder; an unknown one is a UsageError naming it."""
    from corrbench.errors import UsageError

    out = []
    for layer in layers:
        try:
            i, j = (int(v) for v in layer)
        except (TypeError, ValueError):
            raise UsageError(f"SD layer {layer!r} is not an (up_block, resnet) pair such as [1, 0]") from None
        if not (0 <= i < len(unet.up_blocks) and 0 <= j < len(unet.up_blocks[i].resnets)):
            shape = [len(b.resnets) for b in unet.up_blocks]
            raise UsageError(f"SD layer ({i}, {j}) does not exist: the UNet has {len(shape)} up blocks with "
                             f"{shape} resnets")
        out.append((i, j))
    if len(set(out)) != len(out):
        raise UsageError(f"SD layers {out} contain duplicates")
    return tuple(out)


class Conv2Capture:
    """Dispatches hooked conv2 outputs to ``consume`` while a slot is active.

    ``slot`` is None between saved steps (the hooks then cost nothing). ``batch_slice`` selects the rows
    that belong to the caller (the conditional half of a classifier-free-guidance batch).
    ``stop_after`` names the layer position after which the forward may stop (set on the last step
    whose UNet output is not needed).
    """

    def __init__(self, layers: Sequence[Layer], consume: Consume, resolution: int, *, grad_mode: bool | None):
        self.layers = tuple(layers)
        self.consume = consume
        self.resolution = int(resolution)
        # None: the caller runs in inference mode, consume runs there too; True/False: consume runs
        # outside inference mode with this grad mode (a trainer can build autograd graphs on the features)
        self.grad_mode = grad_mode
        self.slot: int | None = None
        self.batch_slice: slice = slice(None)
        self.stop_after: int | None = None

    def _hook(self, position: int):
        import torch
        import torch.nn.functional as F

        def hook(module, args, output):
            if self.slot is None:
                return None
            feat = output[self.batch_slice].float()
            if feat.shape[-2:] != (self.resolution, self.resolution):
                feat = F.interpolate(feat, size=(self.resolution, self.resolution), mode="bilinear",
                                     align_corners=False)
            if self.grad_mode is None:
                self.consume(self.slot, position, feat)
            else:
                with torch.inference_mode(False), torch.set_grad_enabled(self.grad_mode):
                    self.consume(self.slot, position, feat.clone())
            if self.stop_after == position:
                raise StopForward
            return None

        return hook

    def deepest(self) -> int:
        """Position (in ``layers``) of the layer the decoder runs last."""
        return max(range(len(self.layers)), key=lambda p: self.layers[p])

    @contextlib.contextmanager
    def attached(self, unet) -> Iterator["Conv2Capture"]:
        handles = []
        try:
            for position, layer in enumerate(self.layers):
                module = unet.get_submodule(conv2_path(layer))
                handles.append(module.register_forward_hook(self._hook(position)))
            yield self
        finally:
            for handle in handles:
                handle.remove()
