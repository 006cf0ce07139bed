"""``hf:<repo>`` and ``hf:<folder>``: dense features of transformers vision backbones.

Supported: DINOv2 (with or without registers), DINOv3 ViT, ViT, MAE (ViTMAE, masking off), and the
vision towers of CLIP and SigLIP (a full CLIP/SigLIP checkpoint is reduced to its ``vision_model``).
Repositories that ship their own modelling code (``auto_map`` in config.json) are refused unless
``--set hf.trust_remote_code=true``.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, ClassVar

from corrbench.errors import UsageError, WeightsError
from corrbench.options import Option

from .base import Backbone, seeded, shared_options, with_config

PREFIX = "hf:"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
#: model_type → normalisation when the repo has no preprocessor_config.json
DEFAULT_NORM = {"clip": CLIP_NORM, "clip_vision_model": CLIP_NORM, "siglip": HALF, "siglip_vision_model": HALF}
#: model types without a CLS token
NO_CLS = ("siglip", "siglip_vision_model", "siglip2", "siglip2_vision_model")
#: model types whose forward takes ``interpolate_pos_encoding`` (DINOv2/v3 always interpolate)
INTERPOLATE = ("vit", "vit_mae", "clip", "clip_vision_model", "siglip", "siglip_vision_model")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

FEATURED = {
    "hf:facebook/dinov2-small": "DINOv2 ViT-S/14 (transformers), last layer tokens",
    "hf:facebook/dinov2-with-registers-small": "DINOv2 ViT-S/14 with registers (transformers)",
    "hf:facebook/dinov3-vits16-pretrain-lvd1689m": "DINOv3 ViT-S/16 (transformers; gated on the Hub)",
    "hf:openai/clip-vit-base-patch16": "CLIP ViT-B/16 vision tower (transformers)",
    "hf:google/siglip-base-patch16-224": "SigLIP ViT-B/16 vision tower (transformers)",
    "hf:facebook/vit-mae-base": "MAE ViT-B/16 encoder, no masking (transformers)",
}
#: featured repo → (config class, patch, input side) of its tiny stand-in for the weightless tests
TINY = {
    "facebook/dinov2-small": ("Dinov2Config", 14, 50),
    "facebook/dinov2-with-registers-small": ("Dinov2WithRegistersConfig", 14, 56),
    "facebook/dinov3-vits16-pretrain-lvd1689m": ("DINOv3ViTConfig", 16, 64),
    "openai/clip-vit-base-patch16": ("CLIPVisionConfig", 16, 64),
    "google/siglip-base-patch16-224": ("SiglipVisionConfig", 16, 64),
    "facebook/vit-mae-base": ("ViTMAEConfig", 16, 64),
}


#: the published architecture of featured repos (their config.json values), so that ``weights=random`` runs
#: offline without the repo's config: random weights of the real shape, e.g. for timing or as a floor
ARCHITECTURES = {
    "facebook/dinov2-small": ("Dinov2Config", dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                                   mlp_ratio=4, patch_size=14, image_size=518, layerscale_value=1.0)),
    "facebook/dinov2-base": ("Dinov2Config", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                                  mlp_ratio=4, patch_size=14, image_size=518, layerscale_value=1.0)),
    "facebook/dinov2-with-registers-small": ("Dinov2WithRegistersConfig", dict(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14, image_size=518,
        layerscale_value=1.0, num_register_tokens=4)),
    "openai/clip-vit-base-patch16": ("CLIPVisionConfig", dict(hidden_size=768, intermediate_size=3072,
                                                              num_hidden_layers=12, num_attention_heads=12,
                                                              patch_size=16, image_size=224)),
    "google/siglip-base-patch16-224": ("SiglipVisionConfig", dict(hidden_size=768, intermediate_size=3072,
                                                                  num_hidden_layers=12, num_attention_heads=12,
                                                                  patch_size=16, image_size=224)),
    "facebook/vit-mae-base": ("ViTMAEConfig", dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                   num_attention_heads=12, patch_size=16, image_size=224)),
}


def architecture_folder(repo: str) -> Path | None:
    """A config-only folder with ``repo``'s published architecture (None when the table does not know it).

    Written once under the corrbench user cache; used only for ``weights=random`` when the repo's own
    config.json is not in the Hugging Face cache.
    """
    if repo not in ARCHITECTURES:
        return None
    import transformers

    from corrbench.paths import user_cache_root

    folder = user_cache_root() / "hf-architectures" / repo.replace("/", "--")
    if not (folder / "config.json").is_file():
        config_class, kwargs = ARCHITECTURES[repo]
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        getattr(transformers, config_class)(**kwargs).save_pretrained(tmp)
        os.replace(tmp, folder)
    return folder


def save_tiny(folder: Path, config_class: str, patch: int, image_size: int, **overrides) -> Path:
    """A tiny random transformers model (hidden size 32, 2 layers) saved with ``save_pretrained``."""
    import transformers

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  patch_size=patch, image_size=image_size)
    if config_class == "Dinov2WithRegistersConfig":
        kwargs["num_register_tokens"] = 4
    if config_class == "DINOv3ViTConfig":
        kwargs["num_register_tokens"] = 4
    if config_class == "ViTMAEConfig":
        kwargs["mask_ratio"] = 0.0
    kwargs.update(overrides)
    transformers.utils.logging.disable_progress_bar()
    config = getattr(transformers, config_class)(**kwargs)
    model = seeded(lambda: transformers.AutoModel.from_config(config))
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    os.replace(tmp, folder)
    return folder


class HFFamily:
    """The ``hf:*`` family: any repo id or local folder; the model is only looked at when it is built."""

    @functools.lru_cache(maxsize=None)
    def build(self, suffix: str) -> type:
        spec = suffix.strip()
        local = spec.startswith(("/", ".", "~")) or Path(spec).expanduser().is_dir()
        if not local and (spec.count("/") != 1 or " " in spec or spec.endswith("/")):
            raise UsageError(f"{PREFIX + suffix!r}: expected hf:<org>/<repo> (a Hugging Face model id) or "
                             "hf:<folder> (a local save_pretrained folder)")
        name = PREFIX + suffix
        return with_config(HFBackbone, name, {"repo": spec,
                                              "description": FEATURED.get(name, f"transformers model {spec}")})

    def members(self, pattern: str, limit: int) -> tuple[list[tuple[str, str]], int]:
        """Featured repos and the model repos in the local Hugging Face cache that match ``pattern``."""
        import fnmatch

        rows = dict(FEATURED)
        for repo in _cached_repos():
            rows.setdefault(PREFIX + repo, "in the local Hugging Face cache")
        names = sorted(n for n in rows if fnmatch.fnmatchcase(n, pattern))
        return [(n, rows[n]) for n in names[:limit]], len(names)


def _cached_repos() -> list[str]:
    try:
        from huggingface_hub import scan_cache_dir

        return sorted(r.repo_id for r in scan_cache_dir().repos if r.repo_type == "model")
    except Exception:  # no cache folder yet, or an unreadable one: nothing cached to list
        return []


FAMILY = HFFamily()


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


class HFBackbone(Backbone):
    """A transformers vision backbone's dense features (one class per ``hf:<repo>`` name)."""

    family = "hf"
    repo: ClassVar[str] = ""
    default_config: ClassVar[dict[str, Any]] = {
        **shared_options(),
        "trust_remote_code": Option(False, bool, "allow a repo's own modelling code (auto_map) to run"),
        "snapshot": Option("", "path", "load config and weights from this local copy of the repo instead"),
    }
    config_namespaces: ClassVar[dict[str, tuple[str, ...]]] = {"hf": tuple(default_config)}

    @classmethod
    def tiny_config(cls, workdir: Path) -> dict[str, Any] | None:
        tiny = TINY.get(cls.repo)
        if tiny is None:
            return None
        config_class, patch, size = tiny
        folder = save_tiny(Path(workdir) / ("hf-" + cls.repo.replace("/", "--")), config_class, patch, size)
        # the tiny stand-in is "pretrained": its saved weights are loaded like a downloaded snapshot
        return {"snapshot": str(folder), "resolution": size}

    # -- where the model comes from ---------------------------------------------------------------------
    def folder(self) -> Path | None:
        """The local folder to load from (``snapshot``, or the name itself), or None for a hub repo."""
        spec = str(self.config["snapshot"]) or self.repo
        path = Path(spec).expanduser()
        if self.config["snapshot"] or spec.startswith(("/", ".", "~")) or path.is_dir():
            if not (path / "config.json").is_file():
                raise WeightsError(f"{self.name}: {path} is not a transformers model folder (no config.json); "
                                   "save one with save_pretrained, or download a repo with `hf download ORG/REPO "
                                   "--local-dir PATH`")
            return path.resolve()
        if self.config["weights"] == "random":
            from corrbench.requirements import hf_cached

            if hf_cached(self.repo, ["config.json"]) is None:
                return architecture_folder(self.repo)  # the published shape, known without the hub
        return None

    def how_to_get(self) -> str:
        return (f"download it with `hf download {self.repo}` on a machine with Hugging Face access (it is then "
                f"in the cache), or pass a local copy: hf:/path/to/folder or --set {self.name}.snapshot=PATH")

    def config_file(self) -> Path:
        folder = self.folder()
        if folder is not None:
            return folder / "config.json"
        from corrbench.requirements import hf_cached

        found = hf_cached(self.repo, ["config.json"])
        if found is None and not _offline():
            try:
                from huggingface_hub import hf_hub_download

                found = hf_hub_download(self.repo, "config.json")
            except Exception as exc:
                raise WeightsError(f"{self.name}: could not fetch config.json ({type(exc).__name__}); "
                                   f"{self.how_to_get()}") from exc
        if found is None:
            raise WeightsError(f"{self.name}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                               f"{self.how_to_get()}")
        return Path(found)

    @functools.cached_property
    def raw_config(self) -> dict[str, Any]:
        path = self.config_file()
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise WeightsError(f"{self.name}: {path} is not readable JSON: {exc}") from exc
        if raw.get("auto_map") and not self.config["trust_remote_code"]:
            raise UsageError(f"{self.name}: the repo ships its own modelling code (auto_map in config.json), which "
                             "corrbench does not run by default; pass --set hf.trust_remote_code=true if you trust it")
        # a CLIP/SigLIP checkpoint keeps the vision tower's settings in vision_config
        return {**raw, **raw.get("vision_config", {})} if "vision_config" in raw else raw

    def model_type(self) -> str:
        return str(self.raw_config.get("model_type", ""))

    def patch_size(self) -> int:
        patch = self.raw_config.get("patch_size", 16)
        return int(patch[0] if isinstance(patch, (list, tuple)) else patch)

    def native_resolution(self) -> int:
        size = self.raw_config.get("image_size", 224)
        return int(size[-1] if isinstance(size, (list, tuple)) else size)

    @functools.cached_property
    def _normalisation(self):
        prep = self.config_file().with_name("preprocessor_config.json")
        if prep.is_file():
            try:
                data = json.loads(prep.read_text())
                if data.get("image_mean") and data.get("image_std"):
                    return tuple(data["image_mean"]), tuple(data["image_std"])
            except (OSError, ValueError):
                pass
        return DEFAULT_NORM.get(self.model_type(), IMAGENET)

    def normalisation(self):
        return self._normalisation  # read once: preprocessing() is asked for often

    # -- building -------------------------------------------------------------------------------------
    def build_model(self):
        model = self._load()
        if hasattr(model, "text_model") and hasattr(model, "vision_model"):
            model = model.vision_model  # a full CLIP/SigLIP checkpoint: keep the vision tower
        return model.eval().requires_grad_(False).to(self.device)

    def _load(self):
        import transformers

        transformers.utils.logging.disable_progress_bar()
        trust = bool(self.config["trust_remote_code"])
        folder = self.folder()
        where = str(folder) if folder is not None else self.repo
        self.raw_config  # noqa: B018  (refuses remote code before anything runs)
        try:
            if self.config["weights"] == "random":
                config = transformers.AutoConfig.from_pretrained(where, trust_remote_code=trust,
                                                                 local_files_only=_offline())
                model = seeded(lambda: transformers.AutoModel.from_config(config, trust_remote_code=trust))
            else:
                model = transformers.AutoModel.from_pretrained(where, trust_remote_code=trust,
                                                               local_files_only=_offline() or folder is not None)
        except (OSError, ValueError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise WeightsError(f"{self.name}: could not load the model ({type(exc).__name__}: {reason}); "
                               f"{self.how_to_get()}") from exc
        return model

    def blocks(self) -> list[Any]:
        import torch

        n = int(self.raw_config.get("num_hidden_layers", 0))
        lists = [m for m in self.model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
        if not lists:
            raise UsageError(f"{self.name}: found no list of {n} transformer layers in {type(self.model).__name__}")
        return list(lists[0])

    def num_prefix_tokens(self) -> int:
        if self.model_type() in NO_CLS:
            return 0
        return 1 + int(self.raw_config.get("num_register_tokens", 0) or 0)

    def projection(self, block, facet: str):
        wanted = {"query": ("q_proj", "query"), "key": ("k_proj", "key"), "value": ("v_proj", "value")}[facet]
        for name, module in block.named_modules():
            if name.rsplit(".", 1)[-1] in wanted:
                return module
        return None

    def forward(self, images):
        import torch

        kwargs: dict[str, Any] = {}
        if self.model_type() in INTERPOLATE:
            kwargs["interpolate_pos_encoding"] = True
        if self.model_type() == "vit_mae":
            # MAE shuffles tokens by sorting random noise; increasing noise keeps every token in place
            n = (images.shape[-2] // self.patch_size()) * (images.shape[-1] // self.patch_size())
            kwargs["noise"] = torch.arange(n, device=images.device, dtype=images.dtype).expand(images.shape[0], n)
        return self.model(pixel_values=images, **kwargs)

    # -- identity -------------------------------------------------------------------------------------
    def weights_identity(self) -> str | None:
        if self.config["weights"] == "random":
            return super().weights_identity()  # seeded: the state-dict digest
        folder = self.folder()
        if folder is not None:
            from corrbench.hashing import sha256_file_memo

            files = sorted(p for p in folder.iterdir() if p.name in WEIGHT_FILES or p.suffix == ".safetensors")
            if not files:
                raise WeightsError(f"{self.name}: {folder} has no weight file ({', '.join(WEIGHT_FILES)})")
            return "files:" + ",".join(f"{p.name}={sha256_file_memo(p)[:16]}" for p in files)
        revision = _revision(self.repo)
        if revision is None:
            self.ensure_ready()  # loading puts the snapshot in the cache (or says how to get it)
            revision = _revision(self.repo)
        if revision is None:
            raise WeightsError(f"{self.name}: the snapshot's revision is unknown; {self.how_to_get()}")
        return f"hub:{self.repo}@{revision}"

    def requirements(self):
        """The repo's config and weights: a local folder, or the Hugging Face cache (nothing is downloaded)."""
        from corrbench.requirements import MISSING, PRESENT, Requirement, fetchable, hf_cached

        what = f"transformers {self.repo}"
        spec = str(self.config["snapshot"]) or self.repo
        if self.config["snapshot"] or spec.startswith(("/", ".", "~")) or Path(spec).expanduser().is_dir():
            ok = (Path(spec).expanduser() / "config.json").is_file()
            return [Requirement("weights", what, spec, PRESENT if ok else MISSING,
                                "" if ok else "no config.json in that folder; save one with save_pretrained")]
        names = ["config.json"] if self.config["weights"] == "random" else list(WEIGHT_FILES)
        found = hf_cached(self.repo, names)
        if not found and self.config["weights"] == "random" and self.repo in ARCHITECTURES:
            return [Requirement("weights", what, "random weights of the built-in architecture", PRESENT)]
        if found:
            return [Requirement("weights", what, found, PRESENT)]
        return [Requirement("weights", what, f"hf://{self.repo}", fetchable(), self.how_to_get())]

    def run_info(self) -> dict[str, Any]:
        return {**super().run_info(), "model_type": self.model_type(), "repo": self.repo,
                "snapshot": str(self.config["snapshot"]) or None}


def _revision(repo: str) -> str | None:
    from corrbench.requirements import hf_cached

    found = hf_cached(repo, ["config.json"])
    if found and "snapshots" in Path(found).parts:
        parts = Path(found).parts
        return parts[parts.index("snapshots") + 1]
    return None


# the family's settings are its members' (``corrbench list methods --options`` on the family row)
for _attr in ("default_config", "options", "config_namespaces"):
    setattr(type(FAMILY), _attr, getattr(HFBackbone, _attr))
