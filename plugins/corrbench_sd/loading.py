"""Loading Stable Diffusion components: hub id or local diffusers folder, real or random weights.

Only what feature extraction needs is kept in memory: the UNet, the VAE *encoder* (the decoder is
loaded on demand, for generation only) and the empty-prompt embedding (the text encoder is dropped
once it has produced it, unless prompts are encoded for generation). Components are cached per process
by (model, weights, device, dtype), so several SD methods in one run share one UNet.

Hub ids are looked up in the local Hugging Face cache first; a download is tried only when the
environment is online (``HF_HUB_OFFLINE`` unset). Anything that fails ends in one
:class:`~corrbench.errors.WeightsError` that says how to get the weights.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from corrbench.errors import UsageError, WeightsError

from .configs import architecture

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer")
WEIGHT_MODES = ("pretrained", "random")
#: Seed of the random initialisation for ``weights=random`` (independent of the latent-sampling seed).
RANDOM_WEIGHTS_SEED = 12345


# --------------------------------------------------------------------------------------------------
# Where the model comes from
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSource:
    """A resolved ``sd.model`` value: a local diffusers folder or a hub repository id."""

    spec: str
    folder: Path | None = None
    hub_id: str | None = None

    @property
    def where(self) -> str:
        return str(self.folder) if self.folder is not None else str(self.hub_id)


def resolve_source(model: str) -> ModelSource:
    """Tell a local folder from a hub id; a path that does not exist is an error naming it."""
    spec = str(model).strip()
    if not spec:
        raise UsageError("sd.model is empty; give a hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5) "
                         "or a local diffusers folder")
    path = Path(spec).expanduser()
    if path.is_dir():
        folder = path.resolve()
        missing = [c for c in ("unet", "vae") if not (folder / c).is_dir()]
        if missing:
            raise WeightsError(f"{folder} is not a diffusers Stable Diffusion folder: it has no "
                               f"{' or '.join(c + '/' for c in missing)} subfolder (expected model_index.json, "
                               "unet/, vae/, text_encoder/, tokenizer/)")
        return ModelSource(spec, folder=folder)
    looks_like_hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and " " not in spec
    if path.exists() or not looks_like_hub_id:
        raise WeightsError(f"SD model folder {spec!r} does not exist (or is not a folder); pass an existing "
                           "diffusers folder with --set sd.model=PATH, or a hub id such as "
                           "stable-diffusion-v1-5/stable-diffusion-v1-5")
    return ModelSource(spec, hub_id=spec)


def how_to_get(source: ModelSource) -> str:
    if source.hub_id:
        return (f"download it with `huggingface-cli download {source.hub_id}` (or `hf download {source.hub_id}`) "
                "on a machine with Hugging Face access, or point corrbench at a local diffusers folder with "
                "--set sd.model=PATH (or use --set sd.weights=random for an offline smoke test)")
    return "point --set sd.model at a complete diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/)"


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"))


# --------------------------------------------------------------------------------------------------
# dtype and device
# --------------------------------------------------------------------------------------------------
_DTYPES = {"float16": "float16", "fp16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float32": "float32", "fp32": "float32", "float": "float32"}


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` → float16 on CUDA, float32 elsewhere (fp16 convolutions on a CPU are slow or missing)."""
    name = str(dtype).lower()
    if name == "auto":
        return "float16" if str(device).startswith("cuda") else "float32"
    if name not in _DTYPES:
        raise UsageError(f"sd.dtype {dtype!r} is not one of auto, float16, bfloat16, float32")
    return _DTYPES[name]


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


# --------------------------------------------------------------------------------------------------
# Weights identity (part of the feature-cache key)
# --------------------------------------------------------------------------------------------------
def _folder_fingerprint(folder: Path) -> str:
    """Hash of every config/tokenizer file's bytes plus each weight file's name, size and mtime."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(folder).as_posix()
        if path.suffix in (".json", ".txt", ".model"):
            digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
        elif path.suffix in (".safetensors", ".bin", ".ckpt", ".pt", ".pth"):
            st = path.stat()
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:16]


def _hub_revision(hub_id: str) -> str | None:
    """The commit hash of the cached snapshot of ``hub_id`` (None when it is not in the local cache)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency of diffusers
        return None
    for name in ("model_index.json", "unet/config.json"):
        found = try_to_load_from_cache(hub_id, name)
        if isinstance(found, str):
            # .../models--org--name/snapshots/<commit>/<name>
            parts = Path(found).parts
            if "snapshots" in parts:
                return parts[parts.index("snapshots") + 1]
    return None


