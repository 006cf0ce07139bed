"""What the report and the leaderboard read from run folders, as plain numbers.

Everything here is read, never recomputed, except the per-pair scores behind the galleries (the run
files store per-keypoint distances, not per-pair PCK). Fields added to results.json later
(``protocol.headline``, ``methods[m].statistics``) are optional: an older run shows "–" for its CIs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError
from ..results import load_run

DEFAULT_HEADLINE = {"metric": "pck@0.10_bbox", "average": "point"}
_KEY = re.compile(r"pck@(?P<alpha>[0-9.]+)_(?P<norm>bbox|img)$")


def parse_metric(key: str) -> tuple[float, str]:
    """``"pck@0.10_bbox"`` → ``(0.1, "bbox")``."""
    m = _KEY.match(str(key))
    if not m:
        raise DataError(f"unknown metric key {key!r}; expected pck@<alpha>_<bbox|img>")
    return float(m.group("alpha")), m.group("norm")


def finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass
class RunData:
    """One run folder, read once."""

    path: Path
    results: dict[str, Any]
    summary: pd.DataFrame
    breakdown: pd.DataFrame | None = None
    _predictions: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return self.path.name or str(self.path)

    @property
    def dataset(self) -> dict[str, Any]:
        return self.results.get("dataset") or {}

    @property
    def protocol(self) -> dict[str, Any]:
        return self.results.get("protocol") or {}

    @property
    def headline(self) -> dict[str, str]:
        head = self.protocol.get("headline")
        return {**DEFAULT_HEADLINE, **head} if isinstance(head, dict) else dict(DEFAULT_HEADLINE)

    @property
    def compare(self) -> str:
        return str(self.protocol.get("compare", "le"))

    @property
    def methods(self) -> dict[str, dict[str, Any]]:
        return self.results.get("methods") or {}

    @property
    def predictions(self) -> list[dict[str, Any]]:
        if self._predictions is None:
            from ..plots import read_predictions

            self._predictions = read_predictions(self.path) if (self.path / "predictions.jsonl").is_file() else []
        return self._predictions

    def rows_of(self, method: str) -> list[dict[str, Any]]:
        return [r for r in self.predictions if r.get("method") == method]


def load(run_dir: str | Path) -> RunData:
    """A finished run folder (results.json + summary.csv required; breakdown and predictions optional)."""
    path = Path(run_dir)
    results, summary = load_run(path)  # corrbench.results imports no torch: report start-up stays quick
    breakdown = None
    if (path / "breakdown.csv").is_file():
        try:
            breakdown = pd.read_csv(path / "breakdown.csv")
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise DataError(f"{path / 'breakdown.csv'}: cannot read: {exc}") from exc
    return RunData(path, results, summary, breakdown)


# -- the headline ---------------------------------------------------------------------------------------
def headline_value(entry: dict[str, Any], metric: str, average: str) -> float | None:
    """The headline number of one method: pooled per point from ``metrics``, per image from ``statistics``."""
    if average == "point":
        return finite((entry.get("metrics") or {}).get(metric))
    stats = entry.get("statistics") or {}
    return finite((stats.get("image_metrics") or {}).get(metric))


def headline_ci(entry: dict[str, Any], metric: str, average: str) -> tuple[float | None, float | None]:
    ci = (((entry.get("statistics") or {}).get("ci95") or {}).get(average) or {}).get(metric)
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return finite(ci[0]), finite(ci[1])
    return None, None


def headline_rows(run: RunData) -> list[dict[str, Any]]:
    """One row per method: the headline PCK with its 95 % CI, sizes and cost."""
    head = run.headline
    rows = []
    for method, entry in run.methods.items():
        lo, hi = headline_ci(entry, head["metric"], head["average"])
        stats = entry.get("statistics") or {}
        swap = stats.get("swap_rate") if isinstance(stats.get("swap_rate"), dict) else None
        rows.append({"run": run.label, "dataset": run.dataset.get("name", "?"), "split": run.dataset.get("split", "?"),
                     "method": method, "metric": head["metric"], "average": head["average"],
                     "value": headline_value(entry, head["metric"], head["average"]), "ci_low": lo, "ci_high": hi,
                     "n_pairs": entry.get("n_pairs"), "n_keypoints": entry.get("n_keypoints"),
                     "s_per_image": finite((entry.get("cost") or {}).get("extract_s_per_image")),
                     "swap_rate": finite(swap.get("value")) if swap else None})
    return rows


# -- curves, categories, difficulty --------------------------------------------------------------------
def curve(run: RunData, method: str, norm: str, average: str) -> tuple[list[float], list[float]]:
    """PCK against α: the dense curve of ``statistics.curve`` when present, else summary.csv's thresholds."""
    stats = run.methods.get(method, {}).get("statistics") or {}
    dense = stats.get("curve") or {}
    ys = ((dense.get(norm) or {}).get(average)) if isinstance(dense.get(norm), dict) else None
    if dense.get("alphas") and ys and len(ys) == len(dense["alphas"]):
        return [float(a) for a in dense["alphas"]], [float(y) for y in ys]
    s = run.summary
    sel = s[(s["method"] == method) & (s["metric"] == "pck") & (s["norm"] == norm) & (s["average"] == average)]
    sel = sel.sort_values("alpha")
    return sel["alpha"].astype(float).tolist(), sel["value"].astype(float).tolist()


