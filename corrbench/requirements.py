"""What a method or a dataset needs before it can run: the :class:`Requirement` contract.

A :class:`corrbench.Descriptor` or :class:`corrbench.Dataset` describes its weights and data through
``requirements()``, a list of :class:`Requirement`: what it is, where it is (or would come from), whether
it is present, and how to get it. ``corrbench reproduce --dry-run`` prints them and a run stops before
any benchmark work while one is *missing* (docs/plugins.md, docs/reproduce.md).

``requirements()`` must be cheap and must never download, generate or load anything: it only looks
files up. The helpers below (Hugging Face cache lookup, offline mode, local files, checksummed files)
are what the built-in plugins use; third-party plugins may use them too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

#: statuses: on disk / fetched automatically on first use / needed and not obtainable here (blocks a run) /
#: nothing to fetch (random weights) / could not be checked (does not block; the setup step decides)
PRESENT, DOWNLOAD, MISSING, NOT_NEEDED, UNCHECKED = "present", "download", "missing", "not needed", "not checked"
STATUSES = (PRESENT, DOWNLOAD, MISSING, NOT_NEEDED, UNCHECKED)


@dataclass
class Requirement:
    """One thing a method or dataset needs.

    ``kind``: ``"weights"`` or ``"data"``; ``what``: a human name; ``where``: a path, ``hf://repo`` or URL;
    ``status``: one of :data:`STATUSES`; ``fix``: how to get it (shown unless present); ``rows``: filled
    in by ``corrbench reproduce`` with the table rows that need it; ``seconds``: a rough time to obtain it
    (download or generation), when known.
    """

    kind: str  # weights | data
    what: str
    where: str
    status: str
    fix: str = ""
    rows: list[str] = field(default_factory=list)
    seconds: float | None = None

    @property
    def blocking(self) -> bool:
        return self.status == MISSING


def offline() -> bool:
    """True when the Hugging Face hub is switched off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def fetchable() -> str:
    """Status of something not cached that corrbench would download itself: download, or missing offline."""
    return MISSING if offline() else DOWNLOAD


def hf_cached(repo: str, candidates: Sequence[str]) -> str | None:
    """Local path of the first of ``candidates`` in the Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # huggingface_hub comes with the sd / dino extras
        return None
    for name in candidates:
        try:
            found = try_to_load_from_cache(repo, name)
        except Exception:  # invalid repo ids and similar: simply not cached
            return None
        if isinstance(found, str):
            return found
    return None


def file_requirement(what: str, path: str, fix: str, kind: str = "weights") -> Requirement:
    """A local file: present, or missing with ``fix``."""
    p = Path(path).expanduser()
    return Requirement(kind, what, str(p), PRESENT if p.is_file() else MISSING,
                       "" if p.is_file() else f"no such file; {fix}")


def checked_file(what: str, path: Path, sha256: str, kind: str = "data") -> Requirement:
    """A local file that must have a published checksum."""
    from .download import sha256_file

    ok = path.is_file() and sha256_file(path) == sha256
    return Requirement(kind, what, str(path), PRESENT if ok else MISSING,
                       "" if ok else f"missing or not the published file (sha256 {sha256[:12]}…)")


def root_requirement(name: str, root: Path, how_to_get: str = "", marker: str = "") -> Requirement:
    """A dataset folder (``<name> dataset``), with an optional ``marker`` entry that must exist in it."""
    root = Path(root)
    if not root.exists() or (marker and not (root / marker).exists()):
        why = f"no {marker} in it" if root.exists() else "folder does not exist"
        return Requirement("data", f"{name} dataset", str(root), MISSING, f"{why}. {how_to_get}".strip())
    return Requirement("data", f"{name} dataset", str(root), PRESENT)


__all__ = ["DOWNLOAD", "MISSING", "NOT_NEEDED", "PRESENT", "STATUSES", "UNCHECKED", "Requirement", "checked_file",
           "fetchable", "file_requirement", "hf_cached", "offline", "root_requirement"]
