"""Built-in Stable Diffusion feature methods: ``sd-layer-4``, ``sd-concat-all`` and ``sd-layer``.

The extractor (:mod:`corrbench_sd.extractor`) captures the conv2 outputs of the UNet decoder's 12
resnets during DDIM inversion of a real image, or during generation, exactly as Diffusion Hyperfeatures
does; the methods here match those raw maps directly. Registration is lazy: listing methods imports
neither torch nor diffusers.
"""

import corrbench


@corrbench.hookimpl
def register_methods(register):
    register("sd-layer-4", "corrbench_sd.methods:SDLayer4", extras=("sd",),
             description="SD-Layer-4 (DHF table): raw conv2 map of up_blocks[1].resnets[0], clean pass t=-1")
    register("sd-concat-all", "corrbench_sd.methods:SDConcatAll", extras=("sd",),
             description="SD-Concat-All (DHF table): the 12 decoder conv2 maps of one timestep, concatenated")
    register("sd-layer", "corrbench_sd.methods:SDLayer", extras=("sd",),
             description="Raw SD decoder conv2 map of any up_blocks[i].resnets[j] at any inversion timestep")
    register("dift", "corrbench_sd.dift:DIFT", extras=("sd",),
             description="DIFT (Tang et al. 2023): SD-2.1 up_blocks[1] output after one noising step, t=261, 8 draws")
    register("dift-sd15", "corrbench_sd.dift:DIFTSD15", extras=("sd",),
             description="DIFT's recipe on SD-1.5: up_blocks[1] output after one noising step, t=261, 8 draws")
    register("sd-dino", "corrbench_sd.sd_dino:SDDino", extras=("sd", "dino"),
             description="SD+DINO zero-shot (Zhang et al. 2023): SD-1.5 maps co-PCA'd per pair + DINOv2-B/14 tokens")


@corrbench.hookimpl
def register_tables(register):
    register("zero-shot", "corrbench_sd.zero_shot_table:ZERO_SHOT_TABLE",
             description="Zero-shot baselines on SPair-71k test: DINOv2-B/14, DIFT, SD+DINO, DHF one-step, DHF")
