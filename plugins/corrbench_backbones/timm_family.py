"""``timm:<model>[.<tag>]``: dense features of any timm model.

ViT-like models (``blocks`` + ``patch_embed``) are read block by block with forward hooks (token facet
or an attention projection); other models (ResNet, ConvNeXt...) through ``features_only`` feature
stages, coarser stages resized to the finest before concatenation. Preprocessing is the model's own
(``timm.data.resolve_data_config`` on its pretrained config).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import json
from pathlib import Path
from typing import Any, ClassVar

from corrbench.errors import UsageError, WeightsError
from corrbench.options import Option

from .base import Backbone, seeded, shared_options, with_config

PREFIX = "timm:"
#: architecture overrides the tiny test configurations use (small width and depth, random weights)
TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}
FEATURED = {
    "timm:vit_small_patch14_dinov2": "DINOv2 ViT-S/14 (timm), last block tokens",
    "timm:vit_small_patch14_reg4_dinov2": "DINOv2 ViT-S/14 with 4 registers (timm), registers dropped",
    "timm:vit_base_patch16_224": "ViT-B/16 AugReg ImageNet-21k/1k (timm), last block tokens",
    "timm:convnext_tiny": "ConvNeXt-T (timm), last stage",
    "timm:resnet50": "ResNet-50 (timm), last stage",
}
TINY: dict[str, dict[str, Any]] = {
    # 50 px is not a multiple of the 14 px patch: the input is resized to 56 (docs/backbones.md)
    "vit_small_patch14_dinov2": {"resolution": 50, "model_args": TINY_VIT},
    "vit_small_patch14_reg4_dinov2": {"resolution": 56, "model_args": TINY_VIT, "layers": [0, 1]},
    "vit_base_patch16_224": {"resolution": 64, "model_args": TINY_VIT},
    "convnext_tiny": {"resolution": 64, "model_args": {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}},
    "resnet50": {"resolution": 64, "model_args": {"layers": [1, 1, 1, 1]}, "layers": [-2, -1]},
}


def _timm():
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - timm comes with the dino extra
        raise UsageError(f"timm:* methods need timm: {exc} (install corrbench[dino])") from exc
    return timm


class TimmFamily:
    """The ``timm:*`` family: validates names against timm's registry and builds their classes."""

    @functools.lru_cache(maxsize=None)
    def build(self, suffix: str) -> type:
        timm = _timm()
        arch, _, tag = suffix.partition(".")
        if not timm.is_model(arch):
            close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
            hint = f"; close matches: {', '.join(PREFIX + c for c in close)}" if close else ""
            raise UsageError(f"unknown timm model {arch!r} in {PREFIX + suffix!r}{hint} "
                             f"(corrbench list methods '{PREFIX}*' lists them)")
        if tag and suffix not in timm.list_pretrained(suffix):
            tags = [n.partition(".")[2] for n in timm.list_pretrained(arch + ".*")]
            raise UsageError(f"timm model {arch!r} has no pretrained tag {tag!r}; tags: {', '.join(tags) or '(none)'}")
        name = PREFIX + suffix
        return with_config(TimmBackbone, name, {"timm_name": suffix,
                                                "description": FEATURED.get(name, f"timm model {suffix}")})

    def members(self, pattern: str, limit: int) -> tuple[list[tuple[str, str]], int]:
        """timm models matching ``pattern`` (a glob over ``timm:NAME``) with their tags and licence."""
        timm = _timm()
        glob = pattern[len(PREFIX):] if pattern.startswith(PREFIX) else pattern
        names = timm.list_pretrained(glob) if "." in glob else timm.list_models(glob or "*")
        names = [n for n in names if fnmatch.fnmatchcase(PREFIX + n, pattern)]
        rows = [(PREFIX + n, _summary(n)) for n in names[:limit]]
        return rows, len(names)


@functools.lru_cache(maxsize=1)
def _tags_by_arch() -> dict[str, list[str]]:
    """architecture → its pretrained tags, from one pass over timm's registry."""
    out: dict[str, list[str]] = {}
    for full in _timm().list_pretrained():
        arch, _, tag = full.partition(".")
        out.setdefault(arch, []).append(tag)
    return out


def _summary(name: str) -> str:
    """``tags: a, b; licence: x`` for a timm model (from its pretrained configs; no download)."""
    from timm.models import get_pretrained_cfg

    arch, _, tag = name.partition(".")
    tags = [tag] if tag else _tags_by_arch().get(arch, [])
    cfg = get_pretrained_cfg(name)
    licence = getattr(cfg, "license", None) or "unknown"
    shown = ", ".join(tags[:4]) + (f" (+{len(tags) - 4})" if len(tags) > 4 else "")
    return f"tags: {shown or '(no pretrained weights)'}; licence: {licence}"


