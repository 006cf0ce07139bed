"""Tiny random-weight Vision Transformers (timm) for offline tests of ViT-based descriptors.

They have the structure of the real DINO / DINOv2 backbones (``patch_embed.proj``, ``cls_token``,
optional register tokens, ``pos_embed``, ``blocks[i].attn.qkv``) at a fraction of the cost, so
facet extraction, stride changes and positional-embedding interpolation can be checked on a CPU in
milliseconds. Nothing here downloads anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def tiny_vit(*, patch: int = 8, dim: int = 32, depth: int = 3, heads: int = 2, img_size: int = 32,
             reg_tokens: int = 0, no_embed_class: bool = False, layer_scale: float | None = None,
             seed: int = 0) -> "torch.nn.Module":
    """A seeded, random-weight timm ``VisionTransformer`` without a head, in eval mode.

    ``reg_tokens=4, no_embed_class=True, layer_scale=1e-5`` mimics the DINOv2 "reg4" layout;
    the defaults mimic DINO ViT-S/8 (class token that carries a positional embedding).
    """
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(img_size=img_size, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                              mlp_ratio=2.0, num_classes=0, reg_tokens=reg_tokens, no_embed_class=no_embed_class,
                              init_values=layer_scale)
    # timm initialises pos_embed/cls_token with a tiny std; make them visible so tests notice mistakes
    with torch.no_grad():
        model.pos_embed.normal_(0.0, 0.5)
        if model.cls_token is not None:
            model.cls_token.normal_(0.0, 0.5)
        if getattr(model, "reg_token", None) is not None:
            model.reg_token.normal_(0.0, 0.5)
    return model.eval()


def save_state_dict(model: "torch.nn.Module", path: str | Path, *, wrap: str | None = None, prefix: str = "",
                    legacy: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights the way a released checkpoint would store them.

    ``wrap="teacher"`` and ``prefix="backbone."`` reproduce DINO's full training checkpoints;
    ``legacy=True`` writes the pre-1.6 (non-zip) pickle format; ``extra`` adds keys (e.g. a head).
    """
    sd = {prefix + k: v.detach().clone() for k, v in model.state_dict().items()}
    sd.update(extra or {})
    obj: Any = {wrap: sd} if wrap else sd
    path = Path(path)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path
