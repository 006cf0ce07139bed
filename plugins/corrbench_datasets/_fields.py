"""Strict readers for annotation values: every malformed value becomes a DataError naming the file.

The dataset readers parse third-party JSON and text files; anything unexpected in them (a string
where a number belongs, a point with three coordinates, a box with ``right < left``...) must reach the
user as one line naming the file and the key, never as a ``TypeError`` from deep inside numpy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from corrbench.errors import DataError, UsageError


def fail(path: Path | str, problem: str) -> DataError:
    return DataError(f"{path}: {problem}")


def load_json(path: Path) -> Any:
    """Parse a JSON file; unreadable or malformed files raise DataError naming the file."""
    try:
        text = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise fail(path, "file is missing") from exc
    except OSError as exc:
        raise fail(path, f"cannot read: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise fail(path, f"malformed JSON: {exc}") from exc


def require(obj: Any, key: str, path: Path | str) -> Any:
    if not isinstance(obj, dict):
        raise fail(path, f"expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise fail(path, f"missing key {key!r}")
    return obj[key]


def number(value: Any, what: str, path: Path | str) -> float:
    """A finite JSON number (bools are not numbers here, although Python treats them as ints)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(path, f"{what} must be a number, got {value!r:.60}")
    try:
        out = float(value)
    except OverflowError as exc:
        raise fail(path, f"{what} = {value!r:.60} is out of range") from exc
    if not math.isfinite(out):
        raise fail(path, f"{what} must be finite, got {value!r}")
    return out


def integer(value: Any, what: str, path: Path | str) -> int:
    """An integer, also accepted as a string of digits (SPair's ``kps_ids`` are strings)."""
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError as exc:
            raise fail(path, f"{what} must be an integer, got {value!r:.60}") from exc
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise fail(path, f"{what} must be an integer, got {value!r:.60}")
    return value


def string(value: Any, what: str, path: Path | str) -> str:
    if not isinstance(value, str) or not value:
        raise fail(path, f"{what} must be a non-empty string, got {value!r:.60}")
    return value


def points(value: Any, what: str, path: Path | str) -> np.ndarray:
    """A list of ``[x, y]`` pairs → N×2 float array (N may be 0; the pair check reports empty lists)."""
    if not isinstance(value, list):
        raise fail(path, f"{what} must be a list of [x, y] points, got {type(value).__name__}")
    out = np.zeros((len(value), 2), dtype=np.float64)
    for i, p in enumerate(value):
        if not isinstance(p, list) or len(p) != 2:
            raise fail(path, f"{what}[{i}] must be an [x, y] pair, got {p!r:.60}")
        out[i, 0] = number(p[0], f"{what}[{i}][0]", path)
        out[i, 1] = number(p[1], f"{what}[{i}][1]", path)
    return out


def box(value: Any, what: str, path: Path | str) -> tuple[float, float, float, float]:
    """``[left, top, right, bottom]`` with right > left and bottom > top."""
    if not isinstance(value, list) or len(value) != 4:
        raise fail(path, f"{what} must be [left, top, right, bottom], got {value!r:.80}")
    l, t, r, b = (number(v, f"{what}[{i}]", path) for i, v in enumerate(value))
    if r <= l or b <= t:
        raise fail(path, f"{what} {value!r} is empty or inverted (need right > left, bottom > top)")
    return (l, t, r, b)


def size_wh(value: Any, what: str, path: Path | str) -> tuple[int, int]:
    """SPair ``*_imsize`` = ``[W, H, C]`` → (W, H), both positive."""
    if not isinstance(value, list) or len(value) < 2:
        raise fail(path, f"{what} must be [W, H, C], got {value!r:.60}")
    W, H = integer(value[0], f"{what}[0]", path), integer(value[1], f"{what}[1]", path)
    if W < 1 or H < 1:
        raise fail(path, f"{what} {value!r} is not a positive image size")
    return W, H


def id_list(value: Any, n: int, what: str, path: Path | str) -> list[int]:
    if not isinstance(value, list):
        raise fail(path, f"{what} must be a list, got {type(value).__name__}")
    if len(value) != n:
        raise fail(path, f"{what} has {len(value)} entries but there are {n} keypoints")
    return [integer(v, f"{what}[{i}]", path) for i, v in enumerate(value)]


def parse_categories(value: Any, known: Sequence[str] | None = None,
                     what: str = "categories") -> tuple[str, ...] | None:
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