def weights_identity(source: ModelSource, weights: str = "pretrained", *,
                     load: Callable[[], Any] | None = None) -> str:
    """A string that changes when the weights change: folder fingerprint or hub snapshot revision.

    A hub id with pretrained weights is identified by the commit of the snapshot the loader reads
    (``hub:<id>@<commit>``, the local cache's ``refs/main``), so the identity is only known once the
    weights are resolved. When the snapshot is not in the local cache, ``load()`` is called first
    (the same load a run does: it downloads the weights when online, or raises the WeightsError that
    says how to get them); without ``load``, or if the snapshot is still missing, a WeightsError is
    raised. Callers memoise the result (``SDDescriptor.weights_identity``).
    """
    if source.folder is not None:
        prefix = "random-arch" if weights == "random" else "folder"
        return f"{prefix}:{source.folder}:{_folder_fingerprint(source.folder)}"
    if weights == "random":
        return f"random:{source.hub_id}:seed{RANDOM_WEIGHTS_SEED}"
    revision = _hub_revision(source.hub_id)
    if revision is None and load is not None:
        load()
        revision = _hub_revision(source.hub_id)
    if revision is None:
        raise WeightsError(f"Stable Diffusion weights {source.hub_id!r} are not in the local Hugging Face cache, "
                           f"so their revision is unknown; {how_to_get(source)}")
    return f"hub:{source.hub_id}@{revision}"


# --------------------------------------------------------------------------------------------------
# Loading one component
# --------------------------------------------------------------------------------------------------
def _quiet_transformers() -> None:
    """transformers draws a "Loading weights" bar for every model; corrbench shows its own progress."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # an older or newer transformers without the switch: a bar is harmless
        pass


def _from_pretrained(source: ModelSource, subfolder: str, loader, **kwargs) -> Any:
    """``loader(location, subfolder=..., **kwargs)`` for a folder, or cache-then-download for a hub id."""
    _quiet_transformers()
    if source.folder is not None:
        if not (source.folder / subfolder).is_dir():
            raise WeightsError(f"{source.folder} has no {subfolder}/ subfolder; {how_to_get(source)}")
        try:
            return loader(str(source.folder), subfolder=subfolder, **kwargs)
        except Exception as exc:  # corrupt or incomplete folder: say which part
            raise WeightsError(f"could not load {subfolder}/ from {source.folder}: {type(exc).__name__}: {exc}") from exc
    errors: list[str] = []
    for local_only in (True, False):
        if not local_only and _offline():
            errors.append("not downloaded: HF_HUB_OFFLINE is set")
            break
        try:
            with warnings.catch_warnings():  # diffusers passes hf_hub_download a deprecated argument
                warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
                return loader(source.hub_id, subfolder=subfolder, local_files_only=local_only, **kwargs)
        except Exception as exc:  # missing from the cache, no network, gated repo...
            errors.append(f"{'cache' if local_only else 'download'}: {type(exc).__name__}: {str(exc)[:300]}")
    raise WeightsError(f"Stable Diffusion weights {source.hub_id!r} ({subfolder}) are not available offline "
                       f"and could not be downloaded. To get them, {how_to_get(source)}. "
                       f"Details: {' | '.join(errors)}")


def _diffusers_loader(cls, variant: str | None):
    def load(location, **kwargs):
        return cls.from_pretrained(location, variant=variant, **kwargs)
    return load


def _load_diffusers(source: ModelSource, subfolder: str, cls, dtype_name: str):
    kwargs = {"torch_dtype": torch_dtype(dtype_name)}
    if source.hub_id and dtype_name == "float16":
        # the hub repositories carry half-size fp16 files; fall back to the full files when absent
        try:
            return _from_pretrained(source, subfolder, _diffusers_loader(cls, "fp16"), **kwargs)
        except WeightsError:
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return _from_pretrained(source, subfolder, _diffusers_loader(cls, None), **kwargs)


def _check_tokenizer(tok, source: ModelSource) -> None:
    """transformers 5 can return a 2-token tokenizer instead of failing when the vocabulary files are
    missing; such a tokenizer would silently turn every prompt into padding."""
    vocab = len(tok)
    max_length = getattr(tok, "model_max_length", 0) or 0
    if vocab < 3 or not 0 < max_length < 100_000:
        raise WeightsError(f"the tokenizer of {source.where} is incomplete ({vocab} tokens, model_max_length "
                           f"{max_length}): its vocabulary files are missing; {how_to_get(source)}")


class _quiet_diffusers:
    """Silence diffusers' logger inside the block (its dtype-cast advice does not apply to SD)."""

    def __enter__(self):
        from diffusers.utils import logging as dlog

        self._level = dlog.get_verbosity()
        dlog.set_verbosity_error()

    def __exit__(self, *exc):
        from diffusers.utils import logging as dlog

        dlog.set_verbosity(self._level)
        return False


