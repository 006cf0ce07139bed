"""SPair-71k (Min et al. 2019) read from its native layout.

::

    SPair-71k/
      JPEGImages/<category>/<imname>.jpg
      PairAnnotation/{trn,val,test}/<idx>-<src>-<trg>:<category>.json
      Layout/{large,small}/{trn,val,test}.txt      one pair stem per line

:func:`iter_spair_pairs` is the reusable reader (the embedded ``synthetic`` dataset, written in the
same layout, uses it too). :class:`SPairDataset` adds the splits, the category filter and the DHF
360-pair subsets (``dhf-test-360``, ``dhf-val-360``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from corrbench.api import Dataset, Pair
from corrbench.options import Option
from corrbench.errors import DataError, MissingDataError, UsageError
from corrbench.requirements import Requirement

from . import _fields as F
from ._fields import parse_categories

SPAIR_URL = "https://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz"
SPAIR_CATEGORIES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dog", "horse",
    "motorbike", "person", "pottedplant", "sheep", "train", "tvmonitor",
)
STANDARD_SPLITS = ("trn", "val", "test")
# Published counts (docs/datasets.md#spair-71k; unverified against the real files): `verify` compares with them.
EXPECTED_PAIRS = {"trn": 53340, "val": 5384, "test": 12234}
EXPECTED_IMAGES = 1800
FLAG_KEYS = ("viewpoint_variation", "scale_variation", "truncation", "occlusion", "mirror")

Invalid = Callable[[str, "BaseException | None"], None]


# ------------------------------------------------------------------------------------------
# The reader
# ------------------------------------------------------------------------------------------
def layout_file(root: Path, split: str, layout: str = "large") -> Path:
    return Path(root) / "Layout" / layout / f"{split}.txt"


def read_layout(root: Path, split: str, layout: str = "large") -> list[str]:
    """The pair stems listed in ``Layout/<layout>/<split>.txt`` (blank lines dropped)."""
    path = layout_file(root, split, layout)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise MissingDataError(f"{path}: SPair-71k pair list is missing (is {root} an SPair-71k folder?)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the pair list: {exc}") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def stem_category(stem: str) -> str | None:
    """``000250-2008_008607-2009_002388:aeroplane`` → ``aeroplane`` (None without a ``:`` suffix)."""
    head, sep, cat = stem.rpartition(":")
    return cat if sep and head else None


def parse_pair_annotation(data: Any, path: Path, images: Path, pair_id: str,
                          category_hint: str | None = None) -> Pair:
    """One SPair ``PairAnnotation`` object → :class:`Pair`; anything malformed raises DataError naming ``path``."""
    if not isinstance(data, dict):
        raise F.fail(path, f"expected a JSON object, got {type(data).__name__}")
    category = F.string(data["category"], "category", path) if "category" in data else category_hint
    if not category:
        raise F.fail(path, "missing key 'category' (and the file name has no ':<category>' suffix)")
    if category_hint and category != category_hint:
        raise F.fail(path, f"category {category!r} does not match the file name's {category_hint!r}")
    src_name = F.string(F.require(data, "src_imname", path), "src_imname", path)
    trg_name = F.string(F.require(data, "trg_imname", path), "trg_imname", path)
    for key, name in (("src_imname", src_name), ("trg_imname", trg_name)):
        if "/" in name or "\\" in name or name in (".", ".."):
            raise F.fail(path, f"{key} {name!r} must be a bare file name")
    src_kps = F.points(F.require(data, "src_kps", path), "src_kps", path)
    trg_kps = F.points(F.require(data, "trg_kps", path), "trg_kps", path)
    src_box = F.box(F.require(data, "src_bndbox", path), "src_bndbox", path)
    trg_box = F.box(F.require(data, "trg_bndbox", path), "trg_bndbox", path)
    src_size = F.size_wh(data["src_imsize"], "src_imsize", path) if "src_imsize" in data else None
    trg_size = F.size_wh(data["trg_imsize"], "trg_imsize", path) if "trg_imsize" in data else None

    metadata: dict[str, Any] = {}
    for key in FLAG_KEYS:
        if key in data:
            metadata[key] = F.integer(data[key], key, path)
    if "kps_ids" in data:
        if len(src_kps) != len(trg_kps):  # report the real problem rather than a kps_ids length mismatch
            raise F.fail(path, f"{len(src_kps)} src_kps but {len(trg_kps)} trg_kps")
        if len(src_kps) == 0:
            raise F.fail(path, "no keypoints (empty src_kps and trg_kps)")
        metadata["keypoint_ids"] = F.id_list(data["kps_ids"], len(src_kps), "kps_ids", path)
    for key, meta in (("src_pose", "source_pose"), ("trg_pose", "target_pose")):
        if key in data:
            metadata[meta] = F.string(data[key], key, path)
    return Pair(
        id=pair_id,
        source=images / category / src_name,
        target=images / category / trg_name,
        source_points=src_kps,
        target_points=trg_kps,
        source_box=src_box,
        target_box=trg_box,
        category=category,
        source_size=src_size,
        target_size=trg_size,
        metadata=metadata,
    )


def read_pair_file(root: Path, split: str, stem: str) -> Pair:
    """Read ``PairAnnotation/<split>/<stem>.json`` (raises DataError naming the file)."""
    root = Path(root)
    path = root / "PairAnnotation" / split / f"{stem}.json"
    return parse_pair_annotation(F.load_json(path), path, root / "JPEGImages", stem, stem_category(stem))


def iter_spair_pairs(root: Path, split: str, *, layout: str = "large", categories: Sequence[str] | None = None,
                     invalid: Invalid) -> Iterator[Pair]:
    """Yield the pairs of ``Layout/<layout>/<split>.txt`` in file order.

    A malformed or missing pair file is reported through ``invalid(message, exc)`` (which raises, or
    counts a skip) and reading goes on. A missing layout file raises :class:`MissingDataError`.
    Keypoint-count problems (different lengths, empty lists, points outside the image) are left to
    :meth:`Pair.problems`, which the dataset's ``pairs()`` applies.
    """
    wanted = set(categories) if categories else None
    for stem in read_layout(root, split, layout):
        hint = stem_category(stem)
        if wanted is not None and hint is not None and hint not in wanted:
            continue  # cheap filter on the file name: no need to open the JSON
        try:
            pair = read_pair_file(root, split, stem)
        except DataError as exc:
            invalid(str(exc), exc)
            continue
        if wanted is not None and pair.category not in wanted:
            continue
        yield pair


def spair_index(root: Path, split: str, layout: str = "large") -> dict[tuple[str, str, str], str]:
    """``(category, source stem, target stem) → pair stem`` from the layout file (names only, no JSON read)."""
    out: dict[tuple[str, str, str], str] = {}
    for stem in read_layout(root, split, layout):
        head, _, cat = stem.rpartition(":")
        parts = head.split("-")
        if len(parts) == 3 and cat:
            out[(cat, parts[1], parts[2])] = stem
    return out


# ------------------------------------------------------------------------------------------
# The dataset
# ------------------------------------------------------------------------------------------
class SPairDataset(Dataset):
    """SPair-71k from its native layout; also the DHF 360-pair subsets (``dhf-test-360``, ``dhf-val-360``)."""

    name = "spair"
    description = ("SPair-71k (18 categories, 70,958 pairs); splits trn, val, test, the DHF 360-pair subsets "
                   "and spair-u (SPair-U's unseen keypoints)")
    version = "1"
    splits = ("trn", "val", "test", "dhf-test-360", "dhf-val-360", "spair-u")
    default_split = "test"
    default_config = {
        "categories": Option(None, list, "only these categories, e.g. cat,dog; null = all", item=str),
        "layout": Option("large", str, "which SPair layout lists the pairs", choices=("large", "small")),
        "pairs": Option(None, "path", "a DHF pair-list file for the dhf-* splits, instead of the looked-up one"),
        "spair_u": Option(None, "path", "folder holding the SPair-U annotations (split spair-u); null = look "
                          "in the SPair folder, SPair-71k/SPair-U and a sibling SPair-U"),
    }
    root_dirname = "SPair-71k"
    difficulty_flags = ("viewpoint_variation", "scale_variation", "truncation", "occlusion")
    url = SPAIR_URL
    verify_splits = STANDARD_SPLITS  # what `corrbench data verify spair` reads in full
    sha256: str | None = None  # not published; the download manifest records the one computed
    licence = ("No open licence. Images and metadata come from PASCAL VOC and Flickr; their terms apply. "
               "Research use only; do not redistribute.")
    how_to_get = ("Run `corrbench data download spair` (from cvlab.postech.ac.kr), or fetch "
                  f"{SPAIR_URL}, unpack it and pass --data-root .../SPair-71k (or set $CORRBENCH_DATA to its "
                  "parent folder).")

    def __init__(self, root=None, split=None, config=None, skip_invalid: bool = False):
        super().__init__(root, split, config, skip_invalid)
        self.categories = parse_categories(self.config.get("categories"), SPAIR_CATEGORIES, "spair.categories")
        self.layout = str(self.config.get("layout") or "large")
        if self.layout not in ("large", "small"):
            raise UsageError(f"spair.layout must be 'large' or 'small', got {self.layout!r}")
        pairs = self.config.get("pairs")
        self.pairs_file: Path | None = Path(pairs).expanduser() if pairs else None
        spair_u = self.config.get("spair_u")
        self.spair_u_dir: Path | None = Path(spair_u).expanduser() if spair_u else None
        self._resolved_list: Path | None = None
        self._joined = 0

    # -- data --------------------------------------------------------------------------------
    def prepare(self) -> None:
        super().prepare()
        if self.split == "spair-u":
            from .spair_u import find_pair_folder

            self._resolved_list = find_pair_folder(self.root, self.spair_u_dir)
        elif self.split in _dhf_lists():
            from .dhf_lists import resolve_dhf_list

            self._resolved_list = resolve_dhf_list(self.split, self.root, local=self.pairs_file)
        elif self.pairs_file is not None:
            if not self.pairs_file.is_file():
                raise DataError(f"{self.pairs_file}: pair list does not exist (given by spair.pairs)")
            self._resolved_list = self.pairs_file

    def iter_pairs(self) -> Iterator[Pair]:
        if self.split == "spair-u":  # SPair-U: a folder of pair files, no layout list (spair_u.py)
            from .spair_u import find_pair_folder, iter_spair_u_pairs

            folder = self._resolved_list or find_pair_folder(self.root, self.spair_u_dir)
            yield from iter_spair_u_pairs(self.root, folder, categories=self.categories, invalid=self.invalid)
            return
        if self._resolved_list is None and (self.split in _dhf_lists() or self.pairs_file is not None):
            self.prepare()
        if self._resolved_list is None:
            yield from iter_spair_pairs(self.root, self.split, layout=self.layout, categories=self.categories,
                                        invalid=self.invalid)
            return
        yield from self._iter_list(self._resolved_list)

    def _metadata_split(self) -> str:
        lists = _dhf_lists()
        return lists[self.split].spair_split if self.split in lists else self.split

    def _iter_list(self, path: Path) -> Iterator[Pair]:
        """A DHF-schema list over ``JPEGImages``, joined with the SPair pair files for the metadata."""
        import warnings

        from .dhf_json import iter_dhf_pairs

        try:
            index = spair_index(self.root, self._metadata_split(), self.layout)
        except DataError as exc:
            warnings.warn(f"spair: no pair metadata for {path.name} ({exc})", stacklevel=2)
            index = {}
        self._joined = 0
        for pair in iter_dhf_pairs(path, self.root / "JPEGImages", categories=self.categories,
                                   invalid=self.invalid):
            stem = index.get((pair.category, pair.source.stem, pair.target.stem))
            if stem is not None:
                try:
                    ref = read_pair_file(self.root, self._metadata_split(), stem)
                except DataError as exc:  # the list is the authority; missing metadata is only a warning
                    warnings.warn(f"spair: pair {pair.id}: metadata not joined: {exc}", stacklevel=2)
                else:
                    self._join(pair, ref, stem)
            yield pair

    def _join(self, pair: Pair, ref: Pair, stem: str) -> None:
        import numpy as np

        meta = dict(ref.metadata)
        same_points = (ref.source_points.shape == pair.source_points.shape
                       and np.array_equal(ref.source_points, pair.source_points)
                       and np.array_equal(ref.target_points, pair.target_points))
        if not same_points:  # keypoint ids only describe rows that are the same points
            meta.pop("keypoint_ids", None)
        pair.metadata = {**meta, **pair.metadata, "spair_pair": stem}
        pair.source_size = pair.source_size or ref.source_size
        pair.target_size = pair.target_size or ref.target_size
        self._joined += 1

    # -- requirements (corrbench reproduce's plan; nothing is downloaded) --------------------------
    def requirements(self) -> list[Requirement]:
        """The SPair folder (with JPEGImages), and the split's DHF pair list (checksummed) or layout file."""
        from corrbench.requirements import DOWNLOAD, MISSING, checked_file, offline, root_requirement

        found = root_requirement(self.name, self.root, self.how_to_get, marker="JPEGImages")
        if found.blocking:
            return [found]
        out = [found]
        lists = _dhf_lists()
        if self.split in lists:
            from .dhf_lists import cache_dirs, list_url

            spec = lists[self.split]
            what = f"DHF pair list {spec.filename}"
            local = self.pairs_file or next((d / spec.filename for d in cache_dirs(self.root)
                                             if (d / spec.filename).is_file()), None)
            if local is not None:
                out.append(checked_file(what, Path(local), spec.sha256))
            else:
                out.append(Requirement("data", what, list_url(self.split), MISSING if offline() else DOWNLOAD,
                                       "fetched and checksummed on first use; offline, fetch it elsewhere and "
                                       "pass --set spair.pairs=FILE"))
        elif self.split == "spair-u":
            from .spair_u import find_pair_folder

            try:
                find_pair_folder(self.root, self.spair_u_dir)
            except DataError as exc:
                out.append(Requirement("data", "SPair-U annotations", str(self.spair_u_dir or self.root), MISSING,
                                       str(exc)))
        else:
            layout = self.root / "Layout" / self.layout / f"{self.split}.txt"
            if not layout.is_file():
                out.append(Requirement("data", f"SPair split {self.split}", str(layout), MISSING, "file missing"))
        return out

    def pair_counts(self) -> tuple[int, int] | None:
        """(pairs, images) of the DHF pair list once it is resolved (after prepare) or verified in the cache."""
        path = self._resolved_list
        if path is None and self.split in _dhf_lists():
            listed = [r for r in self.requirements() if r.what.startswith("DHF pair list")]
            if listed and listed[0].status == "present":
                path = Path(listed[0].where)
        if path is None:
            return None
        import json

        try:
            entries = json.loads(Path(path).read_text(encoding="utf-8"))
            images = {e["source_path"] for e in entries} | {e["target_path"] for e in entries}
            return len(entries), len(images)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # -- reporting ---------------------------------------------------------------------------
    def protocol(self) -> dict[str, Any]:
        out: dict[str, Any] = {"layout": self.layout, "threshold": "target bounding box (trg_bndbox)"}
        if self.categories:
            out["categories"] = list(self.categories)
        lists = _dhf_lists()
        if self.split == "spair-u":
            out.update(pair_folder=str(self._resolved_list), annotations="SPair-U (unseen keypoints)")
            return out
        if self.split in lists or self.pairs_file is not None:
            from corrbench.download import sha256_file

            path = self._resolved_list or self.pairs_file
            out["pair_list"] = str(path) if path else None
            if self.split in lists:
                out["pair_list_name"] = lists[self.split].filename
                from .dhf_lists import list_url

                out["pair_list_source"] = list_url(self.split)
            if path is not None and Path(path).is_file():
                out["pair_list_sha256"] = sha256_file(path)
            out["metadata_joined_from"] = f"PairAnnotation/{self._metadata_split()}"
            out["metadata_joined_pairs"] = self._joined
        else:
            out["pair_list"] = f"Layout/{self.layout}/{self.split}.txt"
        return out

    def mirror_partners(self, category: str) -> dict[str, str]:
        """SPair's left/right slot partners (spair_mirror.py); none for SPair-U's new, unnamed points."""
        if self.split == "spair-u":
            return {}
        from .spair_mirror import spair_partners

        return spair_partners(category)

    def info(self) -> dict[str, Any]:
        out = super().info()
        out.update(source=self.url, licence=self.licence, layout=self.layout,
                   difficulty_flags=list(self.difficulty_flags))
        counts = {}
        for split in STANDARD_SPLITS:
            try:
                counts[split] = len(read_layout(self.root, split, self.layout))
            except DataError:
                counts[split] = None
        out["pairs"] = counts
        out["dhf_lists"] = {s: {"file": d.filename, "sha256": d.sha256, "pairs": d.n_pairs}
                            for s, d in _dhf_lists().items()}
        return out

    def verify_layout(self) -> dict[str, Any]:
        """Layout and count check for ``corrbench data verify``: what is missing, what differs."""
        problems: list[str] = []
        notes: list[str] = []
        counts: dict[str, Any] = {}
        root = self.root
        if not root.is_dir():
            return {"problems": [f"{root}: dataset root does not exist. {self.how_to_get}"], "counts": {},
                    "notes": []}
        for sub in ("JPEGImages", "PairAnnotation", "Layout"):
            if not (root / sub).is_dir():
                problems.append(f"{root / sub}: folder is missing")
        if (root / "JPEGImages").is_dir():
            cats = sorted(p.name for p in (root / "JPEGImages").iterdir() if p.is_dir())
            n_img = sum(1 for c in cats for _ in (root / "JPEGImages" / c).glob("*.jpg"))
            counts["categories"], counts["images"] = len(cats), n_img
            missing = [c for c in SPAIR_CATEGORIES if c not in cats]
            if missing:
                notes.append(f"JPEGImages has no folder for {', '.join(missing)}")
            if n_img != EXPECTED_IMAGES:
                notes.append(f"{n_img} images (the full dataset has {EXPECTED_IMAGES})")
        for split in STANDARD_SPLITS:
            lf = layout_file(root, split, self.layout)
            pdir = root / "PairAnnotation" / split
            if not lf.is_file():
                problems.append(f"{lf}: pair list is missing")
                continue
            if not pdir.is_dir():
                problems.append(f"{pdir}: folder is missing")
                continue
            stems = read_layout(root, split, self.layout)
            present = {p.name[:-5] for p in pdir.glob("*.json")}
            absent = [s for s in stems if s not in present]
            counts[split] = len(stems)
            if absent:
                shown = ", ".join(f"{s}.json" for s in absent[:5])
                problems.append(f"{pdir}: {len(absent)} pair file(s) listed in {lf.name} are missing: {shown}"
                                + (" ..." if len(absent) > 5 else ""))
            if self.layout == "large" and len(stems) != EXPECTED_PAIRS[split]:
                notes.append(f"{split}: {len(stems)} pairs listed (published count {EXPECTED_PAIRS[split]})")
        return {"problems": problems, "counts": counts, "notes": notes}

    # -- download ----------------------------------------------------------------------------
    def download(self, url: str | None = None, sha256: str | None = None, keep_archive: bool = False,
                 progress: bool = True) -> dict[str, Any]:
        """Download and install SPair-71k into ``self.root``, then fetch the DHF 360-pair lists."""
        import os

        from ._archive import download_archive_dataset
        from .dhf_lists import resolve_dhf_list

        result = download_archive_dataset(
            url=url or os.environ.get("CORRBENCH_SPAIR_URL") or self.url, sha256=sha256 or self.sha256,
            target=self.root, inner="SPair-71k", keep_archive=keep_archive, progress=progress)
        result["dhf_lists"] = {s: str(resolve_dhf_list(s, self.root, progress=progress)) for s in _dhf_lists()}
        return result


def _dhf_lists():
    from .dhf_lists import DHF_LISTS

    return DHF_LISTS
