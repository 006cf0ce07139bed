"""Helpers shared by the PF-PASCAL and PF-WILLOW readers: CSV rows and listed image paths.

Both benchmarks list their pairs in CSV files written for NCNet / CNNGeometric, whose image paths
start with the dataset's own folder name (``PF-dataset-PASCAL/JPEGImages/x.jpg``) because they are
relative to the dataset's *parent*. Errors name the file and the line.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path, PurePosixPath
from typing import Iterator

from corrbench.errors import DataError, MissingDataError


def read_rows(path: Path, *, what: str) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """(header, iterator of (line number, fields)) of a CSV file; blank lines are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise MissingDataError(f"{path}: {what} is missing") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the {what}: {exc}") from exc
    try:
        rows = list(csv.reader(text.splitlines()))
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from exc
    numbered = [(i + 1, [f.strip() for f in r]) for i, r in enumerate(rows) if any(f.strip() for f in r)]
    if not numbered:
        raise DataError(f"{path}: the {what} is empty (no header row)")
    return numbered[0][1], iter(numbered[1:])


def number(text: str, what: str, where: str) -> float:
    """A float field; NaN is allowed here (callers decide), anything else unparsable is an error."""
    try:
        value = float(text)
    except ValueError as exc:
        raise DataError(f"{where}: {what} must be a number, got {text!r:.60}") from exc
    if math.isinf(value):
        raise DataError(f"{where}: {what} must be finite, got {text!r}")
    return value


def listed_path(root: Path, listed: str, where: str, *, default_dir: str | None = None) -> Path:
    """Resolve an image path from a pair CSV against the dataset folder ``root``.

    ``PF-dataset-PASCAL/JPEGImages/x.jpg`` (relative to the parent, as published) and
    ``JPEGImages/x.jpg`` (relative to the root) both give ``root/JPEGImages/x.jpg``; a bare name goes to
    ``root/<default_dir>/``. Absolute paths and ``..`` are refused: a list must not point outside the dataset.
    """
    p = PurePosixPath(listed.replace("\\", "/"))
    if not listed or p.is_absolute() or ".." in p.parts:
        raise DataError(f"{where}: image path {listed!r} must be relative to the dataset folder")
    parts = list(p.parts)
    if len(parts) > 1 and parts[0] == root.name:
        parts = parts[1:]
    elif len(parts) > 1 and not (root / parts[0]).exists() and (root / PurePosixPath(*parts[1:])).exists():
        parts = parts[1:]  # the dataset folder was renamed (PF-PASCAL instead of PF-dataset-PASCAL)
    if len(parts) == 1 and default_dir:
        parts = [default_dir, *parts]
    return root.joinpath(*parts)
