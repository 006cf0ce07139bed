"""CUB-200-2011's text files (images, classes, split, boxes, part locations), parsed with file:line errors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from corrbench.errors import DataError, MissingDataError

CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
EXPECTED = {"images": 11788, "classes": 200, "train": 5994, "test": 5794}  # unverified (docs/datasets.md#cub-200-2011)
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
