"""CUB-200-2011 (Wah et al. 2011) read from its native layout, with corrbench's frozen pair protocol.

::

    CUB_200_2011/
      images/<NNN.Class_Name>/<Image_Name>.jpg
      images.txt  image_class_labels.txt  train_test_split.txt  bounding_boxes.txt  classes.txt
      parts/parts.txt  parts/part_locs.txt

All ids are 1-based. Boxes are ``x y w h`` (converted to ``l t r b = x, y, x + w, y + h``); part
locations are used as written (the dataset does not say whether they are 0- or 1-based).

There is no published CUB pair list for the DHF paper, so corrbench defines one
(docs/datasets.md#cub-200-2011): of the split's images, every **ordered** pair of distinct images of one
class with at least one part visible in both, enumerated sorted by (source image id, target image id), shuffled with
``numpy.random.default_rng(seed).permutation`` (seed 0) and the first ``num_pairs`` (360) taken,
without replacement. Only mutually visible parts are kept, in part-id order; images are uncropped;
the PCK threshold is the target bounding box. The list is written once, atomically, as a DHF-schema
JSON under ``<root>/.corrbench/cub/`` (or the user cache when the dataset folder is read-only) with a
sidecar recording the rule and checksums, and reused on later runs.

``cub.crop=bbox`` (not the paper's protocol) adds the ACSM-style crop that ASIC's ``datasets/cub.py``
describes (docs/datasets.md#cub-crops) on top of that list: see
:func:`crop_geometry` and :func:`ensure_cropped`. Each image the list uses is cropped once to a 256 × 256
PNG and a second DHF-schema list with the transformed keypoints and boxes points at the crops; both live
in a folder beside the list (``<list stem>.crop-bbox-v1/``) and are reused on later runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from corrbench.api import Dataset, Pair
from corrbench.options import Option
from corrbench.errors import DataError, MissingDataError, UsageError
from corrbench.requirements import Requirement

CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
EXPECTED = {"images": 11788, "classes": 200, "train": 5994, "test": 5794}  # unverified (docs/datasets.md#cub-200-2011)
REQUIRED_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt",
                  "parts/part_locs.txt")
PROTOCOL_RULE = ("ordered pairs of distinct images of one class from the split, >= 1 mutually visible part, "
                 "sorted by (source image id, target image id), shuffled with numpy default_rng(seed)."
                 "permutation, first num_pairs taken; mutually visible parts only; uncropped images")
PROTOCOL_VERSION = "1"

CROP_MODES = ("none", "bbox")
CROP_SIZE = 256  # side of a cropped image, pixels
CROP_PAD = 0.05  # added on each side, as a fraction of the box's width (left/right) or height (top/bottom)
CROP_VERSION = "1"  # bump when the crop or its file layout changes: the folder name carries it
CROP_RULE = ("bbox padded 5 %, squared, edge-padded, resized to 256: each side of the bounding_boxes.txt box moved "
             "out by 5 % of the box's width (height); a square of side ceil(max padded side) centred on the box "
             "centre (origin rounded to whole pixels); pixels outside the image repeat the nearest edge pixel; "
             "resized to 256 x 256 with PIL BILINEAR; points and boxes become (p - origin) * 256 / side; "
             "keypoints outside [0, 256) in either image are dropped from the pair, pairs left without one dropped")


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
# cub.crop=bbox: the ACSM-style 256 x 256 crop
# ------------------------------------------------------------------------------------------
def crop_geometry(box: tuple[float, float, float, float], *, pad: float = CROP_PAD) -> tuple[int, int, int]:
    """The square crop of one image as ``(x0, y0, side)`` in whole pixels, from its (l, t, r, b) box.

    Each side of the box moves out by ``pad`` (5 %) of the box's width (left, right) or height (top,
    bottom), as ACSM's ``peturb_bbox`` does; the square's side is the larger padded side rounded up to
    a whole pixel, and it is centred on the box centre with its origin rounded (half up) to a whole
    pixel, so the crop is an exact pixel window and the point transform below is exact for it.
    """
    l, t, r, b = (float(v) for v in box)
    side = max(r - l, b - t) * (1 + 2 * pad)
    s = max(1, math.ceil(side - 1e-9))  # - 1e-9: an exact integer side must not become side + 1 by rounding noise
    x0 = math.floor((l + r) / 2 - s / 2 + 0.5)
    y0 = math.floor((t + b) / 2 - s / 2 + 0.5)
    return x0, y0, s


def crop_points(points: Any, geometry: tuple[int, int, int], size: int = CROP_SIZE) -> np.ndarray:
    """Points (N×2, x then y) of the original image → the cropped ``size`` × ``size`` image.

    Coordinates are continuous with the origin at the image's top-left corner: pixel (i, j) covers
    [i, i + 1) × [j, j + 1) and its centre is (i + 0.5, j + 0.5). That is the convention of
    ``corrbench.images.to_load`` (which scales points by W'/W with no half-pixel shift) and of PIL's
    resize (output pixel centre u + 0.5 samples the input at (u + 0.5) · side / size), so
    ``(p − origin) · size / side`` is exactly where the cropped image shows what the original showed at
    ``p``. Points are used as written (no −1 for CUB's unstated base), as in the uncropped path.
    """
    x0, y0, s = geometry
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (pts - np.array([x0, y0], dtype=np.float64)) * (size / s)


def crop_box(box: tuple[float, float, float, float], geometry: tuple[int, int, int],
             size: int = CROP_SIZE) -> list[float]:
    """A (l, t, r, b) box transformed like the points."""
    (l, t), (r, b) = crop_points([[box[0], box[1]], [box[2], box[3]]], geometry, size)
    return [float(l), float(t), float(r), float(b)]


def crop_image(image: Any, geometry: tuple[int, int, int], size: int = CROP_SIZE) -> Any:
    """The cropped ``size`` × ``size`` RGB PIL image: edge padding outside the image, then PIL BILINEAR."""
    from PIL import Image

    x0, y0, s = geometry
    arr = np.asarray(image.convert("RGB"))  # grey, CMYK, palette → RGB, as corrbench.images decodes them
    H, W = arr.shape[:2]
    # Edge padding: clipping the window's pixel indices into the image repeats the nearest edge pixel,
    # which is exactly np.pad(arr, ..., mode="edge") followed by slicing the window, without padding the
    # whole (possibly large) image; it also works when the window lies entirely outside the image.
    ys = np.clip(np.arange(y0, y0 + s), 0, H - 1)
    xs = np.clip(np.arange(x0, x0 + s), 0, W - 1)
    window = Image.fromarray(np.ascontiguousarray(arr[np.ix_(ys, xs)]))
    # PIL BILINEAR: centre-aligned (see crop_points); when shrinking it widens its triangle filter
    # (antialiased, like torchvision's antialias=True), which moves no content.
    return window.resize((size, size), Image.Resampling.BILINEAR)


def _png_bytes(image: Any) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")  # lossless
    return buf.getvalue()


def _sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@dataclass
class CropResult:
    """What :func:`ensure_cropped` made or found."""

    folder: Path
    pairs: Path  # the cropped DHF-schema list
    images: Path  # the image root its paths are relative to
    problems: list[str]  # entries of the source list that could not be cropped (bad entry, missing image)
    num_pairs: int
    dropped_pairs: int  # pairs left with no keypoint inside both crops
    dropped_keypoints: int  # keypoints outside [0, 256) in either crop (pairs dropped whole not included)
    images_written: int


def crop_folder_name(pair_list: Path, sha256: str | None = None) -> str:
    """``<list stem>.crop-bbox-v<N>`` (``<stem>-<sha12>.crop-bbox-v<N>`` for a user's list)."""
    stem = Path(pair_list).name[:-5] if Path(pair_list).name.endswith(".json") else Path(pair_list).name
    return f"{stem}{'-' + sha256[:12] if sha256 else ''}.crop-bbox-v{CROP_VERSION}"


def _safe_rel(rel: str) -> PurePosixPath | None:
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts or ":" in p.parts[0]:
        return None
    return p


def _plan_crops(entries: list[Any], pair_list: Path, image_root: Path
                ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], list[str], int, int]:
    """The cropped entries, the images to make (png path → source, box, crop), problems, drops."""
    from .dhf_json import pair_id, parse_dhf_entry

    out: list[dict[str, Any]] = []
    images: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    dropped_pairs = dropped_kps = 0
    for i, obj in enumerate(entries):
        try:
            pair = parse_dhf_entry(obj, i, pair_list, image_root)
        except DataError as exc:
            problems.append(str(exc))
            continue
        where = f"{pair_list}: entry {i}"
        if pair.source_box is None:
            problems.append(f"{where}: cub.crop=bbox needs a source_bounding_box")
            continue
        if len(pair.source_points) != len(pair.target_points) or len(pair.source_points) == 0:
            problems.append(f"pair {pair.id}: {'; '.join(pair.problems()) or 'keypoint lists do not match'}")
            continue
        if not (np.isfinite(pair.source_points).all() and np.isfinite(pair.target_points).all()):
            problems.append(f"pair {pair.id}: non-finite keypoint coordinates")
            continue
        pngs = []
        for side, key, box in (("source", "source_path", pair.source_box), ("target", "target_path", pair.target_box)):
            rel = _safe_rel(obj[key])
            if rel is None:
                problems.append(f"{where}: {key} {obj[key]!r} must be a relative path inside the image folder")
                break
            png = str(rel.with_suffix(".png"))
            geometry = crop_geometry(box)
            want = {"source": str(rel), "box": [float(v) for v in box], "crop": list(geometry)}
            have = images.get(png)
            if have is not None and (have["source"], have["box"]) != (want["source"], want["box"]):
                problems.append(f"{where}: {side} image {rel} has box {want['box']}, but an earlier entry gives "
                                f"{have['source']} the box {have['box']} (one crop per image)")
                break
            if not (image_root / rel).is_file():
                problems.append(f"pair {pair.id}: image {image_root / rel} is missing")
                break
            pngs.append((png, want, geometry))
        else:
            src_png, src_want, src_geo = pngs[0]
            trg_png, trg_want, trg_geo = pngs[1]
            sp = crop_points(pair.source_points, src_geo)
            tp = crop_points(pair.target_points, trg_geo)
            # A part outside the padded square (CUB parts may lie outside their box) is not in the cropped
            # image: drop it from both images of the pair; a pair left with no keypoint is dropped whole.
            keep = ((sp >= 0) & (sp < CROP_SIZE)).all(axis=1) & ((tp >= 0) & (tp < CROP_SIZE)).all(axis=1)
            if not keep.any():
                dropped_pairs += 1
                continue
            dropped_kps += int((~keep).sum())
            images.setdefault(src_png, src_want)
            images.setdefault(trg_png, trg_want)
            entry = dict(obj)
            entry.update(source_path=src_png, target_path=trg_png,
                         source_points=sp[keep].tolist(), target_points=tp[keep].tolist(),
                         source_bounding_box=crop_box(pair.source_box, src_geo),
                         target_bounding_box=crop_box(pair.target_box, trg_geo),
                         source_crop=list(src_geo), target_crop=list(trg_geo),
                         source_pair_id=pair_id(i, obj["source_path"], obj["target_path"], pair.category))
            if "category" not in obj:  # the source list's path-derived category, kept explicit
                entry["category"] = pair.category
            if "keypoint_ids" in obj:
                entry["keypoint_ids"] = [k for k, ok in zip(pair.metadata["keypoint_ids"], keep) if ok]
            out.append(entry)
    return out, images, problems, dropped_pairs, dropped_kps


def ensure_cropped(pair_list: Path, image_root: Path, candidates: list[Path], *,
                   folder_name: str | None = None) -> CropResult:
    """Crop every image ``pair_list`` uses and write the cropped list, once; verify and reuse them later.

    The folder ``<candidate>/<folder_name>/`` holds ``images/<same relative path>.png``, ``pairs.json``
    (DHF schema, paths relative to ``images/``) and ``crop.json`` (the rule, the source list's sha256
    and, per image, its source, box, crop window, the source file's size and mtime and the PNG's
    sha256). The first candidate folder that already holds a ``crop.json`` is used, else the first
    writable one. On every call the list is re-planned from ``pair_list`` (cheap) and every PNG whose
    file is missing, whose sha256 differs from ``crop.json``, or whose source changed is (re)written;
    nothing else is rewritten, so a complete folder is only read.
    """
    from filelock import FileLock

    from ._archive import writable_dir

    pair_list, image_root = Path(pair_list), Path(image_root)
    name = folder_name or crop_folder_name(pair_list)
    parent = next((d for d in candidates if (d / name / "crop.json").is_file()), None)
    try:
        parent = parent or writable_dir(*candidates)
    except OSError as exc:
        raise DataError(f"cannot write the cub.crop=bbox images: {exc}") from exc
    folder = parent / name
    try:
        with FileLock(str(parent / f".{name}.lock")):
            return _ensure_cropped_locked(pair_list, image_root, folder)
    except OSError as exc:
        raise DataError(f"{folder}: cannot write the cub.crop=bbox images: {exc} (make it writable or delete "
                        "it)") from exc


def _ensure_cropped_locked(pair_list: Path, image_root: Path, folder: Path) -> CropResult:
    from PIL import Image

    from corrbench.download import sha256_file

    from ._archive import atomic_write_bytes
    from .dhf_json import load_pair_list

    entries = load_pair_list(pair_list)
    list_sha = sha256_file(pair_list)
    cropped, plan, problems, dropped_pairs, dropped_kps = _plan_crops(entries, pair_list, image_root)
    manifest_path = folder / "crop.json"
    old: dict[str, Any] = {}
    try:
        loaded = json.loads(manifest_path.read_text(encoding="utf-8"))
        if isinstance(loaded, dict) and loaded.get("crop_version") == CROP_VERSION \
                and isinstance(loaded.get("images"), dict):
            old = loaded["images"]
    except (OSError, ValueError):
        pass  # absent or unreadable: every image is checked against nothing, so all are written
    records: dict[str, dict[str, Any]] = {}
    bad: dict[str, str] = {}  # png → why its source could not be cropped
    written = 0
    for png, want in sorted(plan.items()):
        src = image_root / want["source"]
        out = folder / "images" / png
        try:
            st = src.stat()
            rec = {**want, "source_bytes": st.st_size, "source_mtime_ns": st.st_mtime_ns}
            prev = old.get(png)
            if isinstance(prev, dict) and {k: prev.get(k) for k in rec} == rec and out.is_file() \
                    and sha256_file(out) == prev.get("sha256"):
                records[png] = prev  # verified: reused as is
                continue
            with Image.open(src) as im:
                im.load()
                data = _png_bytes(crop_image(im, tuple(want["crop"])))
        except FileNotFoundError:
            bad[png] = f"image {src} is missing"
            continue
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            bad[png] = f"image {src} is unreadable or truncated: {exc}"
            continue
        atomic_write_bytes(out, data)
        written += 1
        records[png] = {**rec, "sha256": _sha256_bytes(data)}
    if bad:  # drop the pairs that use an image that could not be cropped, one problem per pair
        kept = []
        for e in cropped:
            why = bad.get(e["source_path"]) or bad.get(e["target_path"])
            if why:
                problems.append(f"pair {e['source_pair_id']}: {why}")
            else:
                kept.append(e)
        cropped = kept
    data = json.dumps(cropped, indent=1).encode("utf-8")
    manifest = {"crop_version": CROP_VERSION, "rule": CROP_RULE, "size": CROP_SIZE, "pad_per_side": CROP_PAD,
                "resample": "PIL BILINEAR", "pair_list": pair_list.name, "pair_list_sha256": list_sha,
                "num_pairs": len(cropped), "dropped_pairs": dropped_pairs, "dropped_keypoints": dropped_kps,
                "pairs_sha256": _sha256_bytes(data), "images": records}
    _write_if_changed(manifest_path, json.dumps(manifest, indent=1).encode("utf-8"))
    pairs_path = folder / "pairs.json"
    _write_if_changed(pairs_path, data)  # last: a list only points at written images
    return CropResult(folder, pairs_path, folder / "images", problems, len(cropped), dropped_pairs, dropped_kps,
                      written)


def _write_if_changed(path: Path, data: bytes) -> None:
    """Atomically write ``data`` unless the file already holds exactly it (its mtime then stays)."""
    from ._archive import atomic_write_bytes

    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write_bytes(path, data)


# ------------------------------------------------------------------------------------------
# The dataset
# ------------------------------------------------------------------------------------------
class CUBDataset(Dataset):
    """CUB-200-2011 bird parts: a frozen, seeded list of same-class pairs (default 360 test pairs)."""

    name = "cub"
    description = ("CUB-200-2011: seeded list of same-class test pairs, 15 bird parts, uncropped images "
                   "(cub.crop=bbox: ACSM-style 256 x 256 crops)")
    version = "1"
    splits = ("test", "train")
    default_split = "test"
    default_config = {
        "pairs": Option(None, "path", "your own pair list (DHF JSON schema) instead of the generated one"),
        "num_pairs": Option(360, int, "pairs in the generated list", min=1),
        "seed": Option(0, int, "seed of the generated list", min=0),
        "crop": Option("none", str, "none = uncropped images, the protocol default; bbox = the box padded 5 %, "
                       "squared, edge-padded and resized to 256", choices=CROP_MODES),
    }
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
        crop = self.config.get("crop")
        crop = "none" if crop is None else crop
        if crop not in CROP_MODES:
            raise UsageError(f"cub.crop={crop!r} is not a crop mode; valid: 'none' (uncropped images, the protocol "
                             "default) or 'bbox' (box padded 5 %, squared, edge-padded, resized to 256)")
        self.crop: str = crop
        self.num_pairs = self._positive_int("num_pairs")
        seed = self.config.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise UsageError(f"cub.seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        pairs = self.config.get("pairs")
        self.pairs_file: Path | None = Path(pairs).expanduser() if pairs else None
        self._list: Path | None = None
        self._crop: CropResult | None = None

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
        if self.crop == "bbox" and self._crop is None:  # once per dataset object (the runner prepares twice)
            self._crop = self._ensure_cropped()

    def _ensure_cropped(self) -> CropResult:
        """The cropped images and list, beside the generated list (a user's list: under the dataset folder)."""
        from corrbench.download import sha256_file

        from ._archive import user_cache

        assert self._list is not None
        cache = user_cache() / "annotations" / "cub"
        if self.pairs_file is None:
            return ensure_cropped(self._list, self.root / "images", [self._list.parent, cache])
        # a user's list may sit anywhere (read-only, or another list with the same name): key it by content
        name = crop_folder_name(self._list, sha256_file(self._list))
        return ensure_cropped(self._list, self.root / "images", [self.root / ".corrbench" / "cub", cache],
                              folder_name=name)

    def iter_pairs(self) -> Iterator[Pair]:
        from .dhf_json import iter_dhf_pairs

        if self._list is None or (self.crop == "bbox" and self._crop is None):
            self.prepare()
        if self.crop == "bbox":
            assert self._crop is not None
            for message in self._crop.problems:  # entries of the source list that could not be cropped
                self.invalid(message)
            for pair in iter_dhf_pairs(self._crop.pairs, self._crop.images, invalid=self.invalid):
                # stated, so the runner checks the decoded crops; PCK@img then uses 256, the crop's side
                pair.source_size = pair.target_size = (CROP_SIZE, CROP_SIZE)
                yield pair
            return
        for pair in iter_dhf_pairs(self._list, self.root / "images", invalid=self.invalid):
            yield pair

    def requirements(self) -> list[Requirement]:
        """The CUB folder (with images.txt) and, when given, the ``cub.pairs`` file; the default list is generated."""
        from corrbench.requirements import MISSING, root_requirement

        found = root_requirement(self.name, self.root, self.how_to_get, marker="images.txt")
        if found.blocking:
            return [found]
        out = [found]
        if self.pairs_file is not None and not self.pairs_file.is_file():
            out.append(Requirement("data", "CUB pair list (cub.pairs)", str(self.pairs_file), MISSING, "file missing"))
        return out

    def protocol(self) -> dict[str, Any]:
        from corrbench.download import sha256_file

        out: dict[str, Any] = {"threshold": "target bounding box (bounding_boxes.txt, x y w h → l t r b)",
                               "crop": self.crop}
        if self.crop == "bbox":
            out.update(threshold=("target bounding box after the crop (bounding_boxes.txt box shifted by the crop "
                                  "origin and scaled by 256 / side); img: 256, the cropped image's side"),
                       crop_rule=CROP_RULE, crop_size=CROP_SIZE, crop_version=CROP_VERSION)
            if self._crop is not None:
                out.update(cropped_pair_list=str(self._crop.pairs), cropped_images=str(self._crop.images),
                           crop_dropped_pairs=self._crop.dropped_pairs,
                           crop_dropped_keypoints=self._crop.dropped_keypoints)
                if self._crop.pairs.is_file():
                    out["cropped_pair_list_sha256"] = sha256_file(self._crop.pairs)
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
                   num_pairs=self.num_pairs, seed=self.seed, crop=self.crop)
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
