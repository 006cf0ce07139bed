"""Which ViT a ``model`` value names: the DINO / DINOv2 checkpoints and their timm equivalents.

Names accepted by ``dino.model`` / ``dinov2.model``:

- the authors' torch.hub names (``dino_vits8``, ``dinov2_vitb14_reg`` ...), mapped to timm's tagged names;
- timm names with a tag (``vit_small_patch8_224.dino``), used as given;
- bare timm architectures. Those in the table below get the DINO/DINOv2 tag, because timm's *default*
  tag for e.g. ``vit_base_patch8_224`` is a supervised AugReg model, not DINO (docs/methods.md#dino-and-dinov2); any
  other timm ViT (``test_vit`` for instance) is used with timm's default tag.

Imports no torch or timm at module level: listing methods stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

from corrbench.errors import UsageError


@dataclass(frozen=True)
class ViTSpec:
    """A resolved model name."""

    name: str  # what the user wrote
    arch: str  # timm architecture
    tag: str | None  # timm pretrained tag (None: timm's default)
    release_url: str = ""  # the authors' own checkpoint, for the README and error messages

    @property
    def timm_name(self) -> str:
        return f"{self.arch}.{self.tag}" if self.tag else self.arch

    @property
    def hf_hub_id(self) -> str:
        return f"timm/{self.timm_name}"


_FB = "https://dl.fbaipublicfiles.com"
#: torch.hub name → (timm arch, tag, release checkpoint). See docs/methods.md#dino-and-dinov2.
KNOWN: dict[str, tuple[str, str, str]] = {
    "dino_vits8": ("vit_small_patch8_224", "dino", f"{_FB}/dino/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth"),
    "dino_vits16": ("vit_small_patch16_224", "dino",
                    f"{_FB}/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"),
    "dino_vitb8": ("vit_base_patch8_224", "dino", f"{_FB}/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"),
    "dino_vitb16": ("vit_base_patch16_224", "dino", f"{_FB}/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"),
    "dinov2_vits14": ("vit_small_patch14_dinov2", "lvd142m", f"{_FB}/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"),
    "dinov2_vitb14": ("vit_base_patch14_dinov2", "lvd142m", f"{_FB}/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth"),
    "dinov2_vitl14": ("vit_large_patch14_dinov2", "lvd142m", f"{_FB}/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"),
    "dinov2_vitg14": ("vit_giant_patch14_dinov2", "lvd142m", f"{_FB}/dinov2/dinov2_vitg14/dinov2_vitg14_pretrain.pth"),
    "dinov2_vits14_reg": ("vit_small_patch14_reg4_dinov2", "lvd142m",
                          f"{_FB}/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"),
    "dinov2_vitb14_reg": ("vit_base_patch14_reg4_dinov2", "lvd142m",
                          f"{_FB}/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth"),
    "dinov2_vitl14_reg": ("vit_large_patch14_reg4_dinov2", "lvd142m",
                          f"{_FB}/dinov2/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth"),
    "dinov2_vitg14_reg": ("vit_giant_patch14_reg4_dinov2", "lvd142m",
                          f"{_FB}/dinov2/dinov2_vitg14/dinov2_vitg14_reg4_pretrain.pth"),
}
_BY_ARCH = {arch: (hub, tag, url) for hub, (arch, tag, url) in KNOWN.items()}


def resolve(name: str) -> ViTSpec:
    """The timm architecture and tag for a ``model`` value; an unknown name lists the known ones."""
    name = str(name).strip()
    if name in KNOWN:
        arch, tag, url = KNOWN[name]
        return ViTSpec(name, arch, tag, url)
    arch, _, tag = name.partition(".")
    if arch in _BY_ARCH:
        _, known_tag, url = _BY_ARCH[arch]
        return ViTSpec(name, arch, tag or known_tag, url if (tag or known_tag) == known_tag else "")
    import timm

    if arch and timm.is_model(arch):
        return ViTSpec(name, arch, tag or None)
    raise UsageError(f"model {name!r} is neither a DINO/DINOv2 name ({', '.join(KNOWN)}) nor a timm "
                     f"architecture (see timm.list_models('vit_*'))")