def per_category(run: RunData, method: str, metric: str) -> dict[str, float]:
    cats = run.methods.get(method, {}).get("per_category") or {}
    out = {c: finite(v.get(metric)) for c, v in cats.items() if isinstance(v, dict)}
    return {c: v for c, v in sorted(out.items()) if v is not None}


def difficulty(run: RunData, metric: str, average: str) -> pd.DataFrame:
    """breakdown.csv rows of the difficulty flags (every group but ``category``) at the headline α and norm.

    Columns ``method, group, level, value, n``; empty for runs without flags (or without breakdown.csv).
    """
    b = run.breakdown
    cols = ["method", "group", "level", "value", "n"]
    if b is None or b.empty or not {"group", "level", "norm", "average", "alpha", "value"} <= set(b.columns):
        return pd.DataFrame(columns=cols)
    alpha, norm = parse_metric(metric)
    sel = b[(b["group"] != "category") & (b["norm"] == norm) & (b["average"] == average)
            & (b["alpha"].astype(float).sub(alpha).abs() < 1e-6)]
    return sel[cols].reset_index(drop=True)


# -- per-pair scores and galleries -----------------------------------------------------------------------
def pair_scores(rows: list[dict[str, Any]], alpha: float, norm: str, compare: str = "le") -> list[dict[str, Any]]:
    """Per pair: PCK@α (%), keypoints correct / total and the mean normalised distance (the tie-breaker)."""
    from ..metrics import correct

    out = []
    for row in rows:
        L = finite(row.get(f"L_{norm}"))
        dist = np.asarray(row.get("distances") or [], dtype=np.float64)
        if L is None or L <= 0 or dist.size == 0:
            continue  # no reference length (no box) or no keypoints: the pair cannot be ranked
        ok = correct(dist, np.full(dist.shape, alpha * L), compare)
        out.append({"pair": str(row["pair"]), "category": row.get("category"), "pck": 100.0 * float(ok.mean()),
                    "correct": int(ok.sum()), "n": int(ok.size), "mean_dist": float(dist.mean() / L), "row": row})
    return out


def gallery(rows: list[dict[str, Any]], alpha: float, norm: str, compare: str = "le",
            k: int = 3) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``k`` best and ``k`` worst pairs: by PCK@α, ties by mean normalised distance, then pair id.

    The two lists never share a pair (a run of fewer than 2k pairs splits them between best and worst).
    """
    scores = pair_scores(rows, alpha, norm, compare)
    ranked = sorted(scores, key=lambda s: (-s["pck"], s["mean_dist"], s["pair"]))
    n_best = min(k, (len(ranked) + 1) // 2)
    best = ranked[:n_best]
    rest = ranked[n_best:]
    worst = list(reversed(rest))[:k]
    return best, worst
