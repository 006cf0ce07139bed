"""The core's readouts, registered as any plugin registers its own (see :mod:`corrbench.readouts`)."""

from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def register_readouts(register):
    register("nn", "corrbench.readouts:NearestNeighbour",
             description="cosine nearest neighbour over every pixel of the bilinearly upsampled target map (exact)")
    register("pair-conditioned", "corrbench.readouts:PairConditioned",
             description="the method's own pair-conditioned transfer (DHPF/HPF: gated hyperpixels, Hough matching)")
