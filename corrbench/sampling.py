"""Pair subsets: a seeded sample stratified by category (``--sample N --seed S``).

Published protocols often evaluate a subset (e.g. 20 pairs per category); a first-N ``--limit``
would instead take whole categories from the top of a sorted pair list. The sample here keeps each
category's share of the split (largest-remainder rounding, every category with at least one pair
when ``n`` allows), draws within a category with numpy's PCG64 seeded by ``seed``, and keeps the
split's pair order, so the same ``n`` and ``seed`` select the same pairs on any machine.
"""

from __future__ import annotations

import math
from typing import Sequence, TypeVar

import numpy as np

from .errors import UsageError

P = TypeVar("P")


def stratified_sample(pairs: Sequence[P], n: int, seed: int = 0, key=lambda p: getattr(p, "category", "")) -> list[P]:
    """``n`` of ``pairs`` (all of them when ``n`` ≥ their number), stratified by ``key``."""
    if n < 1:
        raise UsageError(f"--sample must be at least 1, got {n}")
    if n >= len(pairs):
        return list(pairs)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(str(key(p) or "-"), []).append(i)
    names = sorted(groups)
    total = len(pairs)
    exact = {c: n * len(groups[c]) / total for c in names}
    quota = {c: min(len(groups[c]), math.floor(exact[c])) for c in names}
    if n >= len(names):  # every category is represented when there are enough draws for all
        for c in names:
            quota[c] = max(quota[c], 1)
    # hand out what is left by largest remainder (ties: category name), never above a category's size
    while sum(quota.values()) < n:
        c = max((c for c in names if quota[c] < len(groups[c])), key=lambda c: (exact[c] - quota[c], c))
        quota[c] += 1
    while sum(quota.values()) > n:  # the "at least one" rule overshot: take back from the largest quotas
        c = max((c for c in names if quota[c] > 1), key=lambda c: (quota[c] - exact[c], c))
        quota[c] -= 1
    rng = np.random.Generator(np.random.PCG64(seed))
    chosen: list[int] = []
    for c in names:
        idx = groups[c]
        chosen.extend(idx[j] for j in rng.permutation(len(idx))[:quota[c]])
    return [pairs[i] for i in sorted(chosen)]


def per_category_sample(pairs: Sequence[P], k: int, seed: int = 0,
                        key=lambda p: getattr(p, "category", "")) -> list[P]:
    """``k`` pairs of every category (all of a category's pairs when it has fewer), seeded, no repeats.

    The subset of protocol presets such as ``geoaware`` (20 pairs per category). sd-dino and GeoAware-SC
    draw with replacement, so a pair can count twice there; here each category's pairs are permuted by
    numpy's PCG64 (``seed``, categories in sorted order) and the first ``k`` kept, in the split's order.
    """
    if k < 1:
        raise UsageError(f"pairs per category must be at least 1, got {k}")
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(str(key(p) or "-"), []).append(i)
    rng = np.random.Generator(np.random.PCG64(seed))
    chosen: list[int] = []
    for c in sorted(groups):
        idx = groups[c]
        chosen.extend(idx[j] for j in rng.permutation(len(idx))[:k])
    return [pairs[i] for i in sorted(chosen)]
