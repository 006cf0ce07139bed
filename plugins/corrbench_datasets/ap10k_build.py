"""Build GeoAware-SC's AP-10K pair layout from the official AP-10K release (an approximation).

GeoAware-SC makes its layout with a notebook (``prepare_ap10k.ipynb``); this module follows the same
steps, described in docs/datasets.md#ap-10k:

1. merge the split-1 train, test and val COCO files and keep the first annotation of each image;
2. write each annotation merged with its image record, species ``name`` and family ``supercategory``
   to ``ImageAnnotation/<family>/<species>/<image id, 12 digits>.json`` and copy the image beside it
   under ``JPEGImages``;
3. per species, drop crowd annotations and those with fewer than 3 labelled keypoints, then take the
   last 30 (in file-name order) as test, the 20 before as val (the rest is train, which gets no pairs);
4. pairs with at least 3 keypoints labelled in both images: all within-species combinations (in an
   order shuffled with the seed), up to 900 / 400 sampled cross-species pairs per family (test / val)
   and up to 30 / 20 cross-family pairs per pair of families.

It is **not** the authors' split: their notebook lists files in unsorted file-system order and drops
the ids of a crowd list kept in their repository, so membership and sampling differ. corrbench sorts
(reproducible on every machine) and uses the COCO ``iscrowd`` flag. ``.corrbench/ap10k-build.json``
records the rule, seed and counts.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from corrbench.errors import DataError
from corrbench.fsmode import apply_umask

from . import _fields as F

BUILD_VERSION = 1
SPLIT_FILES = ("ap10k-train-split1.json", "ap10k-test-split1.json", "ap10k-val-split1.json")
CROSS_SPECIES = {"test": 900, "val": 400}
CROSS_FAMILY = {"test": 30, "val": 20}
RULE = ("corrbench rebuild of GeoAware-SC's AP-10K layout: split-1 files merged, first annotation per image, "
        "crowd and <3-keypoint annotations dropped, per species (file-name order) last 30 test, 20 before val; "
        "pairs need >=3 mutually labelled keypoints; cross-species <=900/400 per family, cross-family <=30/20 "
        "per family pair, sampled with random.Random(seed). Not the authors' split.")


def find_release(folder: Path) -> Path:
    """The folder holding ``annotations/ap10k-*-split1.json`` (the release itself or one level below)."""
    for cand in [folder, *sorted(p for p in Path(folder).iterdir() if p.is_dir())]:
        if all((cand / "annotations" / f).is_file() for f in SPLIT_FILES):
            return cand
    raise DataError(f"{folder}: no annotations/{SPLIT_FILES[0]} (and test, val) here or one folder below; "
                    "is this the official AP-10K release?")


def _labelled(record: dict[str, Any]) -> list[bool]:
    kps = record["keypoints"]
    return [float(kps[3 * k + 2]) > 0 for k in range(len(kps) // 3)]


def _mutual(a: dict[str, Any], b: dict[str, Any]) -> int:
    return sum(x and y for x, y in zip(_labelled(a), _labelled(b)))


def build_layout(release: Path, target: Path, *, seed: int = 42, test_size: int = 30,
                 val_size: int = 20) -> dict[str, Any]:
    """Write the GeoAware-style layout for ``release`` into ``target`` (which must not exist)."""
    release, target = Path(release), Path(target)
    if target.exists():
        raise DataError(f"{target} already exists; remove it first to rebuild")
    annotations: list[dict[str, Any]] = []
    images: dict[Any, dict[str, Any]] = {}
    categories: dict[Any, dict[str, Any]] = {}
    for name in SPLIT_FILES:
        path = release / "annotations" / name
        data = F.load_json(path)
        for key in ("annotations", "images", "categories"):
            if not isinstance(F.require(data, key, path), list):
                raise F.fail(path, f"{key} must be a list")
        annotations.extend(a for a in data["annotations"] if isinstance(a, dict))
        images.update({i.get("id"): i for i in data["images"] if isinstance(i, dict)})
        if not categories:
            categories = {c.get("id"): c for c in data["categories"] if isinstance(c, dict)}
    seen: set[Any] = set()
    records: dict[tuple[str, str], list[dict[str, Any]]] = {}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        for ann in annotations:
            image_id, cat_id = ann.get("image_id"), ann.get("category_id")
            if image_id in seen or image_id not in images or cat_id not in categories:
                continue
            seen.add(image_id)
            rec = {**ann, **images[image_id], "name": categories[cat_id].get("name"),
                   "supercategory": categories[cat_id].get("supercategory")}
            family, species = rec["supercategory"], rec["name"]
            if not isinstance(family, str) or not isinstance(species, str) or "/" in family + species:
                raise DataError(f"{release / 'annotations'}: category {cat_id!r} has no usable name/supercategory")
            where = f"{release / 'annotations'}: image {image_id!r}"
            kps = F.require(rec, "keypoints", where)
            if not isinstance(kps, list) or len(kps) != 51:
                raise DataError(f"{where}: keypoints must be 51 numbers")
            stem = f"{int(F.integer(image_id, 'image_id', where)):012d}"
            ann_path = tmp / "ImageAnnotation" / family / species / f"{stem}.json"
            ann_path.parent.mkdir(parents=True, exist_ok=True)
            ann_path.write_text(json.dumps(rec), encoding="utf-8")
            src_img = release / "data" / str(rec.get("file_name", f"{stem}.jpg"))
            dst_img = tmp / "JPEGImages" / family / species / f"{stem}.jpg"
            dst_img.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copyfile(src_img, dst_img)
            except FileNotFoundError as exc:
                raise DataError(f"{src_img}: image of annotation {ann.get('id')!r} is missing") from exc
            rec["_path"] = f"data/ap-10k/ImageAnnotation/{family}/{species}/{stem}.json"
            records.setdefault((family, species), []).append(rec)

        split: dict[str, dict[tuple[str, str], list[dict[str, Any]]]] = {"test": {}, "val": {}}
        for key in sorted(records):
            kept = [r for r in sorted(records[key], key=lambda r: r["_path"])
                    if not r.get("iscrowd") and sum(_labelled(r)) >= 3]
            n_test = min(test_size, len(kept))
            n_val = min(val_size, max(0, len(kept) - n_test))
            split["test"][key] = kept[len(kept) - n_test:]
            split["val"][key] = kept[len(kept) - n_test - n_val:len(kept) - n_test]

        rng = random.Random(seed)
        counts: dict[str, int] = {}

        def write(folder: str, src: dict[str, Any], trg: dict[str, Any], label: str) -> None:
            name = f"{Path(src['_path']).stem}-{Path(trg['_path']).stem}:{label}.json"
            out = tmp / "PairAnnotation" / folder / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"src_json_path": src["_path"], "trg_json_path": trg["_path"]}))
            counts[folder] = counts.get(folder, 0) + 1

        for part in ("test", "val"):
            for (family, species), recs in split[part].items():
                recs = list(recs)
                rng.shuffle(recs)  # sets each pair's direction, as the notebook's shuffle does
                for a, b in itertools.combinations(recs, 2):
                    if _mutual(a, b) >= 3:
                        write(part, a, b, species)
            families = sorted({f for f, _ in split[part]})
            for family in families:
                species = [s for f, s in sorted(split[part]) if f == family]
                if len(species) < 2:
                    continue
                cand = [(a, b) for s1, s2 in itertools.combinations(species, 2)
                        for a, b in itertools.product(split[part][(family, s1)], split[part][(family, s2)])
                        if _mutual(a, b) >= 3]
                for a, b in rng.sample(cand, min(CROSS_SPECIES[part], len(cand))):
                    write(f"{part}_cross_species", a, b, family)
            for f1, f2 in itertools.combinations(families, 2):
                l1 = [r for (f, _), rs in sorted(split[part].items()) if f == f1 for r in rs]
                l2 = [r for (f, _), rs in sorted(split[part].items()) if f == f2 for r in rs]
                cand = [(a, b) for a, b in itertools.product(l1, l2) if _mutual(a, b) >= 3]
                for a, b in rng.sample(cand, min(CROSS_FAMILY[part], len(cand))):
                    write(f"{part}_cross_family", a, b, "all")
        manifest = {"rule": RULE, "seed": seed, "version": BUILD_VERSION, "test_size": test_size,
                    "val_size": val_size, "images": len(seen), "pairs": counts,
                    "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / ".corrbench").mkdir()
        (tmp / ".corrbench" / "ap10k-build.json").write_text(json.dumps(manifest, indent=2))
        apply_umask(tmp, directory=True)  # not mkdtemp's 0700: a shared data folder must stay readable
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest
