"""Where aggregation-network weights come from: the authors' Hugging Face repo, a local file, or random.

``dhf.weights`` accepts ``auto`` (the released file for the method, fetched with huggingface_hub into
its cache), ``random`` (untrained network, for offline tests), ``hf://<repo>/<path-in-repo>``, or a
local path (``.pt`` in the official format or corrbench ``.safetensors``).
"""

from __future__ import annotations

import os
from pathlib import Path

from corrbench.errors import WeightsError

HF_REPO = "g-luo/diffusion-hyperfeatures"
#: released file per method (docs/methods.md#diffusion-hyperfeatures); the pruned rows read the "Ours" network
RELEASED_FILES = {
    "dhf": "weights/aggregation_network.pt",
    "dhf-one-step": "weights/aggregation_network_one-step.pt",
    "dhf-sd21": "weights/aggregation_network_sdv2-1.pt",
}
#: tests point this at a loopback server; ``None`` means huggingface_hub's default (or $HF_ENDPOINT)
HF_ENDPOINT: str | None = None


def how_to_get(repo: str, filename: str) -> str:
    return (f"download it on a machine with internet access with `hf download {repo} {filename}` "
            f"(older huggingface_hub: `huggingface-cli download {repo} {filename}`), which fills the Hugging Face "
            f"cache corrbench reads; or pass a local file with --set dhf.weights=PATH "
            f"(dhf.weights=random gives an untrained network)")


def resolve(spec: str, default_file: str, *, repo: str = HF_REPO) -> Path | None:
    """The local checkpoint path for ``spec`` (``None`` for ``random``)."""
    spec = str(spec or "auto").strip()
    if spec == "random":
        return None
    if spec == "auto":
        return download(repo, default_file)
    if spec.startswith("hf://"):
        rest = spec[len("hf://"):]
        parts = rest.split("/")
        if len(parts) < 3:
            raise WeightsError(f"dhf.weights={spec!r}: expected hf://<owner>/<repo>/<path in repo>")
        return download("/".join(parts[:2]), "/".join(parts[2:]))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsError(f"dhf.weights={spec!r}: no such file {path} (use 'auto' for the released weights, "
                           f"'random' for an untrained network, or a path to a checkpoint)")
    return path


def download(repo: str, filename: str) -> Path:
    """Fetch one file with huggingface_hub (cached); offline without it, one WeightsError."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub is in the sd extra
        raise WeightsError(f"huggingface_hub is needed to fetch {repo}/{filename}: pip install 'corrbench[sd]'") from exc
    kwargs = {"endpoint": HF_ENDPOINT} if HF_ENDPOINT else {}
    try:
        return Path(hf_hub_download(repo, filename, **kwargs))
    except Exception as exc:  # offline, missing file, no connection: all the same to the user
        reason = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") else ""
        raise WeightsError(f"could not get {filename} from the Hugging Face repo {repo}{offline}: "
                           f"{type(exc).__name__}: {reason}. To fix: {how_to_get(repo, filename)}") from exc
