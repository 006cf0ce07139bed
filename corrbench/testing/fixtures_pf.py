"""Fixture writers for PF-PASCAL, PF-WILLOW, AP-10K (GeoAware layout) and SPair-U, in their exact layouts.

Like :mod:`corrbench.testing.datasets`: everything is generated from a seed, images have W ≠ H, and
each writer returns a record of what it wrote, which tests use as the independent ground truth. The
awkward cases of each format are always present: NaN keypoint rows in PF-PASCAL ``.mat`` files,
``-1`` padding entries in the PF-WILLOW CSV, invisible (``v = 0``) AP-10K keypoints.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .datasets import SIZES, SpairFixture, draw_image, write_json

PF_PASCAL_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                     "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
                     "tvmonitor")


def _half_pixel_points(rng: np.random.Generator, size: tuple[int, int], n: int) -> np.ndarray:
    """n points on a half-pixel grid inside the image (exact in decimal text and in float64)."""
    W, H = size
    return np.stack([rng.integers(8, 2 * (W - 4), n) / 2.0, rng.integers(8, 2 * (H - 4), n) / 2.0], 1)


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _join(values) -> str:
    return ";".join(f"{v:g}" for v in values)


# ------------------------------------------------------------------------------------------
# PF-PASCAL
# ------------------------------------------------------------------------------------------
@dataclass
class PascalImage:
    stem: str
    category: str
    size: tuple[int, int]  # (W, H)
    kps: np.ndarray  # K × 2 with NaN rows
    bbox: tuple[float, float, float, float]


@dataclass
class PascalFixture:
    root: Path
    images: dict[str, PascalImage] = field(default_factory=dict)
    #: split → rows as written: (source stem, target stem, category, flip or None, mutual row ids)
    rows: dict[str, list[tuple[str, str, str, int | None, list[int]]]] = field(default_factory=dict)


def write_pf_pascal_fixture(root: str | os.PathLike, *, classes: Sequence[str] = ("bicycle", "cat"),
                            images_per_class: int = 3, seed: int = 0,
                            keypoints: dict[str, int] | None = None) -> PascalFixture:
    """A tiny PF-PASCAL: JPEGs, ``.mat`` annotations with NaN rows, and the three NCNet CSVs."""
    import scipy.io

    root = Path(root)
    rng = np.random.default_rng(seed)
    fx = PascalFixture(root=root)
    k_of = keypoints or {"bicycle": 6, "cat": 8}
    n = 0
    for cat in classes:
        K = k_of.get(cat, 7)
        for i in range(images_per_class):
            size = SIZES[n % len(SIZES)]
            stem = f"{2007 + n % 5}_{n * 113 + 1000:06d}"
            kps = _half_pixel_points(rng, size, K)
            absent = rng.choice(K, size=1 + i % 2, replace=False)
            kps[absent] = np.nan  # absent keypoints are NaN rows
            vis = kps[np.isfinite(kps).all(1)]
            bbox = (float(max(1, vis[:, 0].min() - 2)), float(max(1, vis[:, 1].min() - 2)),
                    float(min(size[0], vis[:, 0].max() + 3)), float(min(size[1], vis[:, 1].max() + 3)))
            fx.images[stem] = PascalImage(stem, cat, size, kps, bbox)
            draw_image(root / "JPEGImages" / f"{stem}.jpg", size,
                       {int(r): tuple(kps[r]) for r in range(K) if np.isfinite(kps[r]).all()},
                       background=40 + (n * 37) % 160)
            (root / "Annotations" / cat).mkdir(parents=True, exist_ok=True)
            scipy.io.savemat(str(root / "Annotations" / cat / f"{stem}.mat"),
                             {"kps": kps, "bbox": np.array([bbox], dtype=np.float64)})
            n += 1

    def ordered_pairs(cat):
        stems = [s for s, r in fx.images.items() if r.category == cat]
        for a in stems:
            for b in stems:
                if a != b:
                    ka, kb = fx.images[a].kps, fx.images[b].kps
                    mutual = [int(r) for r in np.flatnonzero(np.isfinite(ka).all(1) & np.isfinite(kb).all(1))]
                    if mutual:
                        yield a, b, mutual

    prefix = "PF-dataset-PASCAL/JPEGImages/"
    test_rows, val_rows, train_rows = [], [], []
    fx.rows = {"test": [], "val": [], "train": []}
    for cat in classes:
        cls = PF_PASCAL_CLASSES.index(cat) + 1  # 1-based
        pairs = list(ordered_pairs(cat))
        for j, (a, b, mutual) in enumerate(pairs):
            ka, kb = fx.images[a].kps[mutual], fx.images[b].kps[mutual]
            if j % 3 != 2:  # two thirds test, the rest val (with flip 0) and train (flip 0 and 1)
                test_rows.append([prefix + a + ".jpg", prefix + b + ".jpg", cls, _join(ka[:, 0]), _join(ka[:, 1]),
                                  _join(kb[:, 0]), _join(kb[:, 1])])
                fx.rows["test"].append((a, b, cat, None, mutual))
            else:
                val_rows.append([prefix + a + ".jpg", prefix + b + ".jpg", cls, 0])
                fx.rows["val"].append((a, b, cat, 0, mutual))
                for flip in (0, 1):
                    train_rows.append([prefix + a + ".jpg", prefix + b + ".jpg", cls, flip])
                    fx.rows["train"].append((a, b, cat, flip, mutual))
    root.mkdir(parents=True, exist_ok=True)
    (root / "test_pairs_pf_pascal.csv").write_text(
        _csv_text(["source_image", "target_image", "class", "XA", "YA", "XB", "YB"], test_rows))
    (root / "val_pairs_pf_pascal.csv").write_text(
        _csv_text(["source_image", "target_image", "class", "flip"], val_rows))
    (root / "train_pairs_pf_pascal.csv").write_text(
        _csv_text(["source_image", "target_image", "class", "flip"], train_rows))
    return fx


# ------------------------------------------------------------------------------------------
# PF-WILLOW
# ------------------------------------------------------------------------------------------
@dataclass
class WillowFixture:
    root: Path
    #: "car(S)/Cars_000a" → (size, 10 × 2 points)
    images: dict[str, tuple[tuple[int, int], np.ndarray]] = field(default_factory=dict)
    #: rows as written: (source key, target key, source 10×2, target 10×2), padding entries -1
    rows: list[tuple[str, str, np.ndarray, np.ndarray]] = field(default_factory=list)


WILLOW_PREFIX = {"car(S)": "Cars", "duck(S)": "Duck", "motorbike(G)": "Motorbikes", "winebottle(M)": "Winebottles"}


def write_pf_willow_fixture(root: str | os.PathLike, *, subsets: Sequence[str] = ("car(S)", "duck(S)"),
                            images_per_subset: int = 3, seed: int = 0,
                            padded_rows: Sequence[tuple[int, str, int]] = ((0, "target", 3), (2, "source", 7),
                                                                           (4, "target", 0))) -> WillowFixture:
    """A tiny PF-WILLOW: PNGs and ``test_pairs_pf.csv`` (42 columns). ``padded_rows`` lists
    (row, side, keypoint) entries overwritten with the -1 padding."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    fx = WillowFixture(root=root)
    n = 0
    for sub in subsets:
        for i in range(images_per_subset):
            size = SIZES[(n + 1) % len(SIZES)]
            key = f"{sub}/{WILLOW_PREFIX.get(sub, 'Object')}_{i:03d}a"
            pts = _half_pixel_points(rng, size, 10)
            fx.images[key] = (size, pts)
            draw_image(root / f"{key}.png", size, {k: tuple(pts[k]) for k in range(10)},
                       background=30 + (n * 53) % 170, fmt="PNG")
            n += 1
    for sub in subsets:
        keys = [k for k in fx.images if k.startswith(sub + "/")]
        for a in keys:
            for b in keys:
                if a != b:
                    fx.rows.append((a, b, fx.images[a][1].copy(), fx.images[b][1].copy()))
    for row, side, k in padded_rows:
        if row < len(fx.rows):
            fx.rows[row][2 if side == "source" else 3][k] = -1.0
    header = (["imageA", "imageB"] + [f"XA{i}" for i in range(1, 11)] + [f"YA{i}" for i in range(1, 11)]
              + [f"XB{i}" for i in range(1, 11)] + [f"YB{i}" for i in range(1, 11)])
    rows = [[f"PF-dataset/{a}.png", f"PF-dataset/{b}.png", *(f"{v:g}" for v in pa[:, 0]), *(f"{v:g}" for v in pa[:, 1]),
             *(f"{v:g}" for v in pb[:, 0]), *(f"{v:g}" for v in pb[:, 1])] for a, b, pa, pb in fx.rows]
    (root / "test_pairs_pf.csv").write_text(_csv_text(header, rows))
    return fx


