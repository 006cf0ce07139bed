"""PF-WILLOW (Ham et al. 2016): 900 test pairs over 10 object subsets, 10 keypoints per image.

::

    PF-dataset/
      car(G)/  car(M)/  car(S)/  duck(S)/  motorbike(G)/ ...  winebottle(woC)/   <name>.png (+ .mat)
      test_pairs_pf.csv                       (or beside the folder)

``test_pairs_pf.csv`` (CNNGeometric) has a header row, then 42 positional columns: ``imageA``,
``imageB`` (paths starting ``PF-dataset/``), the ten x of A, the ten y of A, the ten x of B, the ten
y of B.

Threshold: α · the max side of the tight box around the *target* keypoints. Entries of −1 are
padding (the filler of fixed-length keypoint arrays), not points: a keypoint with −1 in either image
is dropped (and counted) before the box is computed. DHPF's threshold once took the box over its
padded array, which stretched it to (−1, −1) and inflated PCK (docs/datasets.md#pf-willow).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from corrbench.api import Box, Dataset, Pair
from corrbench.errors import DataError, MissingDataError

from . import _csv as C

PF_WILLOW_URL = "https://www.di.ens.fr/willow/research/proposalflow/dataset/PF-dataset.zip"
PF_WILLOW_CSV_URL = "http://www.di.ens.fr/willow/research/cnngeometric/other_resources/test_pairs_pf.csv"
CSV_NAME = "test_pairs_pf.csv"
N_COLUMNS = 42
PADDING = -1.0
SUBSETS = ("car(G)", "car(M)", "car(S)", "duck(S)", "motorbike(G)", "motorbike(M)", "motorbike(S)",
           "winebottle(M)", "winebottle(wC)", "winebottle(woC)")
EXPECTED_PAIRS = 900


def pair_csv(root: Path) -> Path:
    """``test_pairs_pf.csv`` inside the dataset folder, else beside it (where the download scripts put it),
    else DHPF's ``test_pairs.csv`` (the same columns)."""
    root = Path(root)
    for p in (root / CSV_NAME, root.parent / CSV_NAME, root / "test_pairs.csv"):
        if p.is_file():
            return p
    return root / CSV_NAME


def tight_box(points: np.ndarray) -> Box:
    """(min x, min y, max x, max y) of the points: the PF-WILLOW threshold base."""
    return (float(points[:, 0].min()), float(points[:, 1].min()),
            float(points[:, 0].max()), float(points[:, 1].max()))


def parse_row(row: list[str], where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source N×2, target N×2, keep mask) of one row; ``keep`` is False where either side is padding."""
    if len(row) < N_COLUMNS:
        raise DataError(f"{where}: {len(row)} columns, expected {N_COLUMNS} "
                        "(imageA, imageB, XA×10, YA×10, XB×10, YB×10)")
    vals = np.array([C.number(v, f"column {i + 1}", where) for i, v in enumerate(row[2:N_COLUMNS], start=2)],
                    dtype=np.float64)
    if not np.isfinite(vals).all():
        raise DataError(f"{where}: NaN keypoint coordinate")
    xa, ya, xb, yb = vals[0:10], vals[10:20], vals[20:30], vals[30:40]
    src, trg = np.stack([xa, ya], 1), np.stack([xb, yb], 1)
    keep = ~((src == PADDING).any(1) | (trg == PADDING).any(1))
    return src, trg, keep


def iter_pf_willow(root: Path, *, invalid, counts: dict[str, int]) -> Iterator[Pair]:
    """Yield the CSV's pairs with padding rows removed; ``counts["padding_dropped"]`` counts them."""
    root = Path(root)
    path = pair_csv(root)
    header, rows = C.read_rows(path, what="PF-WILLOW pair list")
    if len(header) < N_COLUMNS:
        raise DataError(f"{path}: header has {len(header)} columns, expected {N_COLUMNS}")
    counts.setdefault("padding_dropped", 0)
    for line, row in rows:
        where = f"{path}: line {line}"
        try:
            src_pts, trg_pts, keep = parse_row(row, where)
            src = C.listed_path(root, row[0], where)
            trg = C.listed_path(root, row[1], where)
            if not keep.any():
                raise DataError(f"{where}: every keypoint is padding (-1)")
        except DataError as exc:
            invalid(str(exc), exc)
            continue
        counts["padding_dropped"] += int((~keep).sum())
        src_pts, trg_pts = src_pts[keep], trg_pts[keep]
        category = src.parent.name
        yield Pair(id=f"{line - 1:04d}-{src.stem}-{trg.stem}:{category}", source=src, target=trg,
                   source_points=src_pts, target_points=trg_pts,
                   source_box=tight_box(src_pts), target_box=tight_box(trg_pts), category=category,
                   metadata={"keypoint_ids": [int(i) for i in np.flatnonzero(keep)]})


