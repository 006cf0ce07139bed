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

from .cache import atomic_write_bytes
from .errors import CorrbenchError, UsageError

SUMMARY_COLUMNS = ["method", "dataset", "split", "metric", "norm", "average", "alpha", "value", "n"]
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


def headline_table(summary: pd.DataFrame, cost: dict[str, dict[str, Any]] | None = None,
                   alpha: float = HEADLINE_ALPHA) -> pd.DataFrame:
    """Methods as rows, PCK@α (pooled per point) img and bbox per dataset as columns — the paper's layout."""
    sel = summary[(summary["metric"] == "pck") & (summary["average"] == "point")
                  & (summary["alpha"].astype(float).sub(alpha).abs() < 1e-9)]
    if sel.empty:
        return pd.DataFrame()
    sel = sel.assign(column=sel["dataset"] + " PCK@" + f"{alpha:g}" + " " + sel["norm"])
    order = list(dict.fromkeys(sel["method"]))
    table = sel.pivot_table(index="method", columns="column", values="value", aggfunc="first").reindex(order)
    cols = sorted(table.columns, key=lambda c: (c.split(" ")[0], 0 if c.endswith("img") else 1))
    table = table[cols]
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