# --------------------------------------------------------------------------------------------------
# The cached component set
# --------------------------------------------------------------------------------------------------
@dataclass
class SDComponents:
    """UNet + VAE encoder on ``device`` in ``dtype``, text parts on demand."""

    source: ModelSource
    weights: str
    device: str
    dtype: str
    unet: Any = None
    vae: Any = None  # encoder only (decoder dropped)
    scaling_factor: float = 0.18215
    _text_encoder: Any = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)
    _tokenizer_loaded: bool = field(default=False, repr=False)
    _decoder_vae: Any = field(default=None, repr=False)
    _embeddings: dict[str, Any] = field(default_factory=dict, repr=False)
    _keep_text: bool = field(default=False, repr=False)

    # -- construction -------------------------------------------------------------------------
    def load(self) -> "SDComponents":
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.unet = self._build(UNet2DConditionModel, "unet")
        # SDPA attention (diffusers' default on torch 2, made explicit so a saved processor cannot override it)
        self.unet.set_attn_processor(AttnProcessor2_0())
        vae = self._build(AutoencoderKL, "vae")
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 0.18215) or 0.18215)
        vae.decoder = None  # inversion only encodes; the decoder is reloaded for generation
        vae.post_quant_conv = None
        self.vae = vae
        return self

    def _place(self, module):
        target = torch_dtype(self.dtype)
        module = module.to(device=self.device)
        if getattr(module, "dtype", target) != target:
            with _quiet_diffusers():  # "modules that should be kept in float32: []" is noise for SD
                module = module.to(dtype=target)
        module.eval().requires_grad_(False)
        return module

    def _random_config(self, name: str) -> dict[str, Any]:
        if self.source.folder is not None:
            config_path = self.source.folder / name / "config.json"
            if not config_path.is_file():
                raise WeightsError(f"weights=random needs {config_path} to build the architecture")
            import json

            return json.loads(config_path.read_text(encoding="utf-8"))
        arch = architecture(self.source.hub_id or "")
        if arch is None:
            raise WeightsError(f"weights=random knows the architectures of the SD-1.5 and SD-2.1-base hub ids only, "
                               f"not {self.source.hub_id!r}; pass a local folder with its config files instead")
        return arch[name]

    def _build(self, cls, name: str):
        if self.weights == "pretrained":
            return self._place(_load_diffusers(self.source, name, cls, self.dtype))
        import torch

        config = {k: v for k, v in self._random_config(name).items() if not k.startswith("_")}
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(RANDOM_WEIGHTS_SEED + COMPONENTS.index(name))
            model = cls.from_config(config)
        return self._place(model)

    # -- text -------------------------------------------------------------------------------
    def _load_tokenizer(self):
        if self._tokenizer_loaded:
            return self._tokenizer
        from transformers import CLIPTokenizer

        tok = None
        if self.source.folder is not None or self.weights == "pretrained":
            tok = _from_pretrained(self.source, "tokenizer", CLIPTokenizer.from_pretrained)
        else:
            try:  # random weights: use a cached real tokenizer if one happens to be present
                tok = CLIPTokenizer.from_pretrained(self.source.hub_id, subfolder="tokenizer", local_files_only=True)
                _check_tokenizer(tok, self.source)
            except Exception:
                tok = None
        if tok is not None:
            _check_tokenizer(tok, self.source)
        self._tokenizer, self._tokenizer_loaded = tok, True
        return tok

    def _load_text_encoder(self):
        if self._text_encoder is None:
            from transformers import CLIPTextConfig, CLIPTextModel

            if self.weights == "pretrained":
                model = _from_pretrained(self.source, "text_encoder", CLIPTextModel.from_pretrained,
                                         dtype=torch_dtype(self.dtype))
            else:
                import torch

                config = CLIPTextConfig(**{k: v for k, v in self._random_config("text_encoder").items()
                                           if not k.startswith("_") and k not in ("architectures",)})
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(RANDOM_WEIGHTS_SEED + COMPONENTS.index("text_encoder"))
                    model = CLIPTextModel(config)
            self._text_encoder = self._place(model)
        return self._text_encoder

    def _token_ids(self, prompts: list[str]):
        import torch

        tok = self._load_tokenizer()
        if tok is not None:
            return tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                       return_tensors="pt").input_ids
        # weights=random with a hub architecture and no cached tokenizer: the empty prompt's ids are
        # [bos, eos, pad, ...] by construction; any other text needs the real vocabulary
        if any(p for p in prompts):
            raise WeightsError(f"encoding a prompt with weights=random needs the tokenizer of {self.source.hub_id!r}; "
                               f"{how_to_get(self.source)}")
        facts = architecture(self.source.hub_id or "")["tokenizer"]
        n = facts["model_max_length"]
        ids = [facts["bos_token_id"], facts["eos_token_id"]] + [facts["pad_token_id"]] * (n - 2)
        return torch.tensor([ids] * len(prompts))

    def text_embeddings(self, prompts: list[str], *, keep_encoder: bool = False):
        """CLIP ``last_hidden_state`` of each prompt (len × L × D, model dtype, on device).

        The empty prompt's embedding is computed once and cached; the text encoder is released
        afterwards unless ``keep_encoder`` (generation encodes many prompts).
        """
        import torch

        missing = [p for p in dict.fromkeys(prompts) if p not in self._embeddings]
        if missing:
            encoder = self._load_text_encoder()
            with torch.inference_mode():
                ids = self._token_ids(missing).to(self.device)
                hidden = encoder(ids)[0]
            for prompt, h in zip(missing, hidden):
                if prompt == "" or keep_encoder:
                    self._embeddings[prompt] = h
            new = dict(zip(missing, hidden))
        else:
            new = {}
        out = torch.stack([self._embeddings.get(p, new.get(p)) for p in prompts])
        self._keep_text = self._keep_text or keep_encoder
        if not self._keep_text:  # once generation has asked for it, keep it for the next prompts
            self._text_encoder = None
        return out

    # -- decoder (generation) -----------------------------------------------------------------
    def decoder_vae(self):
        if self._decoder_vae is None:
            from diffusers import AutoencoderKL

            self._decoder_vae = self._build(AutoencoderKL, "vae")
        return self._decoder_vae


_CACHE: dict[tuple[str, str, str, str], SDComponents] = {}


def get_components(model: str, *, weights: str = "pretrained", device: str = "cpu", dtype: str = "auto") -> SDComponents:
    """The process-wide component set for (model, weights, device, dtype), loaded on first use."""
    if weights not in WEIGHT_MODES:
        raise UsageError(f"sd.weights {weights!r} is not one of {', '.join(WEIGHT_MODES)}")
    source = resolve_source(model)
    dtype_name = resolve_dtype(dtype, device)
    key = (source.where, weights, str(device), dtype_name)
    if key not in _CACHE:
        _CACHE[key] = SDComponents(source, weights, str(device), dtype_name).load()
    return _CACHE[key]


def clear_cache() -> None:
    """Forget every loaded component set (frees their memory once nothing else holds them)."""
    _CACHE.clear()
