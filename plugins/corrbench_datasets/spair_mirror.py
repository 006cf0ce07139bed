"""Left/right partners of SPair-71k's keypoint slots, per category.

SPair's ``kps_ids`` are per-category slots 0-29 with no names in the release. Which slots mirror
each other was read off the flip tables of GeoAware-SC (Zhang et al. 2024, the table its training
uses with the raw slot numbers, in which bicycle slots 11-12 and bus slots 8-9 are unused) and written
here as data: each entry is an unordered pair of slots that swap under a horizontal flip. Slots on the
symmetry plane (a nose, a licence plate, a tail) have no partner and are left out. Pairs of four-way
groups (a car's wheels) pair each slot with its left/right counterpart only, not front/back.
"""

from __future__ import annotations

from ._mirror import pairs_to_map

_ANIMAL_HOOVED = [(0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12), (15, 16), (17, 18), (19, 20)]
_VEHICLE = [(0, 1), (2, 3), (10, 20), (11, 21), (12, 22), (13, 23), (14, 24), (15, 25), (16, 17), (18, 19),
            (26, 27), (28, 29)]

SPAIR_MIRROR_PAIRS: dict[str, list[tuple[int, int]]] = {
    "aeroplane": [(4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17), (18, 19), (20, 21)],
    "bicycle": [(2, 3), (6, 7), (9, 10)],
    "bird": [(1, 2), (4, 5), (7, 8), (10, 11), (12, 13), (14, 15)],
    "boat": [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)],
    "bottle": [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)],
    "bus": [(5, 6), *_VEHICLE],
    "car": [(6, 7), *_VEHICLE],
    "cat": [(0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12)],
    "chair": [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13)],
    "cow": _ANIMAL_HOOVED,
    "dog": [(0, 1), (2, 3), (4, 5), (9, 10), (11, 12)],
    "horse": [(0, 1), (2, 3), (4, 5), (6, 7), (10, 11), (12, 13), (16, 17), (18, 19)],
    "motorbike": [(0, 1), (2, 3)],
    "person": [(0, 1), (2, 3), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17), (18, 19)],
    "pottedplant": [(0, 2), (4, 5), (6, 8)],
    "sheep": _ANIMAL_HOOVED,
    "train": [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17)],
    "tvmonitor": [(0, 2), (4, 6), (3, 7), (8, 10), (12, 14), (11, 15)],
}


def spair_partners(category: str) -> dict[str, str]:
    """``{"slot": "partner slot"}`` for one SPair category ({} for an unknown one)."""
    return pairs_to_map(SPAIR_MIRROR_PAIRS.get(category, []))
