"""Forward hooks on the UNet decoder's ``up_blocks[i].resnets[j].conv2`` (DHF's feature tensor).

The conv2 output is the ResNet block's residual branch before the shortcut is added and before the
division by ``output_scale_factor`` (docs/protocol.md#p3-conv2-output-not-block-output). Hooks replace DHF's copied
``forward`` (which breaks across diffusers versions, P8); they are registered inside a context manager
and always removed, also when the UNet raises.

The hooks only *record*: each one stores its module's output and returns. After the UNet call the
extractor calls :meth:`Conv2Capture.drain`, which turns the recorded maps into float32, resizes them
bilinearly (``align_corners=False``) to the output resolution and hands them to
``consume(slot, layer_position, feature)`` in decoder order. Keeping the hooks free of Python
decisions and of the consumer's work is what lets ``torch.compile`` trace the UNet as one graph: a
hook that branched on the step's slot, left inference mode or ran the aggregation network made
dynamo recompile for every slot value and fall back to eager at a graph break (measured on the tiny
UNet: 31 graphs for a 4-step inversion; now 1, see tests/test_sd_compile.py). Recording costs only
the lifetime of the 12 maps until the call returns (measured on SD-1.5 in float32: 22 MB per image
more at batch 8, benchmarks/README.md), so on an eager UNet the hook drains its map at once (``drain_in_hook``), as the first design did.
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
    """Records hooked conv2 outputs during a UNet call; :meth:`drain` hands them to ``consume``.

    ``slot`` is the saved-step slot of the call just made (None: its maps are dropped). ``batch_slice``
    selects the rows that belong to the caller (the conditional half of a classifier-free-guidance
    batch, or the real rows of a padded batch). ``stop_after`` names the layer position after which
    the forward may stop (eager UNets only: set on the last step, whose output is not needed).
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
        # eager UNet: drain each map inside its hook, so no map outlives its layer (the last up block's
        # maps would otherwise be held through its attention, the UNet's memory peak); a compiled UNet
        # leaves this False and the extractor drains after the call
        self.drain_in_hook = False
        # one dict for the capture's whole life, emptied in place: dynamo guards on the object it
        # mutates, and a fresh dict per call would be a new object each time
        self.records: dict[int, object] = {}
        # decoder order: consumers see the maps in the order the UNet computes them
        self.order = sorted(range(len(self.layers)), key=lambda p: self.layers[p])

    def _hook(self, position: int):
        def hook(module, args, output):
            self.records[position] = output
            if self.drain_in_hook:
                self.drain()
            if self.stop_after == position:
                raise StopForward
            return None

        return hook

    def drain(self) -> None:
        """Resize and hand the maps recorded by the last UNet call to ``consume``, then forget them."""
        import torch
        import torch.nn.functional as F

        records = dict(self.records)
        self.records.clear()
        if self.slot is None:
            return
        for position in self.order:
            output = records.pop(position, None)
            if output is None:
                continue
            feat = output[self.batch_slice].float()
            del output
            if feat.shape[-2:] != (self.resolution, self.resolution):
                feat = F.interpolate(feat, size=(self.resolution, self.resolution), mode="bilinear",
                                     align_corners=False)
            if self.grad_mode is None:
                self.consume(self.slot, position, feat)
            else:
                with torch.inference_mode(False), torch.set_grad_enabled(self.grad_mode):
                    self.consume(self.slot, position, feat.clone())

    def deepest(self) -> int:
        """Position (in ``layers``) of the layer the decoder runs last."""
        return self.order[-1]

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
            self.records.clear()
