"""Statistics a reviewer asks for, computed from a run's per-pair predictions.

Everything here starts from ``predictions.jsonl`` rows (one dict per method × pair: ``distances``,
``L_bbox``, ``L_img``, ``category``, optional ``rejected``, ``keypoint_ids``, ``mirror_index``), so a
number can be recomputed from the run folder alone:

* **bootstrap 95 % intervals** — pairs are resampled with replacement *within* each category
  (the split's category mix stays fixed), ``resamples`` times from ``numpy.random.PCG64(seed)``; the
  interval is the 2.5th and 97.5th percentile of the resampled PCK. Categories are visited in
  sorted order and each draws one ``(resamples, n_pairs_in_category)`` block of indices, so the
  draws are the same on every machine.
* **paired difference** of two methods on the same pairs: Δ, its paired-bootstrap interval (same
  resampling, both methods on the same draws) and a two-sided sign-flip permutation p-value (each
  pair's difference keeps or flips its sign with probability ½).
* **mean over categories**, the **per-keypoint-id** breakdown, the **left/right swap rate** and
  **PCK@α curve** data for α = 0.01 … 0.20.

A keypoint the readout *rejected* (``mutual-nn``) is a miss at every α. Values are percentages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import UsageError
from .metrics import correct, metric_key

CURVE_ALPHAS: tuple[float, ...] = tuple(round(0.01 * i, 2) for i in range(1, 21))
RESAMPLES = 1000
LEVEL = 0.95
NORM_COLUMNS = {"bbox": "L_bbox", "img": "L_img"}


@dataclass
class PairArrays:
    """One method's predictions as flat per-keypoint arrays, plus which pair and category each belongs to."""

    pair_ids: list[str]
    categories: np.ndarray  # per pair (str)
    pair_of: np.ndarray  # per keypoint: index into pair_ids
    dist: np.ndarray  # per keypoint, original target pixels (inf when rejected)
    lengths: dict[str, np.ndarray]  # norm → per keypoint reference length
    keypoint_ids: list[str | None]  # per keypoint ("-" when the dataset gives none)
    partner_dist: np.ndarray  # per keypoint: distance to the mirror partner's ground truth (nan: no partner)

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]]) -> "PairArrays":
        pair_ids, cats, pair_of, dist, ids, partner = [], [], [], [], [], []
        lengths: dict[str, list[float]] = {n: [] for n in NORM_COLUMNS}
        for i, row in enumerate(rows):
            d = np.asarray(row["distances"], dtype=np.float64).reshape(-1)
            k = len(d)
            rejected = row.get("rejected")
            if rejected:
                d = np.where(np.asarray(rejected, dtype=bool), np.inf, d)
            pair_ids.append(str(row["pair"]))
            cats.append(str(row.get("category") or "-"))
            pair_of.append(np.full(k, i))
            dist.append(d)
            for norm, col in NORM_COLUMNS.items():
                value = row.get(col)
                lengths[norm].append(np.full(k, np.nan if value is None else float(value)))
            kid = row.get("keypoint_ids") or [None] * k
            ids.extend(str(x) if x is not None else None for x in kid)
            partner.append(_partner_distances(row, k))
        return cls(pair_ids, np.asarray(cats, dtype=object), _cat(pair_of, int), _cat(dist, float),
                   {n: _cat(v, float) for n, v in lengths.items()}, ids, _cat(partner, float))

    @property
    def n_pairs(self) -> int:
        return len(self.pair_ids)

    def hits(self, alpha: float, norm: str, compare: str) -> np.ndarray:
        return correct(self.dist, alpha * self.lengths[norm], compare)

    def per_pair(self, hits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(correct keypoints, keypoints) per pair."""
        k = np.bincount(self.pair_of, weights=hits.astype(np.float64), minlength=self.n_pairs)
        n = np.bincount(self.pair_of, minlength=self.n_pairs).astype(np.float64)
        return k, n


def _cat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


def _partner_distances(row: dict[str, Any], k: int) -> np.ndarray:
    """Distance from each prediction to the ground truth of its keypoint's mirror partner in the same pair."""
    out = np.full(k, np.nan)
    mirror = row.get("mirror_index")
    if not mirror:
        return out
    pred = np.asarray(row["predicted_points"], dtype=np.float64).reshape(-1, 2)
    gt = np.asarray(row["target_points"], dtype=np.float64).reshape(-1, 2)
    for i, j in enumerate(mirror):
        if j is not None and j >= 0:
            out[i] = float(np.hypot(*(pred[i] - gt[j])))
    return out


def _value(k: np.ndarray, n: np.ndarray, average: str) -> float:
    if average == "point":
        return 100.0 * k.sum() / n.sum()
    return 100.0 * float(np.mean(k / n))


# ------------------------------------------------------------------------------------------------
# bootstrap
# ------------------------------------------------------------------------------------------------
def resample_indices(categories: np.ndarray, resamples: int, seed: int) -> list[np.ndarray]:
    """Per category (sorted by name), a ``(resamples, m)`` block of pair indices drawn with replacement."""
    rng = np.random.Generator(np.random.PCG64(seed))
    blocks = []
    for cat in sorted(set(categories.tolist())):
        members = np.flatnonzero(categories == cat)
        blocks.append(members[rng.integers(0, len(members), size=(resamples, len(members)))])
    return blocks


def _resampled_values(per_pair_k: np.ndarray, per_pair_n: np.ndarray, blocks: list[np.ndarray],
                      average: str) -> np.ndarray:
    """PCK of every resample; ``per_pair_k`` is (pairs,) or (pairs, metrics)."""
    k = per_pair_k if per_pair_k.ndim == 2 else per_pair_k[:, None]
    if average == "point":
        num = sum(k[b].sum(axis=1) for b in blocks)
        den = sum(per_pair_n[b].sum(axis=1) for b in blocks)[:, None]
    else:
        ratio = k / per_pair_n[:, None]
        num = sum(ratio[b].sum(axis=1) for b in blocks)
        den = float(sum(b.shape[1] for b in blocks))
    out = 100.0 * num / den
    return out if per_pair_k.ndim == 2 else out[:, 0]


def _interval(values: np.ndarray, level: float = LEVEL) -> np.ndarray:
    tail = 100.0 * (1 - level) / 2
    return np.percentile(values, [tail, 100.0 - tail], axis=0)


def bootstrap_cis(arrays: PairArrays, alphas: Sequence[float], compare: str, resamples: int = RESAMPLES,
                  seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """``{"point": {metric_key: [lo, hi]}, "image": {...}}`` for every α and norm."""
    keys, ks = [], []
    n = None
    for norm in NORM_COLUMNS:
        for a in alphas:
            k, n = arrays.per_pair(arrays.hits(a, norm, compare))
            keys.append(metric_key(a, norm))
            ks.append(k)
    blocks = resample_indices(arrays.categories, resamples, seed)
    out: dict[str, dict[str, list[float]]] = {}
    for average in ("point", "image"):
        vals = _resampled_values(np.stack(ks, axis=1), n, blocks, average)
        lo, hi = _interval(vals)
        out[average] = {key: [float(lo[i]), float(hi[i])] for i, key in enumerate(keys)}
    return out


def paired_difference(a_rows: Sequence[dict[str, Any]], b_rows: Sequence[dict[str, Any]], alpha: float = 0.1,
                      norm: str = "bbox", average: str = "point", resamples: int = 2000, seed: int = 0,
                      compare: str = "le") -> dict[str, Any]:
    """Method A minus method B on the pairs both evaluated: Δ, paired-bootstrap 95 % CI, permutation p."""
    if norm not in NORM_COLUMNS:
        raise UsageError(f"norm {norm!r}: use bbox or img")
    if average not in ("point", "image"):
        raise UsageError(f"average {average!r}: use point or image")
    a_by = {str(r["pair"]): r for r in a_rows}
    b_by = {str(r["pair"]): r for r in b_rows}
    shared = [p for p in a_by if p in b_by]
    if not shared:
        raise UsageError("the two methods share no pairs: a paired test needs the same pairs")
    for p in shared:
        if len(a_by[p]["distances"]) != len(b_by[p]["distances"]):
            raise UsageError(f"pair {p}: the two runs scored different keypoints "
                             f"({len(a_by[p]['distances'])} vs {len(b_by[p]['distances'])})")
    A = PairArrays.from_rows([a_by[p] for p in shared])
    B = PairArrays.from_rows([b_by[p] for p in shared])
    ka, n = A.per_pair(A.hits(alpha, norm, compare))
    kb, _ = B.per_pair(B.hits(alpha, norm, compare))
    delta = _value(ka, n, average) - _value(kb, n, average)
    blocks = resample_indices(A.categories, resamples, seed)
    boot = (_resampled_values(ka, n, blocks, average) - _resampled_values(kb, n, blocks, average))
    lo, hi = _interval(boot)
    # sign-flip permutation: under "no difference" each pair's A/B labels are exchangeable
    d = (ka - kb) if average == "point" else (ka - kb) / n
    scale = 100.0 / (n.sum() if average == "point" else len(n))
    rng = np.random.Generator(np.random.PCG64(seed + 1))
    signs = rng.integers(0, 2, size=(resamples, len(d))) * 2 - 1
    perm = np.abs(signs @ d) * scale
    # a tolerance so that round-off never decides whether a permuted Δ ties the observed one
    p = float((1 + np.count_nonzero(perm >= abs(delta) - 1e-9)) / (1 + resamples))
    return {"delta": float(delta), "ci95": [float(lo), float(hi)], "p": p, "n_pairs": len(shared),
            "alpha": float(alpha), "norm": norm, "average": average, "resamples": resamples, "seed": seed,
            "test": "paired bootstrap (pairs within categories) + sign-flip permutation"}


# ------------------------------------------------------------------------------------------------
# breakdowns
# ------------------------------------------------------------------------------------------------
def curve(arrays: PairArrays, compare: str, alphas: Sequence[float] = CURVE_ALPHAS) -> dict[str, Any]:
    out: dict[str, Any] = {"alphas": list(alphas)}
    for norm in NORM_COLUMNS:
        point, image = [], []
        for a in alphas:
            k, n = arrays.per_pair(arrays.hits(a, norm, compare))
            point.append(_value(k, n, "point"))
            image.append(_value(k, n, "image"))
        out[norm] = {"point": point, "image": image}
    return out


def category_mean(arrays: PairArrays, alphas: Sequence[float], compare: str) -> dict[str, float]:
    """Mean over categories of each category's pooled PCK (every category counts once)."""
    out = {}
    for norm in NORM_COLUMNS:
        for a in alphas:
            k, n = arrays.per_pair(arrays.hits(a, norm, compare))
            per_cat = [k[arrays.categories == c].sum() / n[arrays.categories == c].sum()
                       for c in sorted(set(arrays.categories.tolist()))]
            out[metric_key(a, norm)] = 100.0 * float(np.mean(per_cat))
    return out


def image_metrics(arrays: PairArrays, alphas: Sequence[float], compare: str) -> dict[str, float]:
    out = {}
    for norm in NORM_COLUMNS:
        for a in alphas:
            k, n = arrays.per_pair(arrays.hits(a, norm, compare))
            out[metric_key(a, norm)] = _value(k, n, "image")
    return out


def per_keypoint_id(arrays: PairArrays, compare: str, alpha: float = 0.1) -> dict[str, dict[str, float]]:
    """PCK@α per ``category/keypoint id`` (ids are per-category slots, as in SPair)."""
    if all(i is None for i in arrays.keypoint_ids):
        return {}
    cats = arrays.categories[arrays.pair_of]
    labels = np.asarray([f"{c}/{i}" for c, i in zip(cats, arrays.keypoint_ids)], dtype=object)
    hits = {norm: arrays.hits(alpha, norm, compare) for norm in NORM_COLUMNS}
    out = {}
    for label in sorted(set(labels.tolist())):
        sel = labels == label
        out[label] = {"n": int(sel.sum()),
                      **{metric_key(alpha, norm): 100.0 * float(h[sel].mean()) for norm, h in hits.items()}}
    return out


def swap_rate(arrays: PairArrays, compare: str, alpha: float = 0.1, norm: str = "bbox") -> dict[str, Any] | None:
    """How often a prediction misses its keypoint but lands within α·L of the keypoint's mirror partner."""
    has_partner = np.isfinite(arrays.partner_dist)
    if not has_partner.any():
        return None
    L = arrays.lengths[norm][has_partner]
    hit = correct(arrays.dist[has_partner], alpha * L, compare)
    on_partner = correct(arrays.partner_dist[has_partner], alpha * L, compare)
    swaps = ~hit & on_partner
    return {"alpha": float(alpha), "norm": norm, "value": 100.0 * float(swaps.mean()), "n": int(has_partner.sum()),
            "swaps": int(swaps.sum()),
            "definition": "missed its keypoint but within α·L of the ground truth of its left/right partner"}


def method_statistics(rows: Iterable[dict[str, Any]], alphas: Sequence[float], compare: str,
                      resamples: int = RESAMPLES, seed: int = 0, headline_norm: str = "bbox") -> dict[str, Any]:
    """Everything above for one method: what results.json stores under ``methods.<m>.statistics``."""
    arrays = PairArrays.from_rows(list(rows))
    rejected = int(np.isinf(arrays.dist).sum())
    return {
        "bootstrap": {"resamples": resamples, "seed": seed, "level": LEVEL,
                      "unit": "pairs resampled within categories", "interval": "percentile"},
        "ci95": bootstrap_cis(arrays, alphas, compare, resamples, seed),
        "image_metrics": image_metrics(arrays, alphas, compare),
        "category_mean": category_mean(arrays, alphas, compare),
        "curve": curve(arrays, compare),
        "per_keypoint_id": per_keypoint_id(arrays, compare),
        "swap_rate": swap_rate(arrays, compare, norm=headline_norm),
        "rejected_keypoints": rejected,
    }
