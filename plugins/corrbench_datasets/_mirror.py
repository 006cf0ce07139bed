"""Left/right keypoint partners derived from keypoint names (for ``Dataset.mirror_partners``).

Names mark their side as a prefix in one of the styles the datasets use: ``left_eye`` / ``right_eye``
(corrbench's synthetic creatures), ``left eye`` / ``right eye`` (CUB parts), ``L_Eye`` / ``R_Eye``
(AP-10K). Two ids are partners when their names are equal after swapping that prefix.
"""

from __future__ import annotations

import re

# (pattern, swap): the side prefix and how to spell the other side in the same style
_SIDES = (
    (re.compile(r"^(left|right)([ _-])", re.IGNORECASE), {"left": "right", "right": "left"}),
    (re.compile(r"^([LR])(_)"), {"L": "R", "R": "L"}),
)


def mirror_name(name: str) -> str | None:
    """The name of the other side's keypoint, or None when ``name`` has no side."""
    for pattern, swap in _SIDES:
        m = pattern.match(name)
        if m:
            side = m.group(1)
            other = swap[side.lower()] if side.lower() in swap else swap[side]
            if side[0].isupper() and len(side) > 1:
                other = other.capitalize()
            return other + m.group(2) + name[m.end():]
    return None


def partners_from_names(names: dict[str, str]) -> dict[str, str]:
    """``{id: name}`` → ``{id: partner id}`` for every id whose mirrored name is another id's name."""
    by_name = {n: k for k, n in names.items()}
    out = {}
    for k, n in names.items():
        other = mirror_name(n)
        if other is not None and other in by_name and by_name[other] != k:
            out[k] = by_name[other]
    return out


def pairs_to_map(pairs: list[tuple[int, int]]) -> dict[str, str]:
    """``[(a, b), ...]`` → the symmetric ``{"a": "b", "b": "a", ...}``."""
    out: dict[str, str] = {}
    for a, b in pairs:
        out[str(a)], out[str(b)] = str(b), str(a)
    return out
