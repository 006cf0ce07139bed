"""Weight-free descriptors: dense SIFT (kornia), raw colour patches, and a random-feature floor.

They need no download, run in seconds on a CPU, and make the embedded default (``corrbench run``)
a real benchmark: dense SIFT is the classical hand-crafted baseline, colour patches show what raw
appearance gets you, and ``random-conv`` is the floor any learned descriptor must clear.
"""

import corrbench


@corrbench.hookimpl
def register_methods(register):
    register("dsift", "corrbench_classic.descriptors:DenseSIFT",
             description="Dense SIFT (kornia), 128-d RootSIFT on a stride-2 grid; no weights")
    register("colour-patch", "corrbench_classic.descriptors:ColourPatch", aliases=("color-patch",),
             description="Raw RGB values of a k×k patch around each pixel; no weights")
    register("random-conv", "corrbench_classic.descriptors:RandomConv",
             description="Features of a randomly initialised two-layer CNN (fixed seed): a floor, not a method")