# ------------------------------------------------------------------------------------------
# AP-10K (GeoAware-SC layout)
# ------------------------------------------------------------------------------------------
@dataclass
class Ap10kImage:
    id: int
    family: str
    species: str
    size: tuple[int, int]
    keypoints: np.ndarray  # 17 × 3 (x, y, v), v ∈ {0, 2}
    bbox_xywh: tuple[float, float, float, float]

    @property
    def rel(self) -> str:
        return f"{self.family}/{self.species}/{self.id:012d}"


@dataclass
class Ap10kFixture:
    root: Path
    images: dict[int, Ap10kImage] = field(default_factory=dict)
    #: split dir → [(file stem, source id, target id)] in sorted file-name order
    pairs: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)


def write_ap10k_fixture(root: str | os.PathLike, *, species: dict[str, dict[str, int]] | None = None,
                        seed: int = 0, min_mutual: int = 3) -> Ap10kFixture:
    """A tiny AP-10K in GeoAware-SC's layout: per-image COCO JSONs, JPEGs and pair JSONs for the
    intra-species, cross-species and cross-family test splits (and an intra-species val split)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    fx = Ap10kFixture(root=root)
    species = species or {"Felidae": {"cat": 3, "king cheetah": 2}, "Canidae": {"dog": 2}}
    next_id = 1
    for family, by_species in species.items():
        for sp, count in by_species.items():
            for _ in range(count):
                size = SIZES[next_id % len(SIZES)]
                pts = _half_pixel_points(rng, size, 17).round()
                v = np.full(17, 2.0)
                v[rng.choice(17, size=int(rng.integers(2, 5)), replace=False)] = 0.0  # invisible: 0, 0, 0
                pts[v == 0] = 0.0
                kps = np.concatenate([pts, v[:, None]], 1)
                vis = pts[v > 0]
                x0, y0 = float(vis[:, 0].min() - 2), float(vis[:, 1].min() - 2)
                box = (x0, y0, float(vis[:, 0].max() + 3 - x0), float(vis[:, 1].max() + 2 - y0))
                img = Ap10kImage(next_id, family, sp, size, kps, box)
                fx.images[next_id] = img
                draw_image(root / "JPEGImages" / f"{img.rel}.jpg", size,
                           {k: tuple(pts[k]) for k in range(17) if v[k] > 0}, background=50 + (next_id * 31) % 150)
                write_json(root / "ImageAnnotation" / f"{img.rel}.json", {
                    "id": next_id, "image_id": next_id, "category_id": 1 + list(by_species).index(sp),
                    "keypoints": [float(x) if i % 3 < 2 else int(x) for i, x in enumerate(kps.reshape(-1))],
                    "num_keypoints": int((v > 0).sum()), "bbox": list(box), "area": box[2] * box[3],
                    "iscrowd": 0, "width": size[0], "height": size[1], "file_name": f"{next_id:012d}.jpg",
                    "license": 1, "background": 0, "name": sp, "supercategory": family,
                })
                next_id += 1

    def mutual(a: Ap10kImage, b: Ap10kImage) -> int:
        return int(((a.keypoints[:, 2] > 0) & (b.keypoints[:, 2] > 0)).sum())

    imgs = list(fx.images.values())
    splits: dict[str, list[tuple[str, int, int]]] = {"test": [], "test_cross_species": [], "test_cross_family": [],
                                                      "val": []}
    for i, a in enumerate(imgs):
        for b in imgs[i + 1:]:
            if mutual(a, b) < min_mutual:
                continue
            if a.species == b.species:
                splits["test"].append((f"{a.id}-{b.id}:{a.species}", a.id, b.id))
                splits["val"].append((f"{b.id}-{a.id}:{a.species}", b.id, a.id))
            elif a.family == b.family:
                splits["test_cross_species"].append((f"{a.id}-{b.id}:{a.family}", a.id, b.id))
            else:
                splits["test_cross_family"].append((f"{a.id}-{b.id}:all", a.id, b.id))
    for split, entries in splits.items():
        for stem, s, t in entries:
            write_json(root / "PairAnnotation" / split / f"{stem}.json", {
                "src_json_path": f"data/ap-10k/ImageAnnotation/{fx.images[s].rel}.json",
                "trg_json_path": f"data/ap-10k/ImageAnnotation/{fx.images[t].rel}.json"})
        fx.pairs[split] = sorted(entries, key=lambda e: f"{e[0]}.json")
    return fx


# ------------------------------------------------------------------------------------------
# SPair-U
# ------------------------------------------------------------------------------------------
@dataclass
class SpairUFixture:
    folder: Path  # the pair folder (…/test)
    pairs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def write_spair_u_fixture(spair: SpairFixture, *, where: str = "inside", seed: int = 1,
                          new_points: int = 4) -> SpairUFixture:
    """SPair-U annotations for the test pairs of an SPair fixture: new points on the same images.

    ``where="inside"``: ``<SPair root>/ExtraPairAnnotation/test`` and ``ExtraImageAnnotation/`` (the layout
    the Jamais Vu evaluation code reads); ``where="sibling"``: ``<SPair root>/../SPair-U/SPair-U/PairAnnotation/test``.
    """
    rng = np.random.default_rng(seed)
    root = Path(spair.root)
    base = root if where == "inside" else root.parent / "SPair-U" / "SPair-U"
    pair_dir, img_dir = ("ExtraPairAnnotation", "ExtraImageAnnotation") if where == "inside" else \
        ("PairAnnotation", "ImageAnnotation")
    new: dict[tuple[str, str], dict[int, list[int]]] = {}
    for (cat, name), rec in spair.images.items():
        if rec.split != "test":
            continue
        W, H = rec.size
        new[(cat, name)] = {k: [int(rng.integers(3, W - 3)), int(rng.integers(3, H - 3))]
                            for k in range(new_points) if rng.random() < 0.85 or k == 0}
        write_json(base / img_dir / cat / f"{name[:-4]}.json",
                   {"filename": name, "category": cat, "image_width": W, "image_height": H, "bndbox": rec.bbox,
                    "kps": {str(k): new[(cat, name)].get(k) for k in range(new_points)}})
    fx = SpairUFixture(folder=base / pair_dir / "test")
    for stem, obj in spair.pairs["test"]:
        a, b = new[(obj["category"], obj["src_imname"])], new[(obj["category"], obj["trg_imname"])]
        ids = sorted(set(a) & set(b))
        if not ids:
            continue
        out = {**obj, "src_kps": [a[k] for k in ids], "trg_kps": [b[k] for k in ids], "kps_ids": [str(k) for k in ids]}
        write_json(fx.folder / f"{stem}.json", out)
        fx.pairs.append((stem, out))
    fx.pairs.sort(key=lambda p: f"{p[0]}.json")
    return fx


# ------------------------------------------------------------------------------------------
# Helpers for end-to-end and download tests
# ------------------------------------------------------------------------------------------
def run_cli(args: Sequence[str], *, cwd: str | os.PathLike | None = None, timeout: float = 600) -> Any:
    """``python -m corrbench ARGS`` in a subprocess with one BLAS thread (a ``CompletedProcess``)."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "corrbench", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def run_and_load(dataset: str, root: Path, out: Path, *extra: str, method: str = "dsift") -> tuple[dict, list[dict]]:
    """``corrbench run -m METHOD --dataset DATASET --data-root ROOT``: (results.json, predictions.jsonl rows)."""
    import json

    proc = run_cli(["run", "-m", method, "--dataset", dataset, "--data-root", root, "--out", out,
                    "--cache-dir", out.parent / f"{out.name}-cache", "-q", *extra])
    if proc.returncode != 0:
        raise AssertionError(f"corrbench run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    results = json.loads((out / "results.json").read_text())
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if line.strip()]
    return results, preds


