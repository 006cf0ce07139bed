"""The 360-pair SPair-71k subsets published by the DHF authors, fetched on first use and checksummed.

The files are not committed here (the DHF repository has no licence). They are downloaded from the
repository's raw-file URL, verified against the sha256 in docs/datasets.md#dhf-360-pair-lists and cached under
``<SPair root>/.corrbench/dhf/`` (or ``$CORRBENCH_CACHE/annotations/dhf/`` when the dataset folder is
read-only). ``CORRBENCH_DHF_ANNOTATIONS_URL`` replaces the base URL (a mirror, or a test server).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from corrbench.download import ChecksumError, fetch, verify_sha256
from corrbench.errors import DataError

from ._archive import user_cache, writable_dir

DHF_ANNOTATIONS_URL = (
    "https://raw.githubusercontent.com/diffusion-hyperfeatures/diffusion_hyperfeatures/main/annotations"
)


@dataclass(frozen=True)
class DhfList:
    filename: str
    sha256: str
    spair_split: str  # the SPair split its pairs come from (used to join the pair metadata)
    n_pairs: int


DHF_LISTS = {
    "dhf-test-360": DhfList("spair_71k_test-360.json",
                            "2f93f0ca3755c46767eb5c5a32bd4c8c5733e83ce758669d37a9704d7682a698", "test", 360),
    "dhf-val-360": DhfList("spair_71k_val-360.json",
                           "8b9e036777397f67304ac7be68b4d8a89ccba2810a6f704a9995a7e13e64d0f8", "val", 360),
}


def annotations_url() -> str:
    return os.environ.get("CORRBENCH_DHF_ANNOTATIONS_URL", DHF_ANNOTATIONS_URL).rstrip("/")


def list_url(split: str) -> str:
    return f"{annotations_url()}/{DHF_LISTS[split].filename}"


def cache_dirs(spair_root: Path) -> list[Path]:
    return [Path(spair_root) / ".corrbench" / "dhf", user_cache() / "annotations" / "dhf"]


def resolve_dhf_list(split: str, spair_root: Path, *, local: Path | None = None, progress: bool = True) -> Path:
    """Path of the verified list for ``split`` (``dhf-test-360`` / ``dhf-val-360``).

    ``local`` (``--set spair.pairs=FILE``) must be a byte-identical copy of the published file; a
    different file is rejected, because the split name promises the paper's pairs.
    """
    spec = DHF_LISTS[split]
    if local is not None:
        local = Path(local).expanduser()
        if not local.is_file():
            raise DataError(f"{local}: pair list does not exist (given by spair.pairs)")
        try:
            verify_sha256(local, spec.sha256, what=str(local))
        except ChecksumError as exc:
            raise ChecksumError(f"{exc}. This is not the published {spec.filename}; to evaluate your own list use "
                                f"--dataset dhf-json --set dhf-json.pairs={local}") from exc
        return local
    for d in cache_dirs(spair_root):
        cached = d / spec.filename
        if cached.is_file():
            try:
                verify_sha256(cached, spec.sha256)
                return cached
            except ChecksumError:
                continue  # fetch() replaces it below
    target_dir = writable_dir(*cache_dirs(spair_root))
    try:
        return fetch(list_url(split), target_dir / spec.filename, sha256=spec.sha256, progress=progress)
    except ChecksumError:
        raise
    except DataError as exc:
        raise DataError(f"{exc}. Without network access, fetch {spec.filename} elsewhere and pass it with "
                        f"--set spair.pairs=FILE") from exc
