"""PF-PASCAL (Ham et al., Proposal Flow) with the test/val/train split of Rocco et al. (NCNet).

::

    PF-dataset-PASCAL/
      JPEGImages/<voc_id>.jpg
      Annotations/<class>/<voc_id>.mat          kps: K × 2 (x, y), NaN rows = absent; bbox: 1 × 4 [x1 y1 x2 y2]
      test_pairs_pf_pascal.csv                  source_image,target_image,class,XA,YA,XB,YB
      val_pairs_pf_pascal.csv                   source_image,target_image,class,flip
      train_pairs_pf_pascal.csv (or train_pairs.csv)

CSV image paths start with the dataset folder's name (they are relative to its parent); ``class`` is
1-based over the 20 VOC classes in alphabetical order. Test keypoints are the CSV's semicolon-separated
``XA;…`` fields; val/train keypoints are the ``.mat`` rows annotated in both images. DHPF's repackaged
copy (``PF-PASCAL/`` with ``{trn,val,test}_pairs.csv``) is read too: a list without ``XA..YB``
columns takes every split's keypoints from the ``.mat`` rows, as DHPF's loader does.

The field's standard number is PCK against α · max(W, H) of the *target image* (corrbench's ``img``
norm); each pair's ``target_box`` is the target ``.mat`` bbox so the ``bbox`` norm is available too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from corrbench.api import Dataset, Pair
from corrbench.errors import DataError, MissingDataError

from . import _csv as C

PF_PASCAL_URL = "https://www.di.ens.fr/willow/research/proposalflow/dataset/PF-dataset-PASCAL.zip"
PF_PASCAL_CSV_URL = "http://www.di.ens.fr/willow/research/cnngeometric/other_resources/"
NCNET_TRAIN_CSV_URL = ("https://raw.githubusercontent.com/ignacio-rocco/ncnet/master/datasets/pf-pascal/"
                       "image_pairs/train_pairs.csv")
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
# pair-list file names tried in order for each split (NCNet/GeoAware names first, then DHPF's)
CSV_NAMES = {
    "test": ("test_pairs_pf_pascal.csv", "test_pairs.csv"),
    "val": ("val_pairs_pf_pascal.csv", "val_pairs.csv"),
    "train": ("train_pairs_pf_pascal.csv", "train_pairs.csv", "trn_pairs.csv"),
}
EXPECTED_PAIRS = {"test": 299, "val": 308, "train": 2940}  # published row counts (docs/datasets.md#pf-pascal)


def pair_csv(root: Path, split: str) -> Path:
    """The split's pair list under ``root`` (the first of :data:`CSV_NAMES` that exists)."""
    for name in CSV_NAMES[split]:
        if (root / name).is_file():
            return root / name
    return root / CSV_NAMES[split][0]


def read_mat(path: Path) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """``kps`` (K × 2, NaN rows kept) and ``bbox`` (l, t, r, b) of one annotation file."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: annotation file is missing") from exc
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError... on a damaged file
        raise DataError(f"{path}: cannot read the .mat annotation: {exc}") from exc
    for key in ("kps", "bbox"):
        if key not in mat:
            raise DataError(f"{path}: missing variable {key!r}")
    try:
        kps = np.asarray(mat["kps"], dtype=np.float64)
        bbox = np.asarray(mat["bbox"], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: kps and bbox must be numeric arrays: {exc}") from exc
    if kps.ndim != 2 or kps.shape[1] != 2:
        raise DataError(f"{path}: kps must be a K × 2 array of (x, y), got shape {kps.shape}")
    if bbox.shape != (4,) or not np.isfinite(bbox).all():
        raise DataError(f"{path}: bbox must be 4 finite numbers [x1 y1 x2 y2], got {bbox.tolist()}")
    l, t, r, b = (float(v) for v in bbox)
    if r <= l or b <= t:
        raise DataError(f"{path}: bbox {bbox.tolist()} is empty or inverted (need x2 > x1, y2 > y1)")
    return kps, (l, t, r, b)


def _coords(text: str, what: str, where: str) -> np.ndarray:
    fields = [f for f in text.split(";") if f.strip()]
    return np.array([C.number(f.strip(), what, where) for f in fields], dtype=np.float64)


def _category(text: str, where: str) -> str:
    try:
        k = int(text)
    except ValueError as exc:
        raise DataError(f"{where}: class must be an integer 1-{len(VOC_CLASSES)}, got {text!r:.40}") from exc
    if not 1 <= k <= len(VOC_CLASSES):
        raise DataError(f"{where}: class {k} is outside 1-{len(VOC_CLASSES)} (1-based VOC class index)")
    return VOC_CLASSES[k - 1]


def _ids_of(points: np.ndarray, kps: np.ndarray) -> list[int] | None:
    """The ``.mat`` row of each listed point (within half a pixel), or None when one does not match."""
    out = []
    for x, y in points:
        d = np.hypot(kps[:, 0] - x, kps[:, 1] - y)
        d[~np.isfinite(d)] = np.inf
        j = int(np.argmin(d)) if len(d) else -1
        if j < 0 or d[j] > 0.5:
            return None
        out.append(j)
    return out


def _columns(header: list[str], path: Path) -> tuple[bool, bool]:
    """(keypoints listed in XA..YB?, flip column?) from a pair list's header; the first three are fixed."""
    names = [h.lower() for h in header]
    if names[:3] != ["source_image", "target_image", "class"]:
        raise DataError(f"{path}: header {','.join(header)!r} does not start with source_image,target_image,class")
    return names[3:7] == ["xa", "ya", "xb", "yb"], names[3:4] == ["flip"]


