"""AP-10K animal keypoints in the semantic-correspondence layout of GeoAware-SC (Zhang et al. 2024).

::

    ap-10k/
      ImageAnnotation/<family>/<species>/<id, 12 digits>.json    COCO annotation merged with its image record
      JPEGImages/<family>/<species>/<id>.jpg                      the parallel image
      PairAnnotation/<split dir>/<src id>-<trg id>:<species | family | all>.json
                                                                  {"src_json_path": ..., "trg_json_path": ...}

Split directories: ``test`` (intra-species), ``test_cross_species`` (``:<family>``),
``test_cross_family`` (``:all``) and the ``val`` equivalents; corrbench's split names use hyphens.
Pair files hold repository-relative paths (``data/ap-10k/ImageAnnotation/...``): corrbench keeps the
part from ``ImageAnnotation/`` on and resolves it against the dataset folder. Keypoints are a flat
list of 17 (x, y, v) with v ∈ {0, 2}; a pair keeps the keypoints visible in both images. ``bbox`` is
COCO ``[x, y, w, h]``; the target's becomes ``target_box = (x, y, x + w, y + h)``, the threshold base.

The layout is produced by GeoAware's ``prepare_ap10k.ipynb`` from the official AP-10K release and is
not distributed; ``corrbench data download ap-10k`` says how to build it, or with ``--url`` to a copy of
the release rebuilds an approximation of it (:mod:`corrbench_datasets.ap10k_build`).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from corrbench.api import Dataset, Pair
from corrbench.errors import DataError, MissingDataError

from . import _fields as F
from ._mirror import partners_from_names

AP10K_KEYPOINTS = ("L_Eye", "R_Eye", "Nose", "Neck", "Root of tail", "L_Shoulder", "L_Elbow", "L_F_Paw",
                   "R_Shoulder", "R_Elbow", "R_F_Paw", "L_Hip", "L_Knee", "L_B_Paw", "R_Hip", "R_Knee", "R_B_Paw")
SPLIT_DIRS = {"test": "test", "test-cross-species": "test_cross_species", "test-cross-family": "test_cross_family",
              "val": "val", "val-cross-species": "val_cross_species", "val-cross-family": "val_cross_family"}
AP10K_SOURCE = "https://github.com/AlexTheBad/AP-10K (Google Drive id 1-FNNGcdtAQRehYYkGY1y4wzFNg4iWNad)"
BUILD_HINT = ("the GeoAware-SC AP-10K pair layout is not distributed: download the official AP-10K release "
              f"({AP10K_SOURCE}), run prepare_ap10k.ipynb from github.com/Junyi42/GeoAware-SC, and pass "
              "--data-root .../ap-10k (the folder holding ImageAnnotation, JPEGImages and PairAnnotation)")


def rebase(root: Path, listed: str, where: str) -> Path:
    """``data/ap-10k/ImageAnnotation/a/b/c.json`` → ``root/ImageAnnotation/a/b/c.json``."""
    parts = PurePosixPath(str(listed).replace("\\", "/")).parts
    if "ImageAnnotation" not in parts or ".." in parts:
        raise DataError(f"{where}: path {listed!r} does not lead into an ImageAnnotation folder")
    return root.joinpath(*parts[parts.index("ImageAnnotation"):])


def read_image_annotation(path: Path) -> dict[str, Any]:
    """One per-image COCO record: keypoints (17 × 3), bbox (l, t, r, b), size (W, H), species, family."""
    data = F.load_json(path)
    if not isinstance(data, dict):
        raise F.fail(path, f"expected a JSON object, got {type(data).__name__}")
    flat = F.require(data, "keypoints", path)
    if not isinstance(flat, list) or len(flat) != 3 * len(AP10K_KEYPOINTS):
        raise F.fail(path, f"keypoints must be a flat list of {3 * len(AP10K_KEYPOINTS)} numbers (x, y, v) × 17, "
                           f"got {len(flat) if isinstance(flat, list) else type(flat).__name__}")
    kps = np.array([F.number(v, f"keypoints[{i}]", path) for i, v in enumerate(flat)], dtype=np.float64).reshape(-1, 3)
    bad_v = sorted({float(v) for v in kps[:, 2]} - {0.0, 1.0, 2.0})
    if bad_v:
        raise F.fail(path, f"keypoint visibility must be 0, 1 or 2, got {bad_v[0]:g}")
    bbox = F.require(data, "bbox", path)
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise F.fail(path, f"bbox must be COCO [x, y, w, h], got {bbox!r:.80}")
    x, y, w, h = (F.number(v, f"bbox[{i}]", path) for i, v in enumerate(bbox))
    if w <= 0 or h <= 0:
        raise F.fail(path, f"bbox {bbox!r} has no area (COCO [x, y, w, h] needs w > 0 and h > 0)")
    W = F.integer(F.require(data, "width", path), "width", path)
    H = F.integer(F.require(data, "height", path), "height", path)
    if W < 1 or H < 1:
        raise F.fail(path, f"width × height {W} × {H} is not a positive image size")
    return {"kps": kps, "box": (x, y, x + w, y + h), "size": (W, H),
            "species": data.get("name"), "family": data.get("supercategory")}


def pair_dir(root: Path, split: str) -> Path:
    return Path(root) / "PairAnnotation" / SPLIT_DIRS[split]


def iter_ap10k_pairs(root: Path, split: str, *, invalid, counts: dict[str, int]) -> Iterator[Pair]:
    """Pairs of ``PairAnnotation/<split dir>/*.json`` in sorted file-name order (as GeoAware globs them)."""
    root = Path(root)
    folder = pair_dir(root, split)
    if not folder.is_dir():
        raise MissingDataError(f"{folder}: AP-10K pair folder is missing ({BUILD_HINT})")
    counts.setdefault("invisible_dropped", 0)
    for path in sorted(folder.glob("*.json")):
        try:
            data = F.load_json(path)
            src_json = rebase(root, F.string(F.require(data, "src_json_path", path), "src_json_path", path), str(path))
            trg_json = rebase(root, F.string(F.require(data, "trg_json_path", path), "trg_json_path", path), str(path))
            src, trg = read_image_annotation(src_json), read_image_annotation(trg_json)
        except DataError as exc:
            invalid(str(exc), exc)
            continue
        both = (src["kps"][:, 2] > 0) & (trg["kps"][:, 2] > 0)
        counts["invisible_dropped"] += int((~both).sum())
        stem = path.stem
        category = stem.rpartition(":")[2] if ":" in stem else (trg["species"] or "")

        def image(p: Path) -> Path:
            rel = p.relative_to(root / "ImageAnnotation")
            return root / "JPEGImages" / rel.with_suffix(".jpg")

        meta: dict[str, Any] = {"keypoint_ids": [int(i) for i in np.flatnonzero(both)]}
        for side, rec in (("source", src), ("target", trg)):
            for key in ("species", "family"):
                if isinstance(rec[key], str):
                    meta[f"{side}_{key}"] = rec[key]
        yield Pair(id=stem, source=image(src_json), target=image(trg_json),
                   source_points=src["kps"][both, :2], target_points=trg["kps"][both, :2],
                   source_box=src["box"], target_box=trg["box"], category=category,
                   source_size=src["size"], target_size=trg["size"], metadata=meta)


class AP10KDataset(Dataset):
    """AP-10K in GeoAware-SC's pair layout: intra-species, cross-species and cross-family splits."""

    name = "ap-10k"
    description = ("AP-10K animals (GeoAware-SC pair layout): test (intra-species), test-cross-species, "
                   "test-cross-family and val equivalents; bbox = target COCO box")
    version = "1"
    splits = tuple(SPLIT_DIRS)
    default_split = "test"
    root_dirname = "ap-10k"
    verify_splits = ("test", "test-cross-species", "test-cross-family")
    licence = ("AP-10K is CC-BY-4.0 (cite the AP-10K paper); GeoAware-SC's pair files come from its notebook, "
               "whose repository states no licence.")
    how_to_get = f"Build it yourself: {BUILD_HINT}."

    def __init__(self, root=None, split=None, config=None, skip_invalid: bool = False):
        super().__init__(root, split, config, skip_invalid)
        self.counts: dict[str, int] = {}

    def prepare(self) -> None:
        super().prepare()
        if not pair_dir(self.root, self.split).is_dir():
            raise MissingDataError(f"{pair_dir(self.root, self.split)}: AP-10K pair folder is missing. "
                                   f"{self.how_to_get}")

    def iter_pairs(self) -> Iterator[Pair]:
        self.counts = {}
        yield from iter_ap10k_pairs(self.root, self.split, invalid=self.invalid, counts=self.counts)

    def protocol(self) -> dict[str, Any]:
        out = {"standard_norm": "bbox", "bbox_is": "target COCO bbox [x, y, w, h] -> (x, y, x + w, y + h)",
               "standard_alphas": [0.1, 0.05, 0.01], "visibility": "keypoints with v > 0 in both images",
               "pair_folder": f"PairAnnotation/{SPLIT_DIRS[self.split]}", **self.counts}
        built = self.root / ".corrbench" / "ap10k-build.json"
        if built.is_file():  # a corrbench rebuild, not the authors' files: say so in every result
            try:
                manifest = json.loads(built.read_text(encoding="utf-8"))
                out["layout_built_by_corrbench"] = {k: manifest.get(k) for k in ("rule", "seed", "version")}
            except (OSError, ValueError) as exc:
                out["layout_built_by_corrbench"] = f"unreadable {built}: {exc}"
        return out

    def mirror_partners(self, category: str) -> dict[str, str]:
        """L_*/R_* keypoints of every species (ids are the 0-based positions of :data:`AP10K_KEYPOINTS`)."""
        return partners_from_names({str(i): n for i, n in enumerate(AP10K_KEYPOINTS)})

    def info(self) -> dict[str, Any]:
        out = super().info()
        out.update(source=AP10K_SOURCE, licence=self.licence, keypoints=list(AP10K_KEYPOINTS))
        out["pairs"] = {s: (len(list(pair_dir(self.root, s).glob("*.json"))) if pair_dir(self.root, s).is_dir()
                            else None) for s in self.splits}
        return out

    def verify_layout(self) -> dict[str, Any]:
        root = self.root
        if not root.is_dir():
            return {"problems": [f"{root}: dataset root does not exist. {self.how_to_get}"], "counts": {}, "notes": []}
        problems = [f"{root / d}: folder is missing" for d in ("ImageAnnotation", "JPEGImages", "PairAnnotation")
                    if not (root / d).is_dir()]
        counts = {s: len(list(pair_dir(root, s).glob("*.json"))) for s in self.splits if pair_dir(root, s).is_dir()}
        notes = [f"{pair_dir(root, s)}: split {s} is not present" for s in self.splits if s not in counts]
        return {"problems": problems, "counts": counts, "notes": notes}

    def download(self, url: str | None = None, sha256: str | None = None, keep_archive: bool = False,
                 progress: bool = True) -> dict[str, Any]:
        """With ``--url`` (a copy of the official ``ap-10k.zip``): fetch it and build an approximate layout
        (ap10k_build.py). Without: explain how to get the data; the release sits on Google Drive."""
        import os

        url = url or os.environ.get("CORRBENCH_AP10K_URL")
        if not url:
            raise MissingDataError(f"ap-10k cannot be downloaded by corrbench: {BUILD_HINT}; or pass --url to a "
                                   "copy of the official ap-10k.zip to build an approximate layout "
                                   "(docs/datasets.md#ap-10k)")
        if self.root.exists():
            return {"status": "present", "root": str(self.root)}
        import shutil
        import tempfile
        from urllib.parse import urlparse

        from corrbench.download import fetch, safe_extract, sha256_file

        from .ap10k_build import build_layout, find_release

        downloads = self.root.parent / ".corrbench-downloads"
        archive = fetch(url, downloads / (Path(urlparse(url).path).name or "ap-10k.zip"), sha256=sha256,
                        progress=progress)
        digest = sha256 or sha256_file(archive)
        work = Path(tempfile.mkdtemp(prefix=".ap-10k.release-", dir=self.root.parent))
        try:
            safe_extract(archive, work)
            manifest = build_layout(find_release(work), self.root)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if not keep_archive:
            archive.unlink()
            archive.with_name(archive.name + ".lock").unlink(missing_ok=True)
            try:
                downloads.rmdir()
            except OSError:  # other downloads are in progress there
                pass
        return {"status": "built (approximate split, not the authors')", "root": str(self.root), "sha256": digest,
                "pair_list": manifest["pairs"]}
