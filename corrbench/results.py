"""Results files: writers, the paper-style table, and the loader used by ``corrbench report``.

A run folder holds ``results.json`` (self-describing: versions, git hash, environment, resolved
configs, protocol, metrics, cost), ``predictions.jsonl`` (one line per method × pair),
``summary.csv`` (long format ``method,dataset,split,metric,norm,average,alpha,value,n``),
``breakdown.csv`` (the same per category and per difficulty flag) and ``summary.md``. Every file is
written to a temporary name and renamed, results.json last, so a folder with a results.json is whole.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .errors import CorrbenchError, UsageError
from .fsmode import atomic_write_bytes

SUMMARY_COLUMNS = ["method", "dataset", "split", "metric", "norm", "average", "alpha", "value", "n"]
#: summary.csv's bootstrap 95 % interval columns (empty where no interval is defined)
INTERVAL_COLUMNS = ["ci_low", "ci_high"]
HEADLINE_ALPHA = 0.10


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, set):
        return sorted(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, default=_json_default) + "\n" for r in rows)
    atomic_write_bytes(path, text.encode())


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_bytes(path, frame.to_csv(index=False, float_format="%.4f").encode())


def with_intervals(summary: pd.DataFrame, statistics: dict[str, Any]) -> pd.DataFrame:
    """``summary`` rows with ``ci_low``/``ci_high`` from a method's bootstrap (corrbench.stats)."""
    from .metrics import metric_key

    ci = statistics.get("ci95", {})
    bounds = [ci.get(avg, {}).get(metric_key(a, norm)) for avg, a, norm in
              zip(summary["average"], summary["alpha"], summary["norm"])]
    return summary.assign(ci_low=[b[0] if b else None for b in bounds], ci_high=[b[1] if b else None for b in bounds])


