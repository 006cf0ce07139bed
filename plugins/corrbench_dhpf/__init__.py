"""Built-in HPF / DHPF baselines (Min et al., ICCV 2019 / ECCV 2020), re-implemented on torchvision ResNets.

Registered lazily: listing methods imports neither torch nor torchvision.
"""

import corrbench


@corrbench.hookimpl
def register_methods(register):
    register("dhpf", "corrbench_dhpf.descriptor:DHPFDescriptor", extras=("dhpf",),
             description="Dynamic Hyperpixel Flow: ResNet-101, 34 gated layers, RHM (authors' checkpoint, local path)")
    register("hpf", "corrbench_dhpf.descriptor:HPFDescriptor", extras=("dhpf",),
             description="Hyperpixel Flow: ImageNet ResNet-101, published SPair-71k layer list, RHM (no learned part)")