class PFWillowDataset(Dataset):
    """PF-WILLOW: 900 test pairs; threshold = max side of the tight box around the target keypoints."""

    name = "pf-willow"
    description = ("PF-WILLOW: 900 test pairs, 10 subsets; bbox = tight box of the 10 target keypoints "
                   "(-1 padding dropped)")
    version = "1"
    splits = ("test",)
    default_split = "test"
    root_dirname = "PF-dataset"
    url = PF_WILLOW_URL
    csv_url = PF_WILLOW_CSV_URL
    sha256: str | None = None  # not published: nothing recorded, the download is unverified
    verify_splits = ("test",)
    licence = "No licence found: research use only, do not redistribute."
    how_to_get = ("Run `corrbench data download pf-willow`, or unpack "
                  f"{PF_WILLOW_URL}, put {PF_WILLOW_CSV_URL} inside it and pass --data-root .../PF-dataset.")

    def __init__(self, root=None, split=None, config=None, skip_invalid: bool = False):
        super().__init__(root, split, config, skip_invalid)
        self.counts: dict[str, int] = {}

    def prepare(self) -> None:
        super().prepare()
        if not pair_csv(self.root).is_file():
            raise MissingDataError(f"{self.root / CSV_NAME}: PF-WILLOW pair list is missing. {self.how_to_get}")

    def iter_pairs(self) -> Iterator[Pair]:
        self.counts = {}
        yield from iter_pf_willow(self.root, invalid=self.invalid, counts=self.counts)

    def protocol(self) -> dict[str, Any]:
        from corrbench.download import sha256_file

        path = pair_csv(self.root)
        out: dict[str, Any] = {
            "standard_norm": "bbox", "bbox_is": "tight box of the target keypoints",
            "standard_alphas": [0.05, 0.1, 0.15],
            "padding": "entries of -1 are padding: such keypoints are dropped before the box is computed",
            "pair_list": str(path), **self.counts,
        }
        if path.is_file():
            out["pair_list_sha256"] = sha256_file(path)
        return out

    def mirror_partners(self, category: str) -> dict[str, str]:
        return {}  # the ten PF-WILLOW keypoints have no published names

    def info(self) -> dict[str, Any]:
        out = super().info()
        out.update(source=self.url, pair_list=self.csv_url, licence=self.licence, sha256="not recorded (unverified)")
        try:
            _, rows = C.read_rows(pair_csv(self.root), what="pair list")
            out["pairs"] = {"test": sum(1 for _ in rows)}
        except DataError:
            out["pairs"] = {"test": None}
        return out

    def verify_layout(self) -> dict[str, Any]:
        root = self.root
        if not root.is_dir():
            return {"problems": [f"{root}: dataset root does not exist. {self.how_to_get}"], "counts": {}, "notes": []}
        problems: list[str] = []
        notes: list[str] = []
        counts: dict[str, Any] = {"subsets": sum(1 for s in SUBSETS if (root / s).is_dir())}
        if counts["subsets"] != len(SUBSETS):
            notes.append(f"{counts['subsets']} of the {len(SUBSETS)} subset folders are present")
        try:
            _, rows = C.read_rows(pair_csv(root), what="PF-WILLOW pair list")
            counts["test"] = sum(1 for _ in rows)
            if counts["test"] != EXPECTED_PAIRS:
                notes.append(f"test: {counts['test']} pairs (published count {EXPECTED_PAIRS})")
        except DataError as exc:
            problems.append(str(exc))
        return {"problems": problems, "counts": counts, "notes": notes}

    def download(self, url: str | None = None, sha256: str | None = None, keep_archive: bool = False,
                 progress: bool = True) -> dict[str, Any]:
        """The image zip, then ``test_pairs_pf.csv`` into the dataset folder."""
        import os

        from corrbench.download import fetch

        from ._archive import download_archive_dataset

        result = download_archive_dataset(
            url=url or os.environ.get("CORRBENCH_PF_WILLOW_URL") or self.url, sha256=sha256 or self.sha256,
            target=self.root, inner="PF-dataset", keep_archive=keep_archive, progress=progress)
        if not pair_csv(self.root).is_file():
            src = os.environ.get("CORRBENCH_PF_WILLOW_CSV_URL") or self.csv_url
            fetch(src, self.root / CSV_NAME, sha256=None, progress=progress)
            result["pair_list"] = src
        return result