def iter_pf_pascal(root: Path, split: str, *, invalid, counts: dict[str, int]) -> Iterator[Pair]:
    """Yield the pairs of ``split``'s CSV; a malformed row goes to ``invalid(message, exc)``.

    Keypoints come from the CSV's ``XA,YA,XB,YB`` columns when it has them (NCNet's test list), else
    from the ``.mat`` rows annotated in both images (val/train, and DHPF, which reads every split so).
    ``counts`` receives ``flipped_skipped`` (rows with ``flip = 1``, which ask for a mirrored source
    image; corrbench evaluates files as they are on disk) and ``nan_rows_dropped`` (``.mat`` rows absent
    from one of the two images).
    """
    root = Path(root)
    path = pair_csv(root, split)
    header, rows = C.read_rows(path, what=f"PF-PASCAL {split} pair list")
    listed, has_flip = _columns(header, path)
    n_fields = 7 if listed else 4 if has_flip else 3
    counts.setdefault("flipped_skipped", 0)
    counts.setdefault("nan_rows_dropped", 0)
    counts["keypoints_from"] = "csv" if listed else "mat"
    for line, row in rows:
        where = f"{path}: line {line}"
        try:
            if len(row) < n_fields:
                raise DataError(f"{where}: {len(row)} fields, expected {n_fields}")
            category = _category(row[2], where)
            src = C.listed_path(root, row[0], where, default_dir="JPEGImages")
            trg = C.listed_path(root, row[1], where, default_dir="JPEGImages")
            if listed:  # the row's own fields first, then the files it names
                xa, ya = _coords(row[3], "XA", where), _coords(row[4], "YA", where)
                xb, yb = _coords(row[5], "XB", where), _coords(row[6], "YB", where)
                if not len(xa) == len(ya) == len(xb) == len(yb):
                    raise DataError(f"{where}: XA, YA, XB, YB have {len(xa)}, {len(ya)}, {len(xb)}, {len(yb)} "
                                    "values; they must be equally long")
                src_pts, trg_pts = np.stack([xa, ya], 1), np.stack([xb, yb], 1)
                if not (np.isfinite(src_pts).all() and np.isfinite(trg_pts).all()):
                    raise DataError(f"{where}: NaN in the listed keypoints")
            if has_flip:
                if row[3] not in ("0", "1"):
                    raise DataError(f"{where}: flip must be 0 or 1, got {row[3]!r:.40}")
                if row[3] == "1":
                    counts["flipped_skipped"] += 1
                    continue
            try:
                src_kps, src_box = read_mat(root / "Annotations" / category / f"{src.stem}.mat")
                trg_kps, trg_box = read_mat(root / "Annotations" / category / f"{trg.stem}.mat")
            except DataError as exc:  # say which row needed the file
                raise DataError(f"{exc} (pair at {path.name} line {line})") from exc
            meta: dict[str, Any] = {}
            if listed:
                ids_s, ids_t = _ids_of(src_pts, src_kps), _ids_of(trg_pts, trg_kps)
                if ids_s is not None and ids_s == ids_t:
                    meta["keypoint_ids"] = ids_s
            else:
                if len(src_kps) != len(trg_kps):
                    raise DataError(f"{where}: {src.stem}.mat has {len(src_kps)} keypoint rows but {trg.stem}.mat "
                                    f"has {len(trg_kps)}; one class has one keypoint list")
                both = np.isfinite(src_kps).all(1) & np.isfinite(trg_kps).all(1)
                counts["nan_rows_dropped"] += int((~both).sum())
                src_pts, trg_pts = src_kps[both], trg_kps[both]
                meta["keypoint_ids"] = [int(i) for i in np.flatnonzero(both)]
        except DataError as exc:
            invalid(str(exc), exc)
            continue
        yield Pair(id=f"{line - 1:04d}-{src.stem}-{trg.stem}:{category}", source=src, target=trg,
                   source_points=src_pts, target_points=trg_pts, source_box=src_box, target_box=trg_box,
                   category=category, metadata=meta)


