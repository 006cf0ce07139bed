"""The Stable Diffusion weights a method needs (:meth:`corrbench.Descriptor.requirements`), looked up in the
local folder or the Hugging Face cache without downloading anything."""

from __future__ import annotations

from typing import Any

from corrbench.errors import CorrbenchError
from corrbench.requirements import MISSING, NOT_NEEDED, PRESENT, Requirement, fetchable, hf_cached

#: the files of each pipeline component, any one of which makes the component present
SD_FILES = {
    "unet": [f"unet/diffusion_pytorch_model{v}.{e}" for v in (".fp16", "") for e in ("safetensors", "bin")],
    "vae": [f"vae/diffusion_pytorch_model{v}.{e}" for v in (".fp16", "") for e in ("safetensors", "bin")],
    "text_encoder": [f"text_encoder/{n}{v}.{e}" for n, e in (("model", "safetensors"), ("pytorch_model", "bin"))
                     for v in (".fp16", "")],
    "tokenizer": ["tokenizer/vocab.json"],
}


def sd_requirement(model: Any, weights: Any) -> Requirement:
    """The Stable Diffusion pipeline ``model`` (hub id or folder) in ``weights`` mode (pretrained | random)."""
    from .configs import architecture
    from .loading import how_to_get, resolve_source

    what = f"Stable Diffusion {model}"
    try:
        source = resolve_source(str(model))
    except CorrbenchError as exc:
        return Requirement("weights", what, str(model), MISSING, str(exc))
    if source.folder is not None:
        return Requirement("weights", what + (" (architecture only, random weights)" if weights == "random" else ""),
                           str(source.folder), PRESENT)
    if str(weights) == "random":
        arch = architecture(source.hub_id)
        return Requirement("weights", what + " (random weights)", source.hub_id,
                           NOT_NEEDED if arch else MISSING,
                           "" if arch else f"no built-in architecture for {source.hub_id}; pass a folder")
    missing = [c for c, files in SD_FILES.items() if hf_cached(source.hub_id, files) is None]
    if not missing:
        return Requirement("weights", what, f"hf://{source.hub_id} (cached)", PRESENT)
    return Requirement("weights", what, f"hf://{source.hub_id}", fetchable(),
                       f"not in the Hugging Face cache ({', '.join(missing)}); {how_to_get(source)}")
