"""The core's readouts, registered as any plugin registers its own (see :mod:`corrbench.readouts`).

The classes are registered themselves (their module imports no torch), so each description is the
class's own.
"""

from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def register_readouts(register):
    from .readouts import (KernelSoftArgmax, MutualNearestNeighbour, NearestNeighbour, PairConditioned, SoftArgmax,
                           WindowSoftArgmax)

    for cls in (NearestNeighbour, MutualNearestNeighbour, SoftArgmax, WindowSoftArgmax, KernelSoftArgmax,
                PairConditioned):
        register(cls)
