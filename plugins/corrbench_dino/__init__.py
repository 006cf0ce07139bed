"""Built-in DINO and DINOv2 descriptors (dino-vit-features recipe on timm ViTs).

Registered lazily: listing methods imports neither torch nor timm.
"""

import corrbench

#: method → (class, one-line description); kept here, not imported from .descriptor, so listing stays cheap
_METHODS = {
    "dino": ("DinoDescriptor", "DINO ViT-S/8 key facet, block 9, stride 4, log-binned (dino-vit-features recipe)"),
    "dinov2": ("DinoV2Descriptor", "DINOv2 ViT-S/14 token facet of the last block, stride 14"),
    "dinov2-b": ("DinoV2Base", "DINOv2 ViT-B/14 token facet of the last block, stride 14"),
    "dinov2-l": ("DinoV2Large", "DINOv2 ViT-L/14 token facet of the last block, stride 14"),
    "dinov2-g": ("DinoV2Giant", "DINOv2 ViT-g/14 token facet of the last block, stride 14"),
    "dinov2-reg": ("DinoV2SmallReg", "DINOv2 ViT-S/14 with registers, token facet of the last block"),
    "dinov2-b-reg": ("DinoV2BaseReg", "DINOv2 ViT-B/14 with registers, token facet of the last block"),
    "dinov2-l-reg": ("DinoV2LargeReg", "DINOv2 ViT-L/14 with registers, token facet of the last block"),
    "dinov2-g-reg": ("DinoV2GiantReg", "DINOv2 ViT-g/14 with registers, token facet of the last block"),
}


@corrbench.hookimpl
def register_readouts(register):
    register("patch-centre", "corrbench_dino.readout:PatchCentre",
             description="the patch holding the keypoint, cosine argmax over target patches, the patch centre")


@corrbench.hookimpl
def register_methods(register):
    for name, (cls, description) in _METHODS.items():
        register(name, f"corrbench_dino.descriptor:{cls}", description=description, extras=("dino",))