class PFPascalDataset(Dataset):
    """PF-PASCAL with the NCNet split: 299 test pairs, threshold α · max(W, H) of the target image."""

    name = "pf-pascal"
    description = "PF-PASCAL (NCNet split): test (299 pairs), val, train; standard norm img, alphas 0.05/0.1/0.15"
    version = "1"
    splits = ("test", "val", "train")
    default_split = "test"
    root_dirname = "PF-dataset-PASCAL"
    url = PF_PASCAL_URL
    csv_url = PF_PASCAL_CSV_URL
    train_csv_url = NCNET_TRAIN_CSV_URL
    sha256: str | None = None  # not published: nothing recorded, the download is unverified
    verify_splits = ("test",)
    licence = "No licence found. PASCAL VOC images (Flickr terms apply): research use only, do not redistribute."
    how_to_get = ("Run `corrbench data download pf-pascal` (images, .mat annotations and the NCNet pair lists), "
                  f"or unpack {PF_PASCAL_URL} and put test_pairs_pf_pascal.csv from {PF_PASCAL_CSV_URL} inside it; "
                  "pass --data-root .../PF-dataset-PASCAL.")

    def __init__(self, root=None, split=None, config=None, skip_invalid: bool = False):
        super().__init__(root, split, config, skip_invalid)
        self.counts: dict[str, int] = {}

    def prepare(self) -> None:
        super().prepare()
        path = pair_csv(self.root, self.split)
        if not path.is_file():
            raise MissingDataError(f"{path}: PF-PASCAL {self.split} pair list is missing. {self.how_to_get}")

    def iter_pairs(self) -> Iterator[Pair]:
        self.counts = {}
        yield from iter_pf_pascal(self.root, self.split, invalid=self.invalid, counts=self.counts)

    def protocol(self) -> dict[str, Any]:
        from corrbench.download import sha256_file

        path = pair_csv(self.root, self.split)
        out: dict[str, Any] = {
            "standard_norm": "img", "standard_alphas": [0.05, 0.1, 0.15],
            "threshold": "img: max(W, H) of the target image (the standard); bbox: target .mat bbox",
            "pair_list": str(path), **self.counts,
        }
        if path.is_file():
            out["pair_list_sha256"] = sha256_file(path)
        return out

    def mirror_partners(self, category: str) -> dict[str, str]:
        return {}  # the PF-PASCAL keypoint rows carry no published semantics

    def info(self) -> dict[str, Any]:
        out = super().info()
        out.update(source=self.url, pair_lists=self.csv_url, licence=self.licence, sha256="not recorded (unverified)")
        counts = {}
        for split in self.splits:
            try:
                _, rows = C.read_rows(pair_csv(self.root, split), what="pair list")
                counts[split] = sum(1 for _ in rows)
            except DataError:
                counts[split] = None
        out["pairs"] = counts
        return out

    def verify_layout(self) -> dict[str, Any]:
        root = self.root
        if not root.is_dir():
            return {"problems": [f"{root}: dataset root does not exist. {self.how_to_get}"], "counts": {}, "notes": []}
        problems = [f"{root / d}: folder is missing" for d in ("JPEGImages", "Annotations") if not (root / d).is_dir()]
        counts: dict[str, Any] = {}
        notes: list[str] = []
        for split in self.splits:
            path = pair_csv(root, split)
            if not path.is_file():
                (problems if split == "test" else notes).append(f"{path}: {split} pair list is missing")
                continue
            try:
                _, rows = C.read_rows(path, what="pair list")
            except DataError as exc:
                problems.append(str(exc))
                continue
            counts[split] = sum(1 for _ in rows)
            if counts[split] != EXPECTED_PAIRS[split]:
                notes.append(f"{split}: {counts[split]} rows (published count {EXPECTED_PAIRS[split]})")
        return {"problems": problems, "counts": counts, "notes": notes}

    def download(self, url: str | None = None, sha256: str | None = None, keep_archive: bool = False,
                 progress: bool = True) -> dict[str, Any]:
        """The image/annotation zip, then the three pair lists (kept when already present)."""
        import os

        from ._archive import download_archive_dataset
        from corrbench.download import fetch

        result = download_archive_dataset(
            url=url or os.environ.get("CORRBENCH_PF_PASCAL_URL") or self.url, sha256=sha256 or self.sha256,
            target=self.root, inner="PF-dataset-PASCAL", keep_archive=keep_archive, progress=progress)
        base = os.environ.get("CORRBENCH_PF_PASCAL_CSV_URL") or self.csv_url
        base = base if base.endswith("/") else base + "/"
        sources = {"test_pairs_pf_pascal.csv": base + "test_pairs_pf_pascal.csv",
                   "val_pairs_pf_pascal.csv": base + "val_pairs_pf_pascal.csv",
                   "train_pairs_pf_pascal.csv": os.environ.get("CORRBENCH_PF_PASCAL_TRAIN_CSV_URL")
                   or self.train_csv_url}
        lists = {}
        for name, src in sources.items():
            split = name.split("_", 1)[0]
            if pair_csv(self.root, split).is_file():
                lists[name] = "present"
                continue
            fetch(src, self.root / name, sha256=None, progress=progress)
            lists[name] = src
        result["pair_list"] = lists
        return result