def headline_table(summary: pd.DataFrame, cost: dict[str, dict[str, Any]] | None = None,
                   alpha: float = HEADLINE_ALPHA, average: str = "point", intervals: bool = False) -> pd.DataFrame:
    """Methods as rows, PCK@α img and bbox per dataset as columns — the paper's layout.

    ``average`` is ``point`` (pooled over keypoints, the DHF table), ``image`` or ``category``;
    ``intervals`` adds a ``95% CI`` column after each number (from summary.csv's ci_low/ci_high).
    """
    sel = summary[(summary["metric"] == "pck") & (summary["average"] == average)
                  & (summary["alpha"].astype(float).sub(alpha).abs() < 1e-9)]
    if sel.empty:
        return pd.DataFrame()
    sel = sel.assign(column=sel["dataset"] + " PCK@" + f"{alpha:g}" + " " + sel["norm"])
    order = list(dict.fromkeys(sel["method"]))
    table = sel.pivot_table(index="method", columns="column", values="value", aggfunc="first").reindex(order)
    cols = sorted(table.columns, key=lambda c: (c.split(" ")[0], 0 if c.endswith("img") else 1))
    table = table[cols]
    if intervals and set(INTERVAL_COLUMNS) <= set(sel.columns):
        for col in reversed(cols):
            rows = sel[sel["column"] == col].set_index("method").reindex(order)
            text = [f"[{lo:.2f}, {hi:.2f}]" if pd.notna(lo) and pd.notna(hi) else "–"
                    for lo, hi in zip(rows["ci_low"], rows["ci_high"])]
            # "img 95% CI" beside "synthetic PCK@0.1 img": one dataset per run table, so the norm names it
            table.insert(table.columns.get_loc(col) + 1, f"{col.rsplit(' ', 1)[-1]} 95% CI", text)
    if cost:
        table["s/image"] = [cost.get(m, {}).get("extract_s_per_image") for m in table.index]
    table.index.name = "method"
    return table


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def render(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return table.to_csv(float_format="%.2f")
    if fmt == "md":
        shown = table.map(_fmt) if not table.empty else table
        return shown.to_markdown() + "\n"
    if fmt == "latex":
        try:
            import jinja2  # noqa: F401  (pandas renders LaTeX through jinja2)
        except ImportError as exc:
            raise CorrbenchError("LaTeX output needs jinja2: pip install 'corrbench[report]'") from exc
        return table.style.format(_fmt).to_latex(hrules=True)
    raise UsageError(f"unknown format {fmt!r}; use md, csv or latex")


def load_run(run_dir: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    run_dir = Path(run_dir)
    results_path, summary_path = run_dir / "results.json", run_dir / "summary.csv"
    if not results_path.is_file() or not summary_path.is_file():
        raise UsageError(f"{run_dir} is not a finished corrbench run (results.json and summary.csv are needed)")
    try:
        results = json.loads(results_path.read_text())
        summary = pd.read_csv(summary_path)
    except (json.JSONDecodeError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CorrbenchError(f"{run_dir}: cannot read results: {exc}") from exc
    if not isinstance(results, dict) or not isinstance(results.get("methods", {}), dict):
        raise CorrbenchError(f"{results_path}: not a corrbench results file "
                             "(expected an object with a 'methods' object)")
    missing = set(SUMMARY_COLUMNS) - set(summary.columns)
    if missing:
        raise CorrbenchError(f"{summary_path}: missing columns {', '.join(sorted(missing))}")
    return results, summary


# ------------------------------------------------------------------------------------------------
# results.json: assembled here, from what the runner measured
# ------------------------------------------------------------------------------------------------
def git_hash() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str) -> dict[str, Any]:
    """Versions and the device, for results.json."""
    import sys
    from importlib import metadata

    import torch

    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": sys.platform, "torch": torch.__version__,
                           "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    for pkg in ("diffusers", "transformers", "timm", "kornia", "numpy", "pandas"):
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return env



def method_entry(descriptor, *, plugin: str, plugin_version: str, config_hash: str, weights: str | None, readout,
                 metrics: dict[str, float], per_category: dict[str, Any], n_pairs: int, n_keypoints: int,
                 cost: dict[str, Any], cache: str | None, cache_key: dict[str, Any]) -> dict[str, Any]:
    """One method's entry of results.json: what ran (code, config, weights, readout) and what it scored."""
    return {
        "plugin": plugin,
        "plugin_version": plugin_version,
        "method_version": descriptor.version,
        "config": descriptor.config,
        "config_hash": config_hash,
        "weights": weights,
        "preprocess": descriptor.input_preprocessing().as_dict(),
        "readout": readout.name,
        "readout_config": readout.config,
        "readout_version": readout.version,
        "info": descriptor.run_info(),
        "metrics": metrics,
        "per_category": per_category,
        "n_pairs": n_pairs,
        "n_keypoints": n_keypoints,
        "cost": cost,
        "cache": cache,
        # the full feature-cache key, so a reader can tell exactly what a cached number depended on
        "cache_key": {**cache_key, "readout": readout.identity()},
    }


def assemble_results(dataset: dict[str, Any], methods: dict[str, Any], *, alphas, compare: str, device: str,
                     processes: int, seconds: float, protocol: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole results.json (lm-eval style: it describes itself without the command line)."""
    import datetime as _dt
    import sys

    from . import __version__

    return {
        "corrbench_version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_hash": git_hash(),
        "command": sys.argv,
        "env": {**environment(device), "processes": processes},
        "dataset": dataset,
        "protocol": {**(protocol or {"name": "dhf"}), "alphas": list(alphas), "compare": compare,
                     "frame": "original target image",
                     "also_logged": "pck@0.10_img_loadframe: distances and L = max(load H, W) in the target load "
                                    "frame, as the DHF notebooks score (docs/protocol.md#p11-load-frame-scoring)",
                     "norms": {"bbox": "max side of the target box", "img": "max(W, H) of the target image"},
                     "averages": {"point": "pooled over keypoints", "image": "mean of per-pair accuracy",
                                  "category": "mean over categories of pooled per-category PCK"}},
        "higher_is_better": {"pck": True},
        "methods": methods,
        "total_seconds": seconds,
    }


def write_run_folder(out: Path, results: dict[str, Any], summary: pd.DataFrame, breakdown: pd.DataFrame,
                     table: pd.DataFrame, predictions: Iterable[dict[str, Any]]) -> None:
    """Every file of a run folder, each atomically; results.json last, so its presence marks a complete run."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "predictions.jsonl", predictions)
        write_csv(out / "summary.csv", summary)
        write_csv(out / "breakdown.csv", breakdown)
        atomic_write_bytes(out / "summary.md", render(table, "md").encode())
        write_json(out / "results.json", results)
    except OSError as exc:  # disk full, folder removed or made read-only during the run
        raise CorrbenchError(f"could not write the results to {out}: {exc.strerror or exc}"
                             + (f" ({exc.filename})" if exc.filename else "")) from exc
