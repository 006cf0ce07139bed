"""The core's readouts, registered as any plugin registers its own (see :mod:`corrbench.readouts`)."""

from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def register_readouts(register):
    register("nn", "corrbench.readouts:NearestNeighbour",
             description="cosine nearest neighbour over every pixel of the bilinearly upsampled target map (exact)")
    register("soft-argmax", "corrbench.readouts:SoftArgmax",
             description="expected pixel under softmax(cosine / temperature) over every target pixel")
    register("window-soft-argmax", "corrbench.readouts:WindowSoftArgmax",
             description="soft-argmax within a (2*radius+1)^2 window around the argmax (GeoAware-SC style)")
    register("kernel-soft-argmax", "corrbench.readouts:KernelSoftArgmax",
             description="softmax weights times a Gaussian (sigma) around the argmax, renormalised (SFNet style)")
    register("pair-conditioned", "corrbench.readouts:PairConditioned",
             description="the method's own pair-conditioned transfer (DHPF/HPF: gated hyperpixels, Hough matching)")