def pck_bounds(dist: Sequence[float], L: Sequence[float], alpha: float = 0.1, tol: float = 1e-6) -> tuple[float, float]:
    """PCK in % with ``dist ≤ α·L``, as (lowest, highest) over keypoints within ``tol`` of a tie, so a
    comparison with another implementation never hinges on the last bit of a float."""
    d, lim = np.asarray(dist, dtype=np.float64), alpha * np.asarray(L, dtype=np.float64)
    return 100.0 * float(np.mean(d <= lim - tol)), 100.0 * float(np.mean(d <= lim + tol))


def zip_folder(folder: Path, arcname: str) -> bytes:
    """The bytes of a zip holding ``folder`` as ``arcname/...`` (download tests)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                zf.write(p, f"{arcname}/{p.relative_to(folder).as_posix()}")
    return buf.getvalue()


def run_values(preds: Sequence[dict], order: Sequence[str], norm: str) -> tuple[np.ndarray, np.ndarray]:
    """The run's own per-keypoint distances and ``L_<norm>`` from predictions.jsonl, pairs in ``order``."""
    by_id = {p["pair"]: p for p in preds}
    d = np.concatenate([np.asarray(by_id[i]["distances"], dtype=np.float64) for i in order])
    L = np.concatenate([[float(by_id[i][f"L_{norm}"])] * len(by_id[i]["distances"]) for i in order])
    return d, L