FAMILY = TimmFamily()


@functools.lru_cache(maxsize=32)
def _architecture(timm_name: str, model_args_json: str):
    """The model built on the meta device (no memory, no weights): patch size, depth, feature stages."""
    import torch

    timm = _timm()
    kwargs = json.loads(model_args_json)
    try:
        with torch.device("meta"):
            return timm.create_model(timm_name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise UsageError(f"timm model {timm_name!r} does not take model_args {kwargs}: {exc}") from exc
    except Exception:  # a model whose init cannot run on the meta device: build it for real, once
        return timm.create_model(timm_name, pretrained=False, **kwargs)


class TimmBackbone(Backbone):
    """A timm model's dense features (one class per ``timm:<model>`` name, made by :class:`TimmFamily`)."""

    family = "timm"
    timm_name: ClassVar[str] = ""
    default_config: ClassVar[dict[str, Any]] = {
        **shared_options(),
        "model_args": Option({}, "json", "extra timm.create_model keyword arguments (architecture overrides)"),
    }
    config_namespaces: ClassVar[dict[str, tuple[str, ...]]] = {"timm": tuple(default_config)}

    @classmethod
    def tiny_config(cls, workdir: Path) -> dict[str, Any] | None:
        base = cls.timm_name.partition(".")[0]
        tiny = TINY.get(base)
        if tiny is None:
            arch = _architecture(base, "{}")
            tiny = {"resolution": 64, "model_args": TINY_VIT if hasattr(arch, "blocks") else {}}
        return {"weights": "random", **tiny}

    def __init__(self, config: dict[str, Any] | None = None, device: str = "cpu"):
        super().__init__(config, device)
        if not isinstance(self.config["model_args"], dict):
            raise UsageError(f"{self.name}.model_args={self.config['model_args']!r} must be a JSON object")

    # -- architecture facts (meta device, no weights) -----------------------------------------------
    def arch(self):
        return _architecture(self.timm_name.partition(".")[0],
                             json.dumps(self.config["model_args"], sort_keys=True))

    def is_vit(self) -> bool:
        arch = self.arch()
        return hasattr(arch, "blocks") and hasattr(arch, "patch_embed") and hasattr(arch, "num_prefix_tokens")

    def patch_size(self) -> int:
        arch = self.arch()
        if self.is_vit():
            patch = arch.patch_embed.patch_size
            return int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        return int(max(info["reduction"] for info in arch.feature_info))

    def pretrained_cfg(self) -> dict[str, Any]:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(self.timm_name)
        return cfg.to_dict() if cfg is not None else {}

    def data_config(self) -> dict[str, Any]:
        from timm.data import resolve_data_config

        return resolve_data_config({}, pretrained_cfg=self.pretrained_cfg())

    def native_resolution(self) -> int:
        args = self.config["model_args"]
        if "img_size" in args:
            size = args["img_size"]
            return int(size[-1] if isinstance(size, (list, tuple)) else size)
        return int(self.data_config()["input_size"][-1])

    def normalisation(self):
        data = self.data_config()
        return tuple(data["mean"]), tuple(data["std"])

    def depth(self) -> int:
        return len(self.arch().blocks) if self.is_vit() else len(self.arch().feature_info)

    # -- building -----------------------------------------------------------------------------------
    def build_model(self):
        timm = _timm()
        kwargs = dict(self.config["model_args"])
        if self.is_vit():
            kwargs.setdefault("img_size", self.input_size())  # timm resamples the position embedding
            # a protocol may feed another size (768, 840...): interpolate the positions for it
            kwargs.setdefault("dynamic_img_size", True)
        else:
            kwargs.update(features_only=True, out_indices=tuple(sorted(set(self.layer_indices()))))
        pretrained = self.config["weights"] == "pretrained"

        def create():
            try:
                return timm.create_model(self.timm_name, pretrained=pretrained, **kwargs)
            except TypeError:  # a ViT-like model without dynamic sizes: it takes its own input size only
                if "dynamic_img_size" not in kwargs or "dynamic_img_size" in self.config["model_args"]:
                    raise
                kwargs.pop("dynamic_img_size")
                return timm.create_model(self.timm_name, pretrained=pretrained, **kwargs)

        if not pretrained:
            model = seeded(create)
        else:
            try:
                model = create()
            except Exception as exc:  # offline and uncached, gated, corrupt download...
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                hub = self.pretrained_cfg().get("hf_hub_id") or self.timm_name
                raise WeightsError(f"{self.name}: pretrained weights are not available here ({type(exc).__name__}: "
                                   f"{reason}); fetch them once online (`hf download {hub}`) or use "
                                   f"--set timm.weights=random") from exc
        return model.eval().requires_grad_(False).to(self.device)

    def blocks(self) -> list[Any]:
        return list(self.model.blocks) if self.is_vit() else []

    def num_prefix_tokens(self) -> int:
        return int(self.model.num_prefix_tokens) if self.is_vit() else 0

    def is_token_model(self) -> bool:
        return self.is_vit()

    def projection(self, block, facet: str):
        attn = getattr(block, "attn", None)
        qkv = getattr(attn, "qkv", None)
        if qkv is None:
            return None
        return _Slice(qkv, ("query", "key", "value").index(facet))

    def forward(self, images):
        # like a stride-p convolution, ignore the last < p pixels of a side that is not a multiple of the patch
        # (timm asserts divisibility); the patch grid and its FeatureGrid stay exact
        p = self.patch_size()
        H, W = images.shape[-2:]
        return self.model.forward_features(images[..., :H // p * p, :W // p * p])

    def layer_maps(self, images) -> list:
        if self.is_vit():
            return super().layer_maps(images)
        import torch

        if self.config["facet"] != "token":
            raise UsageError(f"{self.name}: facet={self.config['facet']!r} needs attention blocks; this is a "
                             "convolutional model, use facet=token")
        stages = sorted(set(self.layer_indices()))
        outs = dict(zip(stages, self.model(images)))
        maps = [outs[i] for i in self.layer_indices()]
        h = max(m.shape[-2] for m in maps)
        w = max(m.shape[-1] for m in maps)
        # coarser stages are brought to the finest stage's grid (cells keep tiling the image)
        return [m if m.shape[-2:] == (h, w) else
                torch.nn.functional.interpolate(m, size=(h, w), mode="bilinear", align_corners=False) for m in maps]

    def setup(self) -> None:
        if not self.is_vit():
            self.layer_indices()
            if self.config["facet"] != "token":
                raise UsageError(f"{self.name}: facet={self.config['facet']!r} needs attention blocks; this is a "
                                 "convolutional model, use facet=token")
        super().setup()

    # -- identity -------------------------------------------------------------------------------------
    def weights_identity(self) -> str | None:
        if self.config["weights"] == "pretrained" and not self.config["model_args"]:
            hub = self.pretrained_cfg().get("hf_hub_id")
            revision = _hub_revision(hub) if hub else None
            if revision is None and hub:
                self.ensure_ready()  # the load puts the snapshot in the cache
                revision = _hub_revision(hub)
            if revision:
                return f"hub:{hub}@{revision}"
        return super().weights_identity()  # seeded random weights, or weights from a URL: state-dict digest

    def requirements(self):
        """The pretrained weights, looked up in the Hugging Face cache (nothing is downloaded)."""
        from corrbench.requirements import NOT_NEEDED, PRESENT, UNCHECKED, Requirement, fetchable, hf_cached

        what = f"timm {self.timm_name}"
        if self.config["weights"] == "random":
            return [Requirement("weights", what + " (random)", "timm architecture", NOT_NEEDED)]
        hub = self.pretrained_cfg().get("hf_hub_id")
        if not hub:  # weights from a URL: timm's own download, not checkable here
            return [Requirement("weights", what, str(self.pretrained_cfg().get("url") or "?"), UNCHECKED)]
        found = hf_cached(hub, ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"])
        if found:
            return [Requirement("weights", what, found, PRESENT)]
        return [Requirement("weights", what, f"hf://{hub}", fetchable(),
                            f"`hf download {hub}` on a machine with access, or --set timm.weights=random")]

    def run_info(self) -> dict[str, Any]:
        cfg = self.pretrained_cfg()
        return {**super().run_info(), "timm_model": self.timm_name, "hf_hub_id": cfg.get("hf_hub_id"),
                "license": cfg.get("license")}


class _Slice:
    """Stands for one third (q, k or v) of a fused ``qkv`` linear layer: a hook on it sees that third."""

    def __init__(self, qkv, part: int):
        self.qkv, self.part = qkv, part

    def register_forward_hook(self, hook):
        def sliced(module, inputs, output):
            c = output.shape[-1] // 3
            return hook(module, inputs, output[..., self.part * c:(self.part + 1) * c])
        return self.qkv.register_forward_hook(sliced)


def _hub_revision(hub_id: str) -> str | None:
    """The commit of the cached snapshot of ``hub_id`` (None when it is not cached)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    for filename in ("config.json", "model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        try:
            found = try_to_load_from_cache(hub_id, filename)
        except Exception:
            return None
        if isinstance(found, str) and "snapshots" in Path(found).parts:
            parts = Path(found).parts
            return parts[parts.index("snapshots") + 1]
    return None


# the family's settings are its members' (``corrbench list methods --options`` on the family row)
for _attr in ("default_config", "options", "config_namespaces"):
    setattr(type(FAMILY), _attr, getattr(TimmBackbone, _attr))
