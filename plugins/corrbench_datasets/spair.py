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
from corrbench.errors import DataError, MissingDataError, UsageError

from . import _fields as F

SPAIR_URL = "https://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz"
SPAIR_CATEGORIES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dog", "horse",
    "motorbike", "person", "pottedplant", "sheep", "train", "tvmonitor",
)
STANDARD_SPLITS = ("trn", "val", "test")
# Published counts (dataset-formats.md §1.5; unverified against the real files): `verify` compares with them.
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


def parse_categories(value: Any, known: Sequence[str] | None = SPAIR_CATEGORIES,
                     what: str = "spair.categories") -> tuple[str, ...] | None:
    """``"cat,dog"`` or ``["cat", "dog"]`` → ``("cat", "dog")``; empty → None (all categories)."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        raise UsageError(f"{what} must be a comma-separated string or a list, got {value!r}")
    items = [v for v in items if v]
    if known is not None:
        unknown = [v for v in items if v not in known]
        if unknown:
            raise UsageError(f"{what}: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                             f"{', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    return tuple(dict.fromkeys(items)) or None
