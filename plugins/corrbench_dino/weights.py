"""Building the timm ViT for a ``model`` value with pretrained, random or local weights.

``weights`` accepts:

- ``pretrained`` (default): timm downloads the tagged weights from the Hugging Face Hub
  (``timm/vit_small_patch8_224.dino`` ...) into its cache; offline and uncached this is one
  :class:`~corrbench.errors.WeightsError` saying how to get them;
- ``random``: the same architecture with a seeded random initialisation (offline tests);
- a local file: the authors' released ``.pth`` (DINO: a plain backbone state dict; DINOv2: the
  ``dinov2_*_pretrain.pth`` files, converted by timm's own filter), a DINO full training checkpoint
  (its ``teacher`` backbone), or a timm ``.safetensors`` / ``.pth``. Loaded with
  ``torch.load(weights_only=True)`` and strictly: any missing, unexpected or mis-shaped key is an error
  that names it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from corrbench.errors import WeightsError
from corrbench.hashing import sha256_file_memo
from corrbench.torchfile import load_weights_only

from .models import ViTSpec

RANDOM_SEED = 0
file_sha256 = sha256_file_memo  # weights are hashed once per process (corrbench.hashing)


def how_to_get(spec: ViTSpec, key: str) -> str:
    where = f"`huggingface_hub` id {spec.hf_hub_id}"
    release = f", or download the authors' checkpoint {spec.release_url}" if spec.release_url else ""
    return (f"run once with internet access so timm caches {where}{release} and pass it with "
            f"--set {key}.weights=PATH ({key}.weights=random gives an untrained network)")


def weights_identity(spec: ViTSpec, weights: str) -> str:
    weights = str(weights)
    if weights == "random":
        return f"random(seed={RANDOM_SEED}):{spec.arch}"
    if weights == "pretrained":
        return f"timm:{spec.timm_name}"
    path = Path(weights).expanduser()
    return f"file:{file_sha256(path)}" if path.is_file() else f"file:{path}"


def build(spec: ViTSpec, weights: str, key: str = "dino") -> torch.nn.Module:
    """The timm model (no head, eval mode, frozen) with the requested weights."""
    import timm

    weights = str(weights)
    if weights == "pretrained":
        try:
            model = timm.create_model(spec.timm_name, pretrained=True, num_classes=0)
        except OSError as exc:  # no network and nothing cached (huggingface_hub / urllib errors are OSErrors)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(f"could not get the pretrained weights {spec.timm_name}: {type(exc).__name__}: "
                               f"{reason}. To fix: {how_to_get(spec, key)}") from exc
        except RuntimeError as exc:  # timm: "No pretrained weights exist for ..." and similar
            raise WeightsError(f"timm has no pretrained weights for {spec.timm_name!r}: {exc}") from exc
    else:
        torch.manual_seed(RANDOM_SEED)
        model = timm.create_model(spec.arch, pretrained=False, num_classes=0)
        if weights != "random":
            load_checkpoint(model, Path(weights).expanduser(), spec, key)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _read(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # truncated header, not safetensors at all
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise WeightsError(f"{path} could not be read as safetensors: {type(exc).__name__}: {reason}") from exc
    return load_weights_only(path)  # a truncated, foreign or code-carrying file: one WeightsError naming it


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The backbone state dict inside a released file (plain, ``teacher``, ``model`` or ``state_dict``)."""
    for wrapper in ("teacher", "model", "state_dict"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise WeightsError(f"{path} does not hold a state dict of named tensors")
    sd = dict(obj)
    for prefix in ("module.", "backbone."):  # DINO training checkpoints: module.backbone.*
        if sd and all(k.startswith(prefix) or k.startswith("head.") for k in sd):
            sd = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if not k.startswith("head.")}  # DINO projection head, if any


def load_checkpoint(model: torch.nn.Module, path: Path, spec: ViTSpec, key: str = "dino") -> None:
    if not path.is_file():
        raise WeightsError(f"{key}.weights={str(path)!r}: no such file (use 'pretrained', 'random' or a path to "
                           f"a checkpoint; {how_to_get(spec, key)})")
    sd = _unwrap(_read(path), path)
    if "mask_token" in sd:  # the authors' DINOv2 release: timm's own converter renames its keys
        from timm.models.vision_transformer import checkpoint_filter_fn

        sd = checkpoint_filter_fn(sd, model)
    check_state_dict(sd, model.state_dict(), path, spec.arch)
    model.load_state_dict(sd, strict=True)


def check_state_dict(sd: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """One error naming every missing, unexpected and mis-shaped key (at most 8 of each)."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)} (expected {tuple(expected[k].shape)})"
              for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            more = f" and {len(items) - 8} more" if len(items) > 8 else ""
            problems.append(f"{label}: {', '.join(items[:8])}{more}")
    if problems:
        raise WeightsError(f"{path} does not fit the {arch} architecture ({len(sd)} keys, expected "
                           f"{len(expected)}): {'; '.join(problems)}")
