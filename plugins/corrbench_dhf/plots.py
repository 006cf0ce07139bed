"""Pictures: the mixing-weight heat map (the paper's interpretability figure), also as a report figure.

matplotlib is used through ``Figure`` objects with the Agg canvas, so nothing needs a display and no
global pyplot state is touched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from corrbench.errors import UsageError

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


def draw_mixing_weights(checkpoint_path: str | os.PathLike, title: str | None = None):
    """The heat map as a matplotlib Figure, with the matrix, labels and argmax."""
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
    return fig, {"matrix": matrix, "rows": rows, "cols": cols, "argmax": (int(top[0]), int(top[1])), **facts}


def plot_mixing_weights(checkpoint_path: str | os.PathLike, out_file: str | os.PathLike,
                        title: str | None = None) -> dict[str, Any]:
    """Write the heat map; returns the matrix and labels (for tests and the CLI's summary line)."""
    fig, info = draw_mixing_weights(checkpoint_path, title)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return {**info, "file": str(out)}


def _rect(cell: tuple[int, int]):
    from matplotlib.patches import Rectangle

    r, c = cell
    return Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2)


# -- the report's plot contract -------------------------------------------------------------------------------
def report_mixing_weights(ctx):
    """Mixing-weight heat map of a DHF method in a run (register_plots): drawn from its trained checkpoint.

    Returns None for methods without an aggregation network checkpoint (other plugins, random weights,
    or a checkpoint no longer on this machine).
    """
    info = ctx.entry.get("info") or {}
    path = info.get("aggregation_weights")
    if not isinstance(path, str) or not Path(path).is_file():
        return None
    fig, _ = draw_mixing_weights(path, title=f"{ctx.method}: softmax mixing weights of {Path(path).name}")
    return fig


# -- matches of one pair: moved to the core (``corrbench plot matches``); kept importable here ----------------
from corrbench.plots import keypoint_colours as _keypoint_colours  # noqa: E402,F401  (generate.py draws with it)
from corrbench.plots import load_predictions, plot_matches  # noqa: E402,F401
