"""dino-vit-features facets from a timm ViT: reduced stride, DINO positional interpolation, hooks.

What is re-implemented here (docs/methods.md#dino-and-dinov2), and why:

- **Stride.** The patch-embedding convolution runs with stride ``s`` instead of ``p`` (kernel ``p``, no
  padding), so patches overlap: the grid is ``1 + (H - p) // s`` by ``1 + (W - p) // s``. timm derives its
  grid from the patch size (``forward_intermediates`` fails on a strided model), so the embedding
  (conv → tokens → prefix tokens → positional embedding) is written out here; it applies the model's
  own ``patch_embed.norm``, ``pos_drop``, ``patch_drop`` and ``norm_pre`` modules.
- **Positional embedding.** ``pos_interp="dino"`` resamples the patch part of the table bicubically
  with ``scale_factor = ((nH + 0.1) / M, (nW + 0.1) / M)`` (DINO's and DINOv2's formula, also used by
  dino-vit-features), skipped only when the grid has M² cells and the image is square. timm's own
  ``dynamic_img_size`` resampling (``size=``, antialias) gives numbers ~2 % different; it is available
  as ``pos_interp="timm"``.
- **Facets** come from forward hooks: ``key``/``query``/``value`` from the output of block L's
  ``attn.qkv`` (the block's norm1 input projected, as the attention itself computes it), ``token``
  from block L's output (after both residual branches, no final norm). The hook stops the forward
  pass there, so blocks after L never run. Channels are ordered dim-major, head-minor
  (``c = d · heads + h``) exactly as dino-vit-features flattens them. Prefix tokens (class, registers)
  are dropped.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from corrbench.errors import UsageError

FACETS = ("key", "query", "value", "token")
POS_INTERP = ("dino", "timm")
_QKV_INDEX = {"query": 0, "key": 1, "value": 2}


class _StopForward(Exception):
    """Raised by the capture hook once the requested tensor exists: later blocks are not needed."""


def grid_size(load_hw: tuple[int, int], patch: int, stride: int) -> tuple[int, int]:
    """Number of (overlapping) patches along each axis; rows/columns beyond the last patch are ignored."""
    H, W = load_hw
    if H < patch or W < patch:
        raise UsageError(f"image of {W}×{H} pixels is smaller than one {patch}×{patch} patch")
    return 1 + (H - patch) // stride, 1 + (W - patch) // stride


def check_stride(patch: int, stride: int) -> None:
    if not isinstance(stride, int) or stride < 1 or patch % stride:
        raise UsageError(f"stride {stride!r} must be a positive integer that divides the patch size {patch} "
                         f"(dino-vit-features requires it: e.g. 4 or 8 for patch 8, 7 or 14 for patch 14)")


def interpolate_pos_dino(patch_pos: torch.Tensor, grid_hw: tuple[int, int], image_hw: tuple[int, int]) -> torch.Tensor:
    """DINO's bicubic resampling of a 1×M²×D patch table to 1×(nH·nW)×D."""
    nH, nW = grid_hw
    M = math.isqrt(patch_pos.shape[1])
    if nH * nW == M * M and image_hw[0] == image_hw[1]:
        return patch_pos
    D = patch_pos.shape[-1]
    table = patch_pos.reshape(1, M, M, D).permute(0, 3, 1, 2)
    work = table if table.dtype == torch.float64 else table.float()  # bicubic needs float32 at least
    out = F.interpolate(work, scale_factor=((nH + 0.1) / M, (nW + 0.1) / M), mode="bicubic",
                        align_corners=False, recompute_scale_factor=False).to(patch_pos.dtype)
    if tuple(out.shape[-2:]) != (nH, nW):  # cannot happen for n ≥ 1, but a silent mismatch would be worse
        raise RuntimeError(f"positional interpolation gave {tuple(out.shape[-2:])}, expected {(nH, nW)}")
    return out.permute(0, 2, 3, 1).reshape(1, nH * nW, D)