# ------------------------------------------------------------------------------------------
# The official AP-10K release (input of corrbench's rebuild of the GeoAware layout)
# ------------------------------------------------------------------------------------------
@dataclass
class Ap10kReleaseFixture:
    root: Path
    #: image id → (family, species, keypoints 17×3, iscrowd)
    images: dict[int, tuple[str, str, np.ndarray, int]] = field(default_factory=dict)


def write_ap10k_release_fixture(root: str | os.PathLike, *,
                                species: dict[str, dict[str, int]] | None = None,
                                seed: int = 0) -> Ap10kReleaseFixture:
    """``ap-10k/annotations/ap10k-{train,test,val}-split1.json`` + ``data/<id>.jpg``, COCO style.

    Every image is listed in two split files (the release's splits overlap after merging), one image
    per species is a crowd annotation, and one has only two labelled keypoints.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    fx = Ap10kReleaseFixture(root=root)
    species = species or {"Felidae": {"cat": 5, "lion": 4}, "Canidae": {"dog": 4}}
    cats = [{"id": i + 1, "name": sp, "supercategory": fam}
            for i, (fam, sp) in enumerate((f, s) for f, by in species.items() for s in by)]
    cat_id = {(c["supercategory"], c["name"]): c["id"] for c in cats}
    images, anns = [], []
    next_id = 7
    for fam, by in species.items():
        for sp, count in by.items():
            for k in range(count):
                size = SIZES[next_id % len(SIZES)]
                pts = _half_pixel_points(rng, size, 17).round()
                v = np.full(17, 2.0)
                hidden = 15 if k == 1 else int(rng.integers(2, 6))  # image 1: only two labelled keypoints
                v[rng.choice(17, size=hidden, replace=False)] = 0.0
                pts[v == 0] = 0.0
                kps = np.concatenate([pts, v[:, None]], 1)
                crowd = int(k == 2)
                fx.images[next_id] = (fam, sp, kps, crowd)
                name = f"{next_id:012d}.jpg"
                draw_image(root / "data" / name, size, {j: tuple(pts[j]) for j in range(17) if v[j] > 0},
                           background=40 + (next_id * 23) % 170)
                vis = pts[v > 0]
                images.append({"id": next_id, "file_name": name, "width": size[0], "height": size[1],
                               "license": 1, "background": 0})
                anns.append({"id": 1000 + next_id, "image_id": next_id, "category_id": cat_id[(fam, sp)],
                             "keypoints": [float(x) if i % 3 < 2 else int(x) for i, x in enumerate(kps.reshape(-1))],
                             "num_keypoints": int((v > 0).sum()), "iscrowd": crowd,
                             "bbox": [float(vis[:, 0].min()), float(vis[:, 1].min()),
                                      float(np.ptp(vis[:, 0]) + 1), float(np.ptp(vis[:, 1]) + 1)], "area": 1.0})
                next_id += 1
    for i, name in enumerate(("ap10k-train-split1.json", "ap10k-test-split1.json", "ap10k-val-split1.json")):
        keep = [j for j in range(len(images)) if j % 3 != i]  # each image in two of the three files
        write_json(root / "annotations" / name, {"images": [images[j] for j in keep],
                                                 "annotations": [anns[j] for j in keep], "categories": cats})
    return fx
