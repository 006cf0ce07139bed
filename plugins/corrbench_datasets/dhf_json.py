"""Pair lists in the Diffusion Hyperfeatures (DHF) annotation schema, with an image root.

The schema (docs/datasets.md#dhf-json-pair-lists) is one JSON array of objects::

    {"source_path": "cat/2008_000123.jpg", "target_path": "cat/2009_004567.jpg",
     "source_points": [[x, y], ...], "target_points": [[x, y], ...], "category": "cat",
     "source_bounding_box": [l, t, r, b], "target_bounding_box": [l, t, r, b]}

Paths are relative to the image root. Optional keys (``source_pose``, ``target_pose``, ``mirror``,
``viewpoint_variation``, ``scale_variation``, ``truncation``, ``occlusion``, and corrbench's own
``keypoint_ids``) go to ``Pair.metadata``. The ``dhf-json`` dataset lets users bring their own pairs:
``--dataset dhf-json --set dhf-json.pairs=FILE --data-root IMAGES``.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Sequence

from corrbench.api import Dataset, Pair
from corrbench.options import Option
from corrbench.errors import DataError, UsageError

from . import _fields as F
from ._fields import parse_categories

Invalid = Callable[[str, "BaseException | None"], None]
INT_META = ("mirror", "viewpoint_variation", "scale_variation", "truncation", "occlusion")
STR_META = ("source_pose", "target_pose")


def load_pair_list(path: Path) -> list[Any]:
    """The JSON array of a pair-list file (whole-file problems raise DataError naming the file)."""
    data = F.load_json(Path(path))
    if not isinstance(data, list):
        raise F.fail(path, f"a DHF pair list must be a JSON array of pair objects, got {type(data).__name__}")
    return data


def pair_id(index: int, source: str, target: str, category: str) -> str:
    """Stable id in the SPair style: ``<index:06d>-<src stem>-<trg stem>:<category>``."""
    return f"{index:06d}-{PurePosixPath(source).stem}-{PurePosixPath(target).stem}:{category}"


def parse_dhf_entry(obj: Any, index: int, path: Path, image_root: Path) -> Pair:
    """One DHF-schema object → :class:`Pair` (DataError naming ``path`` and the entry otherwise)."""
    where = f"{path}: entry {index}"
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    src = F.string(F.require(obj, "source_path", where), "source_path", where)
    trg = F.string(F.require(obj, "target_path", where), "target_path", where)
    if "category" in obj:
        category = F.string(obj["category"], "category", where)
    else:  # "<category>/<image>" paths carry it; bare names (test-6 style) need the key
        parts = PurePosixPath(src.replace("\\", "/")).parts
        category = parts[0] if len(parts) > 1 else ""
    src_pts = F.points(F.require(obj, "source_points", where), "source_points", where)
    trg_pts = F.points(F.require(obj, "target_points", where), "target_points", where)
    src_box = F.box(obj["source_bounding_box"], "source_bounding_box", where) if "source_bounding_box" in obj else None
    trg_box = F.box(F.require(obj, "target_bounding_box", where), "target_bounding_box", where)
    metadata: dict[str, Any] = {}
    for key in INT_META:
        if key in obj:
            metadata[key] = F.integer(obj[key], key, where)
    for key in STR_META:
        if key in obj:
            metadata[key] = F.string(obj[key], key, where)
    if "keypoint_ids" in obj:
        if len(src_pts) != len(trg_pts):
            raise DataError(f"{where}: {len(src_pts)} source_points but {len(trg_pts)} target_points")
        if len(src_pts) == 0:
            raise DataError(f"{where}: no keypoints (empty source_points and target_points)")
        metadata["keypoint_ids"] = F.id_list(obj["keypoint_ids"], len(src_pts), "keypoint_ids", where)
    return Pair(
        id=pair_id(index, src, trg, category),
        source=image_root / src,
        target=image_root / trg,
        source_points=src_pts,
        target_points=trg_pts,
        source_box=src_box,
        target_box=trg_box,
        category=category,
        metadata=metadata,
    )


def iter_dhf_pairs(path: Path, image_root: Path, *, categories: Sequence[str] | None = None,
                   invalid: Invalid, entries: list[Any] | None = None) -> Iterator[Pair]:
    """Yield the pairs of a DHF-schema list in file order; bad entries go to ``invalid(message, exc)``."""
    path, image_root = Path(path), Path(image_root)
    data = load_pair_list(path) if entries is None else entries
    wanted = set(categories) if categories else None
    for i, obj in enumerate(data):
        try:
            pair = parse_dhf_entry(obj, i, path, image_root)
        except DataError as exc:
            invalid(str(exc), exc)
            continue
        if wanted is None or pair.category in wanted:
            yield pair


class DhfJsonDataset(Dataset):
    """Any pair list in the DHF annotation schema, with images under ``--data-root``."""

    name = "dhf-json"
    description = "pairs from a DHF-schema JSON list (--set dhf-json.pairs=FILE --data-root IMAGES)"
    splits = ("all",)
    default_split = "all"
    default_config = {
        "pairs": Option(None, "path", "the JSON pair list (required); image paths are relative to --data-root"),
        "categories": Option(None, list, "only pairs of these categories; null = all", item=str),
    }
    root_dirname = "dhf-json"
    how_to_get = ("Give the list with --set dhf-json.pairs=FILE and the folder its paths are relative to "
                  "with --data-root IMAGES (default: the list's folder).")

    def __init__(self, root: str | os.PathLike | None = None, split: str | None = None,
                 config: dict[str, Any] | None = None, skip_invalid: bool = False):
        super().__init__(root, split, config, skip_invalid)
        pairs = self.config.get("pairs")
        self.pairs_file = Path(pairs).expanduser() if pairs else None
        if root is None and self.pairs_file is not None:
            self.root = self.pairs_file.parent
        self.categories = parse_categories(self.config.get("categories"), known=None, what="dhf-json.categories")

    def _need_file(self) -> Path:
        if self.pairs_file is None:
            raise UsageError("dataset 'dhf-json' needs a pair list: --set dhf-json.pairs=FILE "
                             "(a JSON array in the DHF annotation schema)")
        if not self.pairs_file.is_file():
            raise DataError(f"{self.pairs_file}: pair list does not exist")
        return self.pairs_file

    def prepare(self) -> None:
        self._need_file()
        super().prepare()

    def iter_pairs(self) -> Iterator[Pair]:
        yield from iter_dhf_pairs(self._need_file(), self.root, categories=self.categories, invalid=self.invalid)

    def protocol(self) -> dict[str, Any]:
        from corrbench.download import sha256_file

        out: dict[str, Any] = {"pair_list": str(self.pairs_file) if self.pairs_file else None,
                               "image_root": str(self.root), "threshold": "target bounding box"}
        if self.pairs_file is not None and self.pairs_file.is_file():
            out["pair_list_sha256"] = sha256_file(self.pairs_file)
        if self.categories:
            out["categories"] = list(self.categories)
        return out

    def info(self) -> dict[str, Any]:
        out = super().info()
        out["pair_list"] = str(self.pairs_file) if self.pairs_file else None
        if self.pairs_file is not None and self.pairs_file.is_file():
            try:
                data = load_pair_list(self.pairs_file)
                out["pairs"] = len(data)
                out["categories"] = sorted({e.get("category", "") for e in data if isinstance(e, dict)} - {""})
            except DataError as exc:
                out["error"] = str(exc)
        return out

    def verify_layout(self) -> dict[str, Any]:
        problems: list[str] = []
        counts: dict[str, Any] = {}
        try:
            data = load_pair_list(self._need_file())
            counts["pairs"] = len(data)
        except DataError as exc:
            problems.append(str(exc))
        if not self.root.is_dir():
            problems.append(f"{self.root}: image root does not exist")
        return {"problems": problems, "counts": counts, "notes": []}
