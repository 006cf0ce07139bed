"""CUB-200-2011 (Wah et al. 2011) read from its native layout, with corrbench's frozen pair protocol.

::

    CUB_200_2011/
      images/<NNN.Class_Name>/<Image_Name>.jpg
      images.txt  image_class_labels.txt  train_test_split.txt  bounding_boxes.txt  classes.txt
      parts/parts.txt  parts/part_locs.txt

All ids are 1-based. Boxes are ``x y w h`` (converted to ``l t r b = x, y, x + w, y + h``); part
locations are used as written (the dataset does not say whether they are 0- or 1-based).

There is no published CUB pair list for the DHF paper, so corrbench defines one (paper-protocol.md
§11): of the split's images, every **ordered** pair of distinct images of one class with at least one
part visible in both, enumerated sorted by (source image id, target image id), shuffled with
``numpy.random.default_rng(seed).permutation`` (seed 0) and the first ``num_pairs`` (360) taken,
without replacement. Only mutually visible parts are kept, in part-id order; images are uncropped;
the PCK threshold is the target bounding box. The list is written once, atomically, as a DHF-schema
JSON under ``<root>/.corrbench/cub/`` (or the user cache when the dataset folder is read-only) with a
sidecar recording the rule and checksums, and reused on later runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from corrbench.api import Dataset, Pair
from corrbench.errors import DataError, MissingDataError, UsageError

CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
EXPECTED = {"images": 11788, "classes": 200, "train": 5994, "test": 5794}  # unverified (dataset-formats.md §3.1)
REQUIRED_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt",
                  "parts/part_locs.txt")
PROTOCOL_RULE = ("ordered pairs of distinct images of one class from the split, >= 1 mutually visible part, "
                 "sorted by (source image id, target image id), shuffled with numpy default_rng(seed)."
                 "permutation, first num_pairs taken; mutually visible parts only; uncropped images")
PROTOCOL_VERSION = "1"


# ------------------------------------------------------------------------------------------
# Text files
# ------------------------------------------------------------------------------------------
def _fail(path: Path, line: int | None, problem: str) -> DataError:
    return DataError(f"{path}{f':{line}' if line else ''}: {problem}")


def _read_lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise MissingDataError(f"{path}: file is missing (is {path.parent} a CUB_200_2011 folder?)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    return [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def _int(tok: str, path: Path, line: int, what: str, *, positive: bool = True) -> int:
    try:
        v = int(tok)
    except ValueError as exc:
        raise _fail(path, line, f"{what} must be an integer, got {tok!r:.40}") from exc
    if positive and v < 1:
        raise _fail(path, line, f"{what} must be a 1-based id, got {v}")
    return v


def _float(tok: str, path: Path, line: int, what: str) -> float:
    try:
        v = float(tok)
    except ValueError as exc:
        raise _fail(path, line, f"{what} must be a number, got {tok!r:.40}") from exc
    if not math.isfinite(v):
        raise _fail(path, line, f"{what} must be finite, got {tok!r}")
    return v


def read_id_text(path: Path) -> dict[int, str]:
    """``<id> <text>`` lines (images.txt, classes.txt, parts/parts.txt; the text may contain spaces)."""
    out: dict[int, str] = {}
    for n, line in _read_lines(path):
        parts = line.strip().split(None, 1)
        if len(parts) != 2:
            raise _fail(path, n, f"expected '<id> <name>', got {line.strip()!r:.60}")
        i = _int(parts[0], path, n, "id")
        if i in out:
            raise _fail(path, n, f"id {i} appears twice")
        out[i] = parts[1].strip()
    return out


def read_id_ints(path: Path, *, allowed: set[int] | None = None, positive: bool = True) -> dict[int, int]:
    """``<id> <int>`` lines (image_class_labels.txt, train_test_split.txt)."""
    out: dict[int, int] = {}
    for n, line in _read_lines(path):
        parts = line.split()
        if len(parts) != 2:
            raise _fail(path, n, f"expected '<image_id> <value>', got {line.strip()!r:.60}")
        i = _int(parts[0], path, n, "image id")
        v = _int(parts[1], path, n, "value", positive=positive)
        if allowed is not None and v not in allowed:
            raise _fail(path, n, f"value must be one of {sorted(allowed)}, got {v}")
        if i in out:
            raise _fail(path, n, f"image id {i} appears twice")
        out[i] = v
    return out


def read_bounding_boxes(path: Path) -> dict[int, tuple[float, float, float, float]]:
    """``<image_id> <x> <y> <width> <height>`` → (left, top, right, bottom)."""
    out: dict[int, tuple[float, float, float, float]] = {}
    for n, line in _read_lines(path):
        parts = line.split()
        if len(parts) != 5:
            raise _fail(path, n, f"expected '<image_id> <x> <y> <width> <height>', got {line.strip()!r:.60}")
        i = _int(parts[0], path, n, "image id")
        x, y, w, h = (_float(t, path, n, k) for t, k in zip(parts[1:], ("x", "y", "width", "height")))
        if w <= 0 or h <= 0:
            raise _fail(path, n, f"box of image {i} has width {w} and height {h}; both must be > 0")
        if i in out:
            raise _fail(path, n, f"image id {i} appears twice")
        out[i] = (x, y, x + w, y + h)
    return out


def read_part_locs(path: Path) -> dict[int, dict[int, tuple[float, float, bool]]]:
    """``<image_id> <part_id> <x> <y> <visible>`` → image → part → (x, y, visible)."""
    out: dict[int, dict[int, tuple[float, float, bool]]] = {}
    for n, line in _read_lines(path):
        parts = line.split()
        if len(parts) != 5:
            raise _fail(path, n, f"expected '<image_id> <part_id> <x> <y> <visible>', got {line.strip()!r:.60}")
        i = _int(parts[0], path, n, "image id")
        p = _int(parts[1], path, n, "part id")
        x, y = _float(parts[2], path, n, "x"), _float(parts[3], path, n, "y")
        vis = _int(parts[4], path, n, "visible", positive=False)
        if vis not in (0, 1):
            raise _fail(path, n, f"visible must be 0 or 1, got {vis}")
        locs = out.setdefault(i, {})
        if p in locs:
            raise _fail(path, n, f"part {p} of image {i} appears twice")
        locs[p] = (x, y, bool(vis))
    return out


@dataclass
class CubAnnotations:
    root: Path
    images: dict[int, str]  # id → path relative to images/
    labels: dict[int, int]
    is_train: dict[int, int]
    boxes: dict[int, tuple[float, float, float, float]]
    parts: dict[int, dict[int, tuple[float, float, bool]]]
    part_names: dict[int, str] = field(default_factory=dict)

    def category(self, image_id: int) -> str:
        """The class folder name (``001.Black_footed_Albatross``)."""
        rel = self.images[image_id].replace("\\", "/")
        return rel.split("/", 1)[0] if "/" in rel else f"class_{self.labels[image_id]:03d}"

    def split_ids(self, split: str) -> list[int]:
        flag = 1 if split == "train" else 0
        return sorted(i for i in self.images if self.is_train[i] == flag)


def read_cub(root: Path) -> CubAnnotations:
    """Read and cross-check the CUB text files (DataError naming the file and line otherwise)."""
    root = Path(root)
    images = read_id_text(root / "images.txt")
    for i, rel in images.items():
        if rel.startswith("/") or ".." in rel.replace("\\", "/").split("/"):
            raise _fail(root / "images.txt", None, f"image {i} path {rel!r} must be relative to images/")
    labels = read_id_ints(root / "image_class_labels.txt")
    is_train = read_id_ints(root / "train_test_split.txt", allowed={0, 1}, positive=False)
    boxes = read_bounding_boxes(root / "bounding_boxes.txt")
    parts = read_part_locs(root / "parts" / "part_locs.txt")
    part_names = read_id_text(root / "parts" / "parts.txt") if (root / "parts" / "parts.txt").is_file() else {}
    for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train),
                        ("bounding_boxes.txt", boxes), ("parts/part_locs.txt", parts)):
        missing = sorted(set(images) - set(table))
        if missing:
            raise DataError(f"{root / name}: no entry for {len(missing)} image id(s) of images.txt "
                            f"(first: {missing[:5]})")
        extra = sorted(set(table) - set(images))
        if extra:
            raise DataError(f"{root / name}: image id(s) {extra[:5]} are not in images.txt")
    return CubAnnotations(root, images, labels, is_train, boxes, parts, part_names)


# ------------------------------------------------------------------------------------------
# The frozen pair list
# ------------------------------------------------------------------------------------------
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

    from ._archive import atomic_write_bytes, user_cache, writable_dir

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
# The dataset
# ------------------------------------------------------------------------------------------
class CUBDataset(Dataset):
    """CUB-200-2011 bird parts: a frozen, seeded list of same-class pairs (default 360 test pairs)."""

    name = "cub"
    description = "CUB-200-2011: seeded list of same-class test pairs, 15 bird parts, uncropped images"
    version = "1"
    splits = ("test", "train")
    default_split = "test"
    default_config = {"pairs": None, "num_pairs": 360, "seed": 0, "crop": "none"}
    root_dirname = "CUB_200_2011"
    difficulty_flags = ()
    url = CUB_URL
    sha256: str | None = None  # not published; the download manifest records the one computed
    verify_splits = ("test",)
    licence = ("No licence stated; the bundled README asks for a citation. Images are Flickr photos (and overlap "
               "ImageNet): research use only, do not redistribute.")
    how_to_get = ("Run `corrbench data download cub` (from data.caltech.edu), or fetch "
                  f"{CUB_URL}, unpack it and pass --data-root .../CUB_200_2011 (or set $CORRBENCH_DATA to its "
                  "parent folder).")

    def __init__(self, root=None, split=None, config=None, skip_invalid: bool = False):
        super().__init__(root, split, config, skip_invalid)
        crop = str(self.config.get("crop") or "none")
        if crop != "none":
            raise UsageError(f"cub.crop={crop!r} is not implemented; only 'none' (uncropped images, the "
                             "protocol default) is supported")
        self.num_pairs = self._positive_int("num_pairs")
        seed = self.config.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise UsageError(f"cub.seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        pairs = self.config.get("pairs")
        self.pairs_file: Path | None = Path(pairs).expanduser() if pairs else None
        self._list: Path | None = None

    def _positive_int(self, key: str) -> int:
        v = self.config.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UsageError(f"cub.{key} must be a positive integer, got {v!r}")
        return v

    def prepare(self) -> None:
        super().prepare()
        if self.pairs_file is not None:
            if not self.pairs_file.is_file():
                raise DataError(f"{self.pairs_file}: pair list does not exist (given by cub.pairs)")
            self._list = self.pairs_file
        else:
            self._list = ensure_pair_list(self.root, self.split, num_pairs=self.num_pairs, seed=self.seed)

    def iter_pairs(self) -> Iterator[Pair]:
        from .dhf_json import iter_dhf_pairs

        if self._list is None:
            self.prepare()
        for pair in iter_dhf_pairs(self._list, self.root / "images", invalid=self.invalid):
            yield pair

    def protocol(self) -> dict[str, Any]:
        from corrbench.download import sha256_file

        out: dict[str, Any] = {"threshold": "target bounding box (bounding_boxes.txt, x y w h → l t r b)",
                               "crop": "none"}
        if self.pairs_file is not None:
            out["pair_list"] = str(self.pairs_file)
        else:
            out.update(rule=PROTOCOL_RULE, seed=self.seed, num_pairs=self.num_pairs, split=self.split,
                       protocol_version=PROTOCOL_VERSION)
            if self._list is not None:
                out["pair_list"] = str(self._list)
        if self._list is not None and self._list.is_file():
            out["pair_list_sha256"] = sha256_file(self._list)
        return out

    def info(self) -> dict[str, Any]:
        out = super().info()
        out.update(source=self.url, licence=self.licence, protocol=PROTOCOL_RULE,
                   num_pairs=self.num_pairs, seed=self.seed)
        try:
            ann = read_cub(self.root)
            out["images"] = len(ann.images)
            out["classes"] = len(set(ann.labels.values()))
            out["train"] = len(ann.split_ids("train"))
            out["test"] = len(ann.split_ids("test"))
        except DataError as exc:
            out["error"] = str(exc)
        return out

    def verify_layout(self) -> dict[str, Any]:
        root = self.root
        if not root.is_dir():
            return {"problems": [f"{root}: dataset root does not exist. {self.how_to_get}"], "counts": {},
                    "notes": []}
        problems = [f"{root / f}: file is missing" for f in REQUIRED_FILES if not (root / f).is_file()]
        if not (root / "images").is_dir():
            problems.append(f"{root / 'images'}: folder is missing")
        counts: dict[str, Any] = {}
        notes: list[str] = []
        if problems:
            return {"problems": problems, "counts": counts, "notes": notes}
        try:
            ann = read_cub(root)
        except DataError as exc:
            return {"problems": [str(exc)], "counts": counts, "notes": notes}
        counts = {"images": len(ann.images), "classes": len(set(ann.labels.values())),
                  "train": len(ann.split_ids("train")), "test": len(ann.split_ids("test"))}
        missing = [rel for rel in ann.images.values() if not (root / "images" / rel).is_file()]
        if missing:
            problems.append(f"{root / 'images'}: {len(missing)} image(s) of images.txt are missing: "
                            + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
        for key, value in counts.items():
            if value != EXPECTED[key]:
                notes.append(f"{value} {key} (the full dataset has {EXPECTED[key]})")
        return {"problems": problems, "counts": counts, "notes": notes}

    def download(self, url: str | None = None, sha256: str | None = None, keep_archive: bool = False,
                 progress: bool = True) -> dict[str, Any]:
        """Download and install CUB-200-2011 into ``self.root``."""
        import os

        from ._archive import download_archive_dataset

        return download_archive_dataset(
            url=url or os.environ.get("CORRBENCH_CUB_URL") or self.url, sha256=sha256 or self.sha256,
            target=self.root, inner="CUB_200_2011", keep_archive=keep_archive, progress=progress)