def interpolate_pos_timm(patch_pos: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    from timm.layers import resample_abs_pos_embed

    M = math.isqrt(patch_pos.shape[1])
    return resample_abs_pos_embed(patch_pos, new_size=list(grid_hw), old_size=[M, M], num_prefix_tokens=0,
                                  interpolation="bicubic", antialias=True)


class ViTFacets:
    """Dense facet maps of one timm ``VisionTransformer`` at a chosen stride."""

    def __init__(self, model: torch.nn.Module, stride: int, pos_interp: str = "dino"):
        for attr in ("patch_embed", "blocks", "pos_embed"):
            if getattr(model, attr, None) is None:
                raise UsageError(f"{type(model).__name__} is not a ViT with absolute positional embeddings "
                                 f"(it has no {attr!r}); pick a DINO/DINOv2 or other timm 'vit_*' model")
        kh, kw = model.patch_embed.proj.kernel_size
        if kh != kw:
            raise UsageError(f"non-square patches {kh}×{kw} are not supported")
        if pos_interp not in POS_INTERP:
            raise UsageError(f"pos_interp {pos_interp!r} is not one of {', '.join(POS_INTERP)}")
        self.model = model
        self.patch = int(kh)
        check_stride(self.patch, stride)
        self.stride = int(stride)
        self.pos_interp = pos_interp
        self.depth = len(model.blocks)
        self.dim = int(model.embed_dim)
        self.num_prefix = int(getattr(model, "num_prefix_tokens", 1))

    # -- geometry ----------------------------------------------------------------------------
    def grid_size(self, load_hw: tuple[int, int]) -> tuple[int, int]:
        return grid_size(load_hw, self.patch, self.stride)

    def block_index(self, layer: int) -> int:
        if not isinstance(layer, int) or not -self.depth <= layer < self.depth:
            raise UsageError(f"layer {layer!r} is out of range: the model has {self.depth} blocks "
                             f"(0..{self.depth - 1}, or negative from the end)")
        return layer % self.depth

    # -- forward -----------------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised B×3×H×W images → B×(prefix + nH·nW)×D tokens entering block 0."""
        m = self.model
        H, W = images.shape[-2:]
        grid = self.grid_size((H, W))
        proj = m.patch_embed.proj
        x = F.conv2d(images, proj.weight, proj.bias, stride=self.stride)
        x = x.flatten(2).transpose(1, 2)
        x = m.patch_embed.norm(x)
        n_pos_prefix = 0 if getattr(m, "no_embed_class", False) else self.num_prefix
        pos = m.pos_embed
        pos_prefix, pos_patch = pos[:, :n_pos_prefix], pos[:, n_pos_prefix:]
        if math.isqrt(pos_patch.shape[1]) ** 2 != pos_patch.shape[1]:
            raise UsageError(f"positional table of {pos_patch.shape[1]} patch entries is not a square grid")
        if self.pos_interp == "dino":
            pos_patch = interpolate_pos_dino(pos_patch, grid, (H, W))
        else:
            pos_patch = interpolate_pos_timm(pos_patch, grid)
        B = x.shape[0]
        prefix = [t.expand(B, -1, -1) for t in (getattr(m, "cls_token", None), getattr(m, "reg_token", None))
                  if t is not None]
        if n_pos_prefix == 0:
            x = torch.cat(prefix + [x + pos_patch], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + torch.cat([pos_prefix, pos_patch], dim=1)
        for name in ("pos_drop", "patch_drop", "norm_pre"):
            module = getattr(m, name, None)
            if module is not None:
                x = module(x)
        return x, grid

    def facet(self, images: torch.Tensor, layer: int, facet: str) -> torch.Tensor:
        """B×C×nH×nW facet map of block ``layer`` (C = D for every facet)."""
        if facet not in FACETS:
            raise UsageError(f"facet {facet!r} is not one of {', '.join(FACETS)}")
        L = self.block_index(layer)
        block = self.model.blocks[L]
        target = block if facet == "token" else block.attn.qkv
        captured: dict[str, torch.Tensor] = {}

        def hook(_module, _inputs, output):
            captured["out"] = output
            raise _StopForward

        tokens, (nH, nW) = self.embed(images)
        handle = target.register_forward_hook(hook)
        try:
            self.model.blocks(tokens)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if "out" not in captured:
            raise RuntimeError(f"the hook on block {L} never fired")
        out = captured["out"]
        B, T = out.shape[:2]
        if facet != "token":
            heads = int(block.attn.num_heads)
            qkv = out.reshape(B, T, 3, heads, -1)[:, :, _QKV_INDEX[facet]]  # B×T×heads×hd
            out = qkv.transpose(-1, -2).reshape(B, T, -1)  # dino-vit-features order: c = d·heads + h
        out = out[:, self.num_prefix:]
        if out.shape[1] != nH * nW:
            raise RuntimeError(f"{out.shape[1]} patch tokens for a {nH}×{nW} grid")
        return out.transpose(1, 2).reshape(B, -1, nH, nW)
