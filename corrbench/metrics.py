"""The PCK engine: every α × {bbox, img} × {per point, per image} × {all, per category, per flag}.

Input is one row per transferred keypoint with its distance to the ground truth (original target
pixels) and the two reference lengths of its target: ``L_bbox`` = max side of the *target* box and
``L_img`` = max(W, H) of the *target* image. A keypoint is correct when ``dist ≤ α·L`` (``le``, the
DHF/DHPF/DIFT convention) or ``dist < α·L`` (``lt``, sd-dino/GeoAware). Exact ties on integer grids do
occur, so the comparison carries a 1e-9 relative tolerance: floating round-off in ``α·L`` can never
decide a tie.

"point" pools all keypoints (the DHF table); "image" averages per-pair accuracies (DIFT's per image).
Values are percentages.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Sequence

import numpy as np
import pandas as pd

ALPHAS: tuple[float, ...] = (0.01, 0.05, 0.10, 0.15)
NORMS = {"bbox": "L_bbox", "img": "L_img"}
_REL_TOL = 1e-9


def metric_key(alpha: float, norm: str) -> str:
    """The name of a PCK number in results.json, baselines and tables: ``pck@0.10_bbox``."""
    return f"pck@{float(alpha):.2f}_{norm}"


def check_alphas(alphas) -> tuple[float, ...]:
    """``--alpha`` values (a comma-separated string or numbers) → sorted, unique, each in (0, 1].

    α = 0.10 is always included: the headline table and every comparison report PCK@0.1.
    """
    from .errors import UsageError

    items = alphas.split(",") if isinstance(alphas, str) else list(alphas)
    out = set()
    for item in items:
        try:
            a = float(item)
        except (TypeError, ValueError):
            raise UsageError(f"--alpha {item!r}: expected a number in (0, 1], e.g. 0.05,0.1") from None
        if not 0 < a <= 1:
            raise UsageError(f"--alpha {item!r}: expected a number in (0, 1] (a fraction of the reference length)")
        out.add(round(a, 6))
    if not out:
        raise UsageError("--alpha: give at least one threshold, e.g. 0.05,0.1,0.15")
    return tuple(sorted(out | {0.10}))


def correct(dist: np.ndarray, threshold: np.ndarray, compare: str = "le") -> np.ndarray:
    dist = np.asarray(dist, dtype=np.float64)
    threshold = np.asarray(threshold, dtype=np.float64)
    if compare == "le":
        return dist <= threshold * (1 + _REL_TOL)
    if compare == "lt":
        return dist < threshold * (1 - _REL_TOL)
    raise ValueError(f"compare must be 'le' or 'lt', got {compare!r}")


def pck_table(keypoints: pd.DataFrame, alphas: Sequence[float] = ALPHAS, compare: str = "le",
              groups: Sequence[str] = ("category",)) -> pd.DataFrame:
    """Long table with columns ``group, level, norm, average, alpha, value, n``.

    ``group`` is ``all`` for the overall numbers, else the breakdown column (``category`` or a
    difficulty flag) with ``level`` its value. ``n`` counts keypoints (point) or pairs (image).
    """
    if keypoints.empty:
        return pd.DataFrame(columns=["group", "level", "norm", "average", "alpha", "value", "n"])
    flags = {}
    for norm, col in NORMS.items():
        for a in alphas:
            flags[(norm, a)] = correct(keypoints["dist"].to_numpy(), a * keypoints[col].to_numpy(), compare)
    hits = pd.DataFrame({f"{norm}|{a!r}": v for (norm, a), v in flags.items()}, index=keypoints.index)
    hits["pair_id"] = keypoints["pair_id"].to_numpy()
    hits["_all"] = "all"
    cols = [c for c in hits.columns if "|" in c]
    rows = []
    for group in ("_all", *[g for g in groups if g in keypoints.columns]):
        hits["_level"] = keypoints[group].to_numpy() if group != "_all" else "all"
        by_level = hits.groupby("_level", sort=True)
        point = by_level[cols].mean()
        point_n = by_level.size()
        per_pair = hits.groupby(["_level", "pair_id"], sort=True)[cols].mean()
        image = per_pair.groupby(level=0).mean()
        image_n = per_pair.groupby(level=0).size()
        for level in point.index:
            for c in cols:
                norm, a = c.split("|")
                rows.append(("all" if group == "_all" else group, level, norm, "point", float(a),
                             100.0 * point.at[level, c], int(point_n[level])))
                rows.append(("all" if group == "_all" else group, level, norm, "image", float(a),
                             100.0 * image.at[level, c], int(image_n[level])))
    return pd.DataFrame(rows, columns=["group", "level", "norm", "average", "alpha", "value", "n"])


def _category_mean_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Overall rows with average ``category``: the mean of the per-category pooled PCK (n = categories)."""
    per_cat = table[(table["group"] == "category") & (table["average"] == "point")]
    if per_cat.empty:
        return table.iloc[0:0]
    means = per_cat.groupby(["norm", "alpha"], sort=False)["value"].agg(["mean", "size"]).reset_index()
    return pd.DataFrame({"group": "all", "level": "all", "norm": means["norm"], "average": "category",
                         "alpha": means["alpha"], "value": means["mean"], "n": means["size"].astype(int)})


@dataclass
class MethodScore:
    """A method's scores: long-format overall and breakdown rows, the headline metrics, per category."""

    summary: pd.DataFrame
    breakdown: pd.DataFrame
    metrics: dict[str, float]
    per_category: dict[str, dict[str, float]]


def score_method(keypoints: pd.DataFrame, alphas: Sequence[float], compare: str, flags: Sequence[str],
                 labels: dict[str, str]) -> MethodScore:
    """Score one method's keypoint table (a row per keypoint: dist, L_bbox, L_img, dist_load, L_load, category,
    flags): PCK at every α, norm and average, overall and per group, plus the load-frame number also logged."""
    from .results import SUMMARY_COLUMNS

    table = pck_table(keypoints, alphas, compare, groups=("category", *flags))
    table = pd.concat([table, _category_mean_rows(table)], ignore_index=True)
    for i, key in enumerate(("method", "dataset", "split")):
        table.insert(i, key, labels[key])
    table.insert(3, "metric", "pck")
    overall = table[table["group"] == "all"]
    point = overall[overall["average"] == "point"]
    metrics = {metric_key(a, norm): float(v) for a, norm, v in zip(point["alpha"], point["norm"], point["value"])}
    # the DHF notebooks score in the load frame (docs/protocol.md#p11-load-frame-scoring): logged, not the headline
    metrics["pck@0.10_img_loadframe"] = float(100 * correct(keypoints["dist_load"], 0.1 * keypoints["L_load"],
                                                            compare).mean())
    per_category = {
        str(level): {metric_key(a, norm): float(v) for a, norm, v in zip(g["alpha"], g["norm"], g["value"])}
        for level, g in table[(table["group"] == "category") & (table["average"] == "point")].groupby("level")
    }
    return MethodScore(overall[SUMMARY_COLUMNS], table[table["group"] != "all"], metrics, per_category)
