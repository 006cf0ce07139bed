"""corrbench's frozen CUB pair protocol: candidate pairs, the seeded list, and its sidecar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from corrbench.errors import DataError

from .annotations import PROTOCOL_RULE, PROTOCOL_VERSION, REQUIRED_FILES, CubAnnotations, read_cub


def candidate_pairs(ann: CubAnnotations, split: str = "test") -> list[tuple[int, int]]:
    """All ordered within-class pairs of distinct images with ≥ 1 mutually visible part, sorted."""
    ids = ann.split_ids(split)
    by_class: dict[int, list[int]] = {}
    for i in ids:
        by_class.setdefault(ann.labels[i], []).append(i)
    visible = {i: frozenset(p for p, (_, _, v) in ann.parts[i].items() if v) for i in ids}
    out = [(a, b) for members in by_class.values() for a in members for b in members
           if a != b and visible[a] & visible[b]]
    out.sort()
    return out


def make_pair_list(ann: CubAnnotations, split: str = "test", *, num_pairs: int = 360,
                   seed: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The protocol's DHF-schema entries, and how many candidate pairs there were."""
    cands = candidate_pairs(ann, split)
    order = np.random.default_rng(seed).permutation(len(cands))[:num_pairs]
    entries = []
    for k in order:
        a, b = cands[int(k)]
        mutual = sorted(set(p for p, (_, _, v) in ann.parts[a].items() if v)
                        & set(p for p, (_, _, v) in ann.parts[b].items() if v))
        entries.append({
            "source_path": ann.images[a], "target_path": ann.images[b],
            "source_points": [[ann.parts[a][p][0], ann.parts[a][p][1]] for p in mutual],
            "target_points": [[ann.parts[b][p][0], ann.parts[b][p][1]] for p in mutual],
            "category": ann.category(a),
            "source_bounding_box": list(ann.boxes[a]), "target_bounding_box": list(ann.boxes[b]),
            "keypoint_ids": mutual, "source_image_id": a, "target_image_id": b,
        })
    return entries, len(cands)


def pair_list_name(split: str, seed: int, num_pairs: int) -> str:
    return f"cub_pairs_{split}_seed{seed}_n{num_pairs}_v{PROTOCOL_VERSION}.json"


def ensure_pair_list(root: Path, split: str = "test", *, num_pairs: int = 360, seed: int = 0) -> Path:
    """Generate the frozen list once (atomic write, with a sidecar) and return its path."""
    from filelock import FileLock

    from corrbench.download import sha256_file

    from .._archive import atomic_write_bytes, user_cache, writable_dir

    name = pair_list_name(split, seed, num_pairs)
    dirs = [Path(root) / ".corrbench" / "cub", user_cache() / "annotations" / "cub"]
    for d in dirs:
        if (d / name).is_file():
            _check_sidecar(d / name)
            return d / name
    out_dir = writable_dir(*dirs)
    path = out_dir / name
    with FileLock(str(out_dir / f".{name}.lock")):
        if path.is_file():  # written by a concurrent run meanwhile
            return path
        ann = read_cub(root)
        entries, n_cand = make_pair_list(ann, split, num_pairs=num_pairs, seed=seed)
        if not entries:
            raise DataError(f"{root}: the {split} split has no pair of same-class images with a mutually "
                            "visible part; cannot build the CUB pair list")
        data = json.dumps(entries, indent=1).encode("utf-8")
        sources = {f: sha256_file(Path(root) / f) for f in REQUIRED_FILES}
        import hashlib

        sidecar = {"protocol_version": PROTOCOL_VERSION, "rule": PROTOCOL_RULE, "split": split, "seed": seed,
                   "num_pairs_requested": num_pairs, "num_pairs": len(entries), "candidate_pairs": n_cand,
                   "crop": "none", "sha256": hashlib.sha256(data).hexdigest(), "annotation_sha256": sources}
        atomic_write_bytes(path.with_name(path.name[:-5] + ".meta.json"),
                           json.dumps(sidecar, indent=2).encode("utf-8"))
        atomic_write_bytes(path, data)  # last: the list existing means both files are complete
    return path


def _check_sidecar(path: Path) -> None:
    from corrbench.download import sha256_file

    meta_path = path.with_name(path.name[:-5] + ".meta.json")
    try:
        meta = json.loads(meta_path.read_text())
        expected = meta["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{meta_path}: missing or malformed sidecar of {path.name}; delete both files to "
                        "regenerate the list") from exc
    if sha256_file(path) != expected:
        raise DataError(f"{path}: the generated pair list was modified (sha256 differs from {meta_path.name}); "
                        "delete both files to regenerate it, or pass your own list with --set cub.pairs=FILE")


# ------------------------------------------------------------------------------------------
# cub.crop=bbox: the ACSM-style 256 x 256 crop
# ------------------------------------------------------------------------------------------
