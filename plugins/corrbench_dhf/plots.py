"""Pictures: the mixing-weight heat map (the paper's interpretability figure) and per-pair matches.

matplotlib is used through ``Figure`` objects with the Agg canvas, so nothing needs a display and no
global pyplot state is touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from corrbench.errors import DataError, UsageError

from .slots import LAYERS, PAPER_SAVE_INDICES, inversion_timestep


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is in the report extra
        raise UsageError("plots need matplotlib: pip install 'corrbench[report]'") from exc
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def mixing_matrix(checkpoint_path: str | os.PathLike) -> tuple[np.ndarray, list[str], list[str], dict[str, Any]]:
    """softmax(mixing weights) as a timesteps × layers matrix, with row and column labels.

    Rows follow the slot order (timestep-major, pitfall P1); the row labels come from the checkpoint's
    ``save_timestep`` (else the paper's, or ``[0]`` for a one-timestep network) and ``num_timesteps``.
    """
    import torch

    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint_path)
    weights = torch.softmax(ckpt.state_dict["mixing_weights"].float(), dim=0).numpy()
    n_layers = len(ckpt.layer_channels)
    matrix = weights.reshape(-1, n_layers)
    n_t = matrix.shape[0]
    cfg = ckpt.config
    num_steps = int(cfg.get("num_timesteps", 50) or 50)
    save = cfg.get("save_timestep")
    if not isinstance(save, (list, tuple)) or len(save) != n_t:
        save = list(PAPER_SAVE_INDICES) if n_t == len(PAPER_SAVE_INDICES) else list(range(num_steps - 1, -1, -1))[:n_t]
        if n_t == 1:
            save = [num_steps - 1]
    rows = []
    for k in save:
        k = int(k)
        # the official configs store a single-step run as save_timestep [0] with num_timesteps 1
        t = inversion_timestep(k, num_steps) if 0 <= k < num_steps else k
        rows.append(f"t={t} (k={k})")
    layers = LAYERS if n_layers == len(LAYERS) else [(None, l) for l in range(n_layers)]
    cols = [f"{l + 1}" + (f"\n{i},{j}" if i is not None else "") for l, (i, j) in enumerate(layers)]
    return matrix, rows, cols, {"checkpoint": str(checkpoint_path), "config": cfg, "save_timestep": save,
                                "num_steps": num_steps}


def plot_mixing_weights(checkpoint_path: str | os.PathLike, out_file: str | os.PathLike,
                        title: str | None = None) -> dict[str, Any]:
    """Write the heat map; returns the matrix and labels (for tests and the CLI's summary line)."""
    matrix, rows, cols, facts = mixing_matrix(checkpoint_path)
    fig = _figure(1.0 + 0.6 * len(cols), 1.2 + 0.4 * len(rows))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(matrix, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel("decoder layer (1-indexed; up_blocks i, resnets j)")
    ax.set_ylabel("UNet timestep of the inversion step (saved index k)")
    fig.colorbar(im, ax=ax, label="softmax mixing weight")
    top = np.unravel_index(int(matrix.argmax()), matrix.shape)
    ax.add_patch(_rect(top))
    ax.set_title(title or f"{Path(checkpoint_path).name}: largest weight at {rows[top[0]]}, layer {top[1] + 1}",
                 fontsize=9)
    fig.tight_layout()
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return {"matrix": matrix, "rows": rows, "cols": cols, "argmax": (int(top[0]), int(top[1])), "file": str(out),
            **facts}


def _rect(cell: tuple[int, int]):
    from matplotlib.patches import Rectangle

    r, c = cell
    return Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2)


# -- matches of one pair from a run folder ---------------------------------------------------------------------
def load_predictions(run_dir: str | os.PathLike, pair_id: str, method: str | None = None) -> tuple[dict, dict]:
    """The prediction row of ``pair_id`` (for ``method``) and the run's results.json."""
    run = Path(run_dir)
    pred_file, results_file = run / "predictions.jsonl", run / "results.json"
    if not pred_file.is_file():
        raise UsageError(f"{run} has no predictions.jsonl; is it a corrbench run folder?")
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    rows = []
    with open(pred_file) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{pred_file} line {n} is not JSON: {exc}") from exc
            if str(row.get("pair")) == str(pair_id):
                rows.append(row)
    if not rows:
        raise UsageError(f"pair {pair_id!r} is not in {pred_file}")
    methods = sorted({r.get("method") for r in rows})
    if method is not None:
        rows = [r for r in rows if r.get("method") == method]
        if not rows:
            raise UsageError(f"method {method!r} has no prediction for pair {pair_id!r}; methods: {', '.join(methods)}")
    elif len(rows) > 1:
        raise UsageError(f"pair {pair_id!r} has predictions of several methods ({', '.join(methods)}); "
                         "choose one with --method")
    return rows[0], results


def plot_matches(run_dir: str | os.PathLike, pair_id: str, out_file: str | os.PathLike, *,
                 method: str | None = None, alpha: float = 0.1, norm: str = "bbox") -> dict[str, Any]:
    """Source and target side by side: ground truth (circles) and predictions (crosses), green = correct.

    A prediction is correct when its distance to the ground truth is ≤ α·L (L from the row: ``L_bbox`` or
    ``L_img``, the same numbers the PCK engine used). A line joins each wrong prediction to its truth.
    """
    from corrbench.images import load_rgb

    row, _ = load_predictions(run_dir, pair_id, method)
    if norm not in ("bbox", "img"):
        raise UsageError(f"--norm must be bbox or img, got {norm!r}")
    L = row.get(f"L_{norm}")
    if L is None or not np.isfinite(L):
        raise UsageError(f"pair {pair_id!r} has no {norm} reference length (no target box?); use --norm img")
    src_pts = np.asarray(row["source_points"], dtype=float).reshape(-1, 2)
    tgt_pts = np.asarray(row["target_points"], dtype=float).reshape(-1, 2)
    pred = np.asarray(row["predicted_points"], dtype=float).reshape(-1, 2)
    dist = np.linalg.norm(pred - tgt_pts, axis=1)
    ok = dist <= alpha * L * (1 + 1e-9)
    images = [load_rgb(Path(row["source"])), load_rgb(Path(row["target"]))]
    fig = _figure(10, 5)
    colours = _keypoint_colours(len(src_pts))
    for k, (img, title) in enumerate(zip(images, ("source", "target"))):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.imshow(np.asarray(img))
        ax.set_axis_off()
        ax.set_title(f"{title}: {Path(row[title]).name}", fontsize=9)
        if k == 0:
            ax.scatter(src_pts[:, 0], src_pts[:, 1], s=60, c=colours, edgecolors="white", linewidths=1.2)
        else:
            ax.scatter(tgt_pts[:, 0], tgt_pts[:, 1], s=60, c=colours, edgecolors="white", linewidths=1.2)
            ax.scatter(pred[:, 0], pred[:, 1], s=90, marker="X", c=np.where(ok, "lime", "red"),
                       edgecolors="black", linewidths=0.8)
            for p, t, good in zip(pred, tgt_pts, ok):
                if not good:
                    ax.plot([p[0], t[0]], [p[1], t[1]], color="red", linewidth=1, alpha=0.8)
            from matplotlib.lines import Line2D

            handles = [Line2D([], [], marker="o", linestyle="", markerfacecolor="grey", markeredgecolor="white",
                              label="ground truth (colour = keypoint)"),
                       Line2D([], [], marker="X", linestyle="", markerfacecolor="lime", markeredgecolor="black",
                              label=f"prediction, correct (≤ {alpha:g}·L_{norm})"),
                       Line2D([], [], marker="X", linestyle="", markerfacecolor="red", markeredgecolor="black",
                              label="prediction, wrong (line to its truth)")]
            ax.legend(handles=handles, loc="lower right", fontsize=7)
    fig.suptitle(f"{row.get('method', '?')} · pair {pair_id} · PCK@{alpha:g} ({norm}) "
                 f"{100 * ok.mean():.1f}% ({int(ok.sum())}/{len(ok)})", fontsize=10)
    fig.tight_layout()
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return {"file": str(out), "correct": ok.tolist(), "distances": dist.tolist(), "threshold": alpha * L,
            "method": row.get("method")}


def _keypoint_colours(n: int) -> Sequence:
    import colorsys

    return [colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.85, 0.95) for k in range(n)]
