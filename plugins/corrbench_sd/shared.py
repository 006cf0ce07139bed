"""One DDIM inversion serving several SD-based methods (``Descriptor.shared_pass``).

Every SD-1.5 row of the DHF table — SD-Layer-4, SD-Concat-All, Ours, Ours-One-Step, SD-Layer-Pruned,
Ours-Pruned — reads conv2 maps of the same 50-step inversion of the same image; they differ only in
which (step, layer) maps they keep and what they make of them. Each method states that as an
:class:`InversionPlan`; :func:`run_plans` inverts a batch once for the union of the plans and hands
every plan only the maps it asked for, numbered as it asked. Run alone, a method runs its one plan
through the same function, so a method's features are the same whether or not it shared the pass.

Methods share a pass when their :class:`InversionPass` values are equal: same model, weights,
dtype, latent draw, schedule, sizes, device and runtime settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from corrbench.api import SharedPass

Layer = tuple[int, int]

#: the extractor settings a shared inversion depends on (``weights`` is the SD weights mode)
PASS_KEYS = ("model", "weights", "dtype", "latent", "seed", "num_steps", "image_size", "output_resolution",
             "compile", "channels_last")


@dataclass
class InversionPlan:
    """The maps one method needs from an inversion and what it makes of them.

    ``consume(slot, position, feat)`` receives each requested map, numbered by this plan's own
    ``save_indices`` and ``layers``; ``finish()`` returns the method's B × C × h × w output.
    """

    save_indices: tuple[int, ...]
    layers: tuple[Layer, ...]
    consume: Callable[[int, int, Any], None]
    finish: Callable[[], Any]


def run_plans(extractor, plans: Sequence[InversionPlan], images) -> list:
    """Invert ``images`` once for the union of ``plans``; each plan's ``finish()`` output, in order."""
    indices = tuple(sorted({k for p in plans for k in p.save_indices}, reverse=True))
    layers = tuple(sorted({layer for p in plans for layer in p.layers}))
    slot_of = {k: s for s, k in enumerate(indices)}
    position_of = {layer: n for n, layer in enumerate(layers)}
    routes: dict[tuple[int, int], list[tuple[Callable, int, int]]] = {}
    for plan in plans:
        for s, k in enumerate(plan.save_indices):
            for n, layer in enumerate(plan.layers):
                routes.setdefault((slot_of[k], position_of[layer]), []).append((plan.consume, s, n))

    def consume(slot: int, position: int, feat) -> None:
        # one tensor may go to several plans: consumers read it and never write into it
        for fn, s, n in routes.get((slot, position), ()):
            fn(s, n, feat)

    extractor.invert(images, save_indices=indices, layers=layers, consume=consume)
    return [plan.finish() for plan in plans]


@dataclass(frozen=True)
class InversionPass(SharedPass):
    """The shared inversion of one extractor configuration; its members implement ``inversion_plan``."""

    settings: tuple[tuple[str, str], ...]

    def run(self, descriptors, images) -> list:
        plans = [d.inversion_plan(images) for d in descriptors]
        return run_plans(descriptors[0].extractor, plans, images)


def inversion_pass(sd_config: dict[str, Any], device: str) -> InversionPass:
    """The pass of a resolved SD config (``weights`` = the SD weights mode)."""
    return InversionPass(tuple((k, str(sd_config[k])) for k in PASS_KEYS) + (("device", str(device)),))
