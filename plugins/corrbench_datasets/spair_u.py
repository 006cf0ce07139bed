"""SPair-U (Mariotti et al., "Jamais Vu", 2025): SPair-71k test pairs relabelled with unseen keypoints.

The release describes SPair-U as a drop-in replacement for SPair-71k's test annotations: pair files
in the SPair ``PairAnnotation`` format over SPair's own images. Its public evaluation code reads them
from ``<SPair-71k>/ExtraPairAnnotation/test/*.json`` (with per-image files in
``ExtraImageAnnotation/``), while its README extracts the zip into a sibling ``SPair-U/`` folder. The
inside of the zip has not been checked here, so corrbench looks for the pair folder in a few places
(:func:`find_pair_folder`) and says where it looked. Evaluated as the ``spair-u`` split of ``spair``
(``--dataset spair --split spair-u``, or the alias dataset ``spair-u``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from corrbench.api import Pair
from corrbench.errors import DataError, MissingDataError

from .spair import SPairDataset

SPAIR_U_URL = "https://groups.inf.ed.ac.uk/hbilen-data/data/JamaisVuData/SPair-U.zip"
PAIR_DIRS = ("ExtraPairAnnotation", "PairAnnotation")


def candidate_folders(spair_root: Path, configured: Path | None) -> list[Path]:
    """Where SPair-U's annotations may be, in the order they are tried."""
    spair_root = Path(spair_root)
    if configured is not None:
        return [Path(configured)]
    return [spair_root, spair_root / "SPair-U", spair_root.parent / "SPair-U"]


def find_pair_folder(spair_root: Path, configured: Path | None = None) -> Path:
    """The folder of SPair-U test pair files: ``<folder>[/<one level>]/{ExtraPairAnnotation,PairAnnotation}/test``.

    Under the SPair root itself only ``ExtraPairAnnotation`` counts (its ``PairAnnotation`` is SPair's own).
    """
    tried = []
    for base in candidate_folders(spair_root, configured):
        bases = [base] + (sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else [])
        for b in bases:
            for name in PAIR_DIRS:
                if name == "PairAnnotation" and b.resolve() == Path(spair_root).resolve():
                    continue
                folder = b / name / "test"
                if folder.is_dir():
                    return folder
        tried.append(str(base))
    raise MissingDataError(
        "SPair-U annotations not found: no ExtraPairAnnotation/test or PairAnnotation/test folder in "
        f"{', '.join(tried)}. Run `corrbench data download spair-u`, or unzip {SPAIR_U_URL} next to SPair-71k "
        "(or set spair.spair_u=FOLDER).")


def iter_spair_u_pairs(spair_root: Path, folder: Path, *, categories=None, invalid) -> Iterator[Pair]:
    """Every ``*.json`` pair file of ``folder`` in sorted order, images from SPair's ``JPEGImages``."""
    from . import _fields as F
    from .spair import parse_pair_annotation, stem_category

    wanted = set(categories) if categories else None
    for path in sorted(folder.glob("*.json")):
        stem = path.name[:-5]
        hint = stem_category(stem)
        if wanted is not None and hint is not None and hint not in wanted:
            continue
        try:
            pair = parse_pair_annotation(F.load_json(path), path, Path(spair_root) / "JPEGImages", stem, hint)
        except DataError as exc:
            invalid(str(exc), exc)
            continue
        if wanted is None or pair.category in wanted:
            yield pair


def download_spair_u(spair_root: Path, *, url: str | None = None, sha256: str | None = None,
                     keep_archive: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fetch the SPair-U zip and unpack all of it into ``<SPair root>/../SPair-U`` (nothing if present)."""
    import os

    from ._archive import download_archive_dataset

    target = Path(spair_root).parent / "SPair-U"
    return download_archive_dataset(url=url or os.environ.get("CORRBENCH_SPAIR_U_URL") or SPAIR_U_URL,
                                    sha256=sha256, target=target, inner="", keep_archive=keep_archive,
                                    progress=progress)


class SPairUDataset(SPairDataset):
    """``spair-u``: the ``spair`` dataset on its ``spair-u`` split, with SPair-U's own download."""

    name = "spair-u"
    description = "SPair-U: SPair-71k test pairs relabelled with unseen keypoints (= spair --split spair-u)"
    splits = ("spair-u",)
    default_split = "spair-u"
    verify_splits = ("spair-u",)
    # SPair's layout and DHF-list keys mean nothing here
    default_config = {k: SPairDataset.options[k] for k in ("categories", "spair_u")}
    how_to_get = (f"Run `corrbench data download spair` and `corrbench data download spair-u` (the zip "
                  f"{SPAIR_U_URL} unpacked into a SPair-U folder beside SPair-71k); pass --data-root .../SPair-71k.")

    def verify_layout(self) -> dict[str, Any]:
        try:
            folder = find_pair_folder(self.root, self.spair_u_dir)
        except DataError as exc:
            return {"problems": [str(exc)], "counts": {}, "notes": []}
        return {"problems": [], "counts": {"spair-u": len(list(folder.glob("*.json")))},
                "notes": ["SPair-U publishes no pair count or checksum: counts are not compared"]}

    def info(self) -> dict[str, Any]:
        out = SPairDataset.info(self)
        try:
            folder = find_pair_folder(self.root, self.spair_u_dir)
            out.update(spair_u_folder=str(folder), spair_u_pairs=len(list(folder.glob("*.json"))))
        except DataError as exc:
            out["spair_u_folder"] = f"not found: {exc}"
        out["spair_u_source"] = SPAIR_U_URL
        return out

    def download(self, url: str | None = None, sha256: str | None = None, keep_archive: bool = False,
                 progress: bool = True) -> dict[str, Any]:
        """Only the SPair-U zip: SPair-71k itself comes from `corrbench data download spair`."""
        return download_spair_u(self.root, url=url, sha256=sha256, keep_archive=keep_archive, progress=progress)
