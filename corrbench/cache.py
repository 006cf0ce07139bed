"""Content-addressed, on-disk cache of per-image descriptor maps (safetensors).

Layout (hloc style: the folder name says what is inside)::

    <cache>/<method>-<config hash>/config.json          resolved config, versions, weights identity
    <cache>/<method>-<config hash>/<sha[:2]>/<sha>.safetensors

The config hash covers the method name, the resolved config, the method and plugin versions, the
weights identity and the preprocessing; the file name is the sha256 of the image bytes. A changed
setting therefore never reuses stale features. Writes go to a temporary file renamed into place, and
each entry stores a checksum of its tensor bytes: a truncated or corrupt entry is reported and
recomputed, never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from .fsmode import atomic_write_bytes

FORMAT_VERSION = "1"


def default_cache_dir() -> Path:
    """``$CORRBENCH_CACHE``, else the user cache folder's ``features/`` (``--cache-dir`` overrides both)."""
    env = os.environ.get("CORRBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    from .paths import user_cache_root

    return user_cache_root() / "features"


def cache_summary(root: Path) -> list[dict[str, Any]]:
    """One record per method-configuration folder: method, config hash, images, predictions, bytes."""
    rows = []
    if not root.is_dir():
        return rows
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file()):
        try:
            identity = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            identity = {}
        files = [f for f in folder.rglob("*") if f.is_file()]
        rows.append({"folder": folder.name, "method": identity.get("method", folder.name.rsplit("-", 1)[0]),
                     "images": sum(1 for f in files if f.suffix == ".safetensors"),
                     "predictions": sum(1 for f in files if f.suffix == ".npy"),
                     "bytes": sum(f.stat().st_size for f in files),
                     "weights": identity.get("weights"), "path": str(folder)})
    return rows


def clear_cache(root: Path, method: str | None = None) -> list[dict[str, Any]]:
    """Delete every method folder (or those of ``method``) under ``root``; returns what was removed."""
    import shutil

    removed = [r for r in cache_summary(root) if method is None or r["method"] == method]
    for r in removed:
        shutil.rmtree(r["path"])
    return removed


def config_hash(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


class FeatureCache:
    """One method configuration's slice of the cache."""

    def __init__(self, root: Path, method: str, identity: dict[str, Any]):
        self.digest = config_hash({"format": FORMAT_VERSION, **identity})
        # a family name such as "hf:/models/dinov2" must stay one folder: unsafe characters become "_"
        # (the exact name is in the folder's config.json, and the digest keeps folders apart)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", method).strip("_.")[:80] or "method"
        self.dir = Path(root) / f"{safe}-{self.digest[:12]}"
        self.identity = identity
        self.hits = 0
        self.misses = 0

    def _path(self, image_sha: str) -> Path:
        return self.dir / image_sha[:2] / f"{image_sha}.safetensors"

    def get(self, image_sha: str) -> tuple[torch.Tensor, dict[str, str]] | None:
        path = self._path(image_sha)
        if not path.exists():
            self.misses += 1
            return None
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
            feats = tensors["features"]
            if meta.get("sha256") != _tensor_digest(feats):
                raise ValueError("checksum mismatch")
        except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as exc:
            warnings.warn(f"cache entry {path} is corrupt ({exc}); recomputing it", stacklevel=2)
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return feats, meta

    # -- the record of one image's map: features, the grid they lie on, the load size ------------
    def has(self, image_sha: str) -> bool:
        return self._path(image_sha).exists()

    def put_map(self, image_sha: str, features: torch.Tensor, grid, load_hw: tuple[int, int], image: str) -> None:
        """Store a C×h×w map with where its cells lie (:class:`~corrbench.FeatureGrid`) and its load size."""
        meta = {"grid": ",".join(repr(v) for v in (grid.stride_x, grid.stride_y, grid.offset_x, grid.offset_y)),
                "load_hw": f"{load_hw[0]},{load_hw[1]}", "image": image}
        self.put(image_sha, features, meta)

    def get_map(self, image_sha: str):
        """``(features, grid, load_hw)`` of an image, or None when absent (or corrupt: then it is removed)."""
        from .api import FeatureGrid

        hit = self.get(image_sha)
        if hit is None:
            return None
        feats, meta = hit
        grid = FeatureGrid(*(float(v) for v in meta["grid"].split(",")))
        load_hw = tuple(int(v) for v in meta["load_hw"].split(","))
        return feats, grid, load_hw

    # -- predictions: keyed by the readout's identity, the two images and the source points ---------
    def prediction_path(self, readout_key: str, source_sha: str, target_sha: str, points: torch.Tensor) -> Path:
        key = hashlib.sha256(f"{readout_key}|{source_sha}|{target_sha}|".encode()
                             + points.double().numpy().tobytes()).hexdigest()
        return self.dir / "predictions" / key[:2] / f"{key}.npy"

    def get_prediction(self, readout_key: str, source_sha: str, target_sha: str,
                       points: torch.Tensor) -> torch.Tensor | None:
        import numpy as np

        path = self.prediction_path(readout_key, source_sha, target_sha, points)
        try:
            pred = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None  # absent, or unreadable: recomputed and rewritten
        if pred.shape != (len(points), 2):
            return None
        return torch.from_numpy(pred)

    def put_prediction(self, readout_key: str, source_sha: str, target_sha: str, points: torch.Tensor,
                       pred: torch.Tensor) -> None:
        import io

        import numpy as np

        buf = io.BytesIO()
        np.save(buf, pred.detach().cpu().double().numpy(), allow_pickle=False)
        atomic_write_bytes(self.prediction_path(readout_key, source_sha, target_sha, points), buf.getvalue())

    def put(self, image_sha: str, features: torch.Tensor, meta: dict[str, str]) -> None:
        if not (self.dir / "config.json").exists():
            atomic_write_bytes(self.dir / "config.json",
                               json.dumps(self.identity, indent=2, sort_keys=True, default=str).encode())
        feats = features.detach().to("cpu").contiguous()
        meta = {**meta, "sha256": _tensor_digest(feats)}
        atomic_write_bytes(self._path(image_sha), save({"features": feats}, metadata=meta))


__all__ = ["FeatureCache", "atomic_write_bytes", "cache_summary", "clear_cache", "config_hash", "default_cache_dir"]
