"""``cub.crop=bbox``: the ACSM-style 256 × 256 crop of each image a pair list uses, written once."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from corrbench.errors import DataError

CROP_MODES = ("none", "bbox")
CROP_SIZE = 256  # side of a cropped image, pixels
CROP_PAD = 0.05  # added on each side, as a fraction of the box's width (left/right) or height (top/bottom)
CROP_VERSION = "1"  # bump when the crop or its file layout changes: the folder name carries it
CROP_RULE = ("bbox padded 5 %, squared, edge-padded, resized to 256: each side of the bounding_boxes.txt box moved "
             "out by 5 % of the box's width (height); a square of side ceil(max padded side) centred on the box "
             "centre (origin rounded to whole pixels); pixels outside the image repeat the nearest edge pixel; "
             "resized to 256 x 256 with PIL BILINEAR; points and boxes become (p - origin) * 256 / side; "
             "keypoints outside [0, 256) in either image are dropped from the pair, pairs left without one dropped")


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
    from ..dhf_json import pair_id, parse_dhf_entry

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

    from .._archive import writable_dir

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

    from .._archive import atomic_write_bytes
    from ..dhf_json import load_pair_list

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
    from .._archive import atomic_write_bytes

    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write_bytes(path, data)


# ------------------------------------------------------------------------------------------
# The dataset
# ------------------------------------------------------------------------------------------
