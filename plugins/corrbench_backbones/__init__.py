"""Any backbone in one flag: ``timm:<model>`` and ``hf:<repo>`` method families (docs/backbones.md).

Registered lazily: listing methods imports neither torch, timm nor transformers.
"""

import corrbench


@corrbench.hookimpl
def register_methods(register):
    # the family modules import no torch, timm or transformers at import time
    from .hf_family import FEATURED as HF_FEATURED
    from .timm_family import FEATURED as TIMM_FEATURED

    register("timm:*", "corrbench_backbones.timm_family:FAMILY", extras=("dino",), featured=TIMM_FEATURED,
             description="any timm model: timm:<model>[.<tag>] (corrbench list methods 'timm:*')")
    register("hf:*", "corrbench_backbones.hf_family:FAMILY", extras=("sd",), featured=HF_FEATURED,
             description="any transformers vision backbone: hf:<org>/<repo> or hf:<folder>")
