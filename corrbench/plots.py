"""Pictures of a run: one pair's matches (``corrbench plot matches``) and the plot contract for plugins.

matplotlib is used through ``Figure`` objects on the Agg canvas, so nothing needs a display and no
global pyplot state is touched (the report draws dozens of figures in one process).

The plot contract: a plugin's ``register_plots(register)`` hook registers ``register(name, fn,
description=...)`` (or a lazy ``"module:function"``). The report calls ``fn(ctx)`` once per method of
every run with a :class:`PlotContext`; ``fn`` returns a matplotlib ``Figure`` (made with
``ctx.figure(w, h)``) or ``None`` when it has nothing to show for that method.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import DataError, UsageError


def figure(width: float, height: float, dpi: int = 100):
    """A matplotlib Figure on the Agg canvas (no pyplot, no display)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is in the report extra
        raise UsageError("plots need matplotlib: pip install 'corrbench[report]'") from exc
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


@dataclass
class PlotContext:
    """What a registered plot sees: one method of one run."""

    run_dir: Path
    results: dict[str, Any]
    method: str
    #: the method's entry of results.json (config, info, metrics, cost, statistics)
    entry: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def figure(width: float, height: float):
        return figure(width, height)


# -- predictions.jsonl ---------------------------------------------------------------------------------------
def read_predictions(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every row of a run's predictions.jsonl; a malformed line is a DataError naming file and line."""
    pred_file = Path(run_dir) / "predictions.jsonl"
    if not pred_file.is_file():
        raise UsageError(f"{Path(run_dir)} has no predictions.jsonl; is it a corrbench run folder?")
    rows = []
    with open(pred_file) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{pred_file} line {n} is not JSON: {exc}") from exc
            if not isinstance(row, dict) or "method" not in row or "pair" not in row:
                raise DataError(f"{pred_file} line {n} is not a prediction row (needs 'method' and 'pair')")
            rows.append(row)
    return rows


def load_predictions(run_dir: str | os.PathLike, pair_id: str, method: str | None = None) -> tuple[dict, dict]:
    """The prediction row of ``pair_id`` (for ``method``) and the run's results.json."""
    run = Path(run_dir)
    results_file = run / "results.json"
    rows = [r for r in read_predictions(run) if str(r.get("pair")) == str(pair_id)]
    try:
        results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    except json.JSONDecodeError as exc:
        raise DataError(f"{results_file} is not JSON: {exc}") from exc
    if not rows:
        raise UsageError(f"pair {pair_id!r} is not in {run / 'predictions.jsonl'}")
    methods = sorted({r.get("method") for r in rows})
    if method is not None:
        rows = [r for r in rows if r.get("method") == method]
        if not rows:
            raise UsageError(f"method {method!r} has no prediction for pair {pair_id!r}; methods: {', '.join(methods)}")
    elif len(rows) > 1:
        raise UsageError(f"pair {pair_id!r} has predictions of several methods ({', '.join(methods)}); "
                         "choose one with --method")
    return rows[0], results


def row_correct(row: dict[str, Any], alpha: float = 0.1, norm: str = "bbox", compare: str = "le") -> np.ndarray:
    """Which keypoints of one prediction row are correct at α (the PCK engine's own comparison)."""
    from .metrics import correct

    if norm not in ("bbox", "img"):
        raise UsageError(f"--norm must be bbox or img, got {norm!r}")
    L = row.get(f"L_{norm}")
    if L is None or not np.isfinite(L):
        raise UsageError(f"pair {row.get('pair')!r} has no {norm} reference length (no target box?); use --norm img")
    dist = np.asarray(row["distances"], dtype=np.float64)
    return correct(dist, np.full(dist.shape, alpha * float(L)), compare)


# -- matches of one pair ------------------------------------------------------------------------------------
def draw_matches(row: dict[str, Any], *, alpha: float = 0.1, norm: str = "bbox", compare: str = "le",
                 width: float = 10, height: float = 5, legend: bool = True, tight: bool = True):
    """Source and target side by side: ground truth (circles) and predictions (crosses), green = correct.

    Returns ``(figure, correct)``. A line joins each wrong prediction to its truth.
    """
    from .images import load_rgb

    ok = row_correct(row, alpha, norm, compare)
    src_pts = np.asarray(row["source_points"], dtype=float).reshape(-1, 2)
    tgt_pts = np.asarray(row["target_points"], dtype=float).reshape(-1, 2)
    pred = np.asarray(row["predicted_points"], dtype=float).reshape(-1, 2)
    images = [load_rgb(Path(row["source"])), load_rgb(Path(row["target"]))]
    fig = figure(width, height)
    colours = keypoint_colours(len(src_pts))
    for k, (img, side) in enumerate(zip(images, ("source", "target"))):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.imshow(np.asarray(img))
        ax.set_axis_off()
        ax.set_title(f"{side}: {Path(row[side]).name}", fontsize=9)
        if k == 0:
            ax.scatter(src_pts[:, 0], src_pts[:, 1], s=60, c=colours, edgecolors="white", linewidths=1.2)
            continue
        ax.scatter(tgt_pts[:, 0], tgt_pts[:, 1], s=60, c=colours, edgecolors="white", linewidths=1.2)
        ax.scatter(pred[:, 0], pred[:, 1], s=90, marker="X", c=np.where(ok, "lime", "red"),
                   edgecolors="black", linewidths=0.8)
        for p, t, good in zip(pred, tgt_pts, ok):
            if not good:
                ax.plot([p[0], t[0]], [p[1], t[1]], color="red", linewidth=1, alpha=0.8)
        if legend:
            from matplotlib.lines import Line2D

            handles = [Line2D([], [], marker="o", linestyle="", markerfacecolor="grey", markeredgecolor="white",
                              label="ground truth (colour = keypoint)"),
                       Line2D([], [], marker="X", linestyle="", markerfacecolor="lime", markeredgecolor="black",
                              label=f"prediction, correct (≤ {alpha:g}·L_{norm})"),
                       Line2D([], [], marker="X", linestyle="", markerfacecolor="red", markeredgecolor="black",
                              label="prediction, wrong (line to its truth)")]
            ax.legend(handles=handles, loc="lower right", fontsize=7)
    fig.suptitle(f"{row.get('method', '?')} · pair {row.get('pair')} · PCK@{alpha:g} ({norm}) "
                 f"{100 * ok.mean() if len(ok) else 0:.1f}% ({int(ok.sum())}/{len(ok)})", fontsize=10)
    if tight:
        fig.tight_layout()
    else:  # a fixed layout: tight_layout draws the figure once more (the report draws dozens)
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.86, wspace=0.04)
    return fig, ok


def plot_matches(run_dir: str | os.PathLike, pair_id: str, out_file: str | os.PathLike, *,
                 method: str | None = None, alpha: float = 0.1, norm: str = "bbox") -> dict[str, Any]:
    """Write one pair's match picture; returns what it drew (for tests and the CLI's summary line).

    A prediction is correct when its distance to the ground truth is ≤ α·L (L from the row: ``L_bbox`` or
    ``L_img``, the same numbers the PCK engine used).
    """
    row, results = load_predictions(run_dir, pair_id, method)
    compare = (results.get("protocol") or {}).get("compare", "le")
    fig, ok = draw_matches(row, alpha=alpha, norm=norm, compare=compare)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    L = float(row[f"L_{norm}"])
    return {"file": str(out), "correct": ok.tolist(), "distances": list(map(float, row["distances"])),
            "threshold": alpha * L, "method": row.get("method")}


def keypoint_colours(n: int) -> Sequence:
    """Well-separated hues (golden-ratio steps), so neighbouring keypoint ids differ visibly."""
    import colorsys

    return [colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.85, 0.95) for k in range(n)]
