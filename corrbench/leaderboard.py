"""``corrbench leaderboard RUN …``: one ranking of the methods of several runs of one protocol.

Each row is a method of a run, ranked by the run's headline metric (``protocol.headline``, default
PCK@0.1 bbox pooled per point) with its bootstrap 95 % CI where the run recorded one. Neighbours in the
ranking are compared with a paired test on the pairs both evaluated (:func:`corrbench.stats.paired_difference`):
a p below 0.05 marks the upper one as separated from the next. Runs of different protocols, datasets,
splits or correctness rules are refused unless ``allow_mixed``: their numbers do not measure the same thing.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import CorrbenchError, UsageError
from .report import data

#: a neighbour is "separated" when the paired test's p is below this
SIGNIFICANCE = 0.05
COLUMNS = ["rank", "method", "run", "dataset", "split", "metric", "value", "ci_low", "ci_high", "n_pairs",
           "delta_next", "p_next", "separated_from_next"]


def _identity(run: data.RunData) -> tuple[str, str, str, str, str]:
    """What must agree between merged runs: protocol, dataset, split, headline and the ≤/< rule."""
    head = run.headline
    return (str(run.protocol.get("name", "default")), str(run.dataset.get("name", "?")),
            str(run.dataset.get("split", "?")), f"{head['metric']} per {head['average']}", run.compare)


def check_mixing(runs: list[data.RunData]) -> None:
    names = ("protocol", "dataset", "split", "headline", "compare")
    first = _identity(runs[0])
    for run in runs[1:]:
        other = _identity(run)
        for what, a, b in zip(names, first, other):
            if a != b:
                raise UsageError(f"leaderboard: {run.path} has {what} {b!r} but {runs[0].path} has {a!r}; "
                                 "runs of different protocols, datasets or splits do not rank together "
                                 "(--allow-mixed ranks them anyway)")


def build(run_dirs: list[Path], allow_mixed: bool = False, resamples: int = 2000, seed: int = 0,
          progress: bool = True) -> pd.DataFrame:
    """The ranking as a table (columns :data:`COLUMNS`), best first."""
    from tqdm.auto import tqdm

    from .stats import paired_difference

    if not run_dirs:
        raise UsageError("leaderboard: give at least one run folder")
    if resamples < 1:
        raise UsageError(f"--resamples must be at least 1, got {resamples}")
    runs = [data.load(p) for p in run_dirs]
    if not allow_mixed:
        check_mixing(runs)
    entries = []
    for run in runs:
        for row in data.headline_rows(run):
            entries.append({**row, "_run": run})
    if not entries:
        raise CorrbenchError("leaderboard: the runs hold no methods")
    counts = pd.Series([e["method"] for e in entries]).value_counts()
    for e in entries:  # the same method in two runs keeps both rows, told apart by the run
        e["label"] = e["method"] if counts[e["method"]] == 1 else f"{e['method']} ({e['run']})"
    entries.sort(key=lambda e: (-(e["value"] if e["value"] is not None else float("-inf")), e["label"]))
    pairs = list(zip(entries, entries[1:]))
    for upper, lower in tqdm(pairs, desc="paired tests", unit="test", disable=not progress or None, leave=False):
        alpha, norm = data.parse_metric(upper["metric"])
        a_rows, b_rows = upper["_run"].rows_of(upper["method"]), lower["_run"].rows_of(lower["method"])
        if not a_rows or not b_rows or upper["value"] is None or lower["value"] is None:
            continue
        try:
            test = paired_difference(a_rows, b_rows, alpha=alpha, norm=norm, average=upper["average"],
                                     resamples=resamples, seed=seed, compare=upper["_run"].compare)
        except UsageError:  # no shared pairs (mixed datasets) or different keypoints: no paired test
            continue
        upper["delta_next"], upper["p_next"] = test["delta"], test["p"]
        upper["separated_from_next"] = "yes" if test["p"] < SIGNIFICANCE else "no"
    rows = []
    for rank, e in enumerate(entries, 1):
        rows.append({"rank": rank, "method": e["label"], "run": e["run"], "dataset": e["dataset"], "split": e["split"],
                     "metric": f"{e['metric']} ({e['average']})", "value": e["value"], "ci_low": e["ci_low"],
                     "ci_high": e["ci_high"], "n_pairs": e["n_pairs"], "delta_next": e.get("delta_next"),
                     "p_next": e.get("p_next"), "separated_from_next": e.get("separated_from_next", "–")})
    return pd.DataFrame(rows, columns=COLUMNS)


def _f(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _display(table: pd.DataFrame) -> list[list[str]]:
    out = []
    for r in table.to_dict("records"):
        ci = f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}]" if r["ci_low"] is not None and r["ci_low"] == r["ci_low"] else "–"
        sep = {"yes": f"yes (p={_f(r['p_next'], 3)})", "no": f"no (p={_f(r['p_next'], 3)})"}.get(
            r["separated_from_next"], "–")
        out.append([str(r["rank"]), r["method"], f"{r['dataset']}/{r['split']}", _f(r["value"]), ci,
                    _f(r["n_pairs"]), _f(r["delta_next"]), sep])
    return out


HEADERS = ["rank", "method", "dataset/split", "PCK (%)", "95 % CI", "pairs", "Δ to next", "separated from next"]


def render(table: pd.DataFrame, fmt: str) -> str:
    """The ranking as Markdown, CSV (every column, full precision) or a standalone HTML page."""
    metric = table["metric"].iloc[0] if len(table) else ""
    note = (f"Ranked by {metric}. 'separated from next': a paired test on the pairs both methods evaluated "
            f"(bootstrap CI + sign-flip permutation) gives p < {SIGNIFICANCE:g}.")
    if fmt == "csv":
        buf = io.StringIO()
        table.to_csv(buf, index=False, float_format="%.6f")
        return buf.getvalue()
    rows = _display(table)
    if fmt == "md":
        lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---:" if h not in ("method", "dataset/split")
                                                                  else ":---" for h in HEADERS) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + f"\n\n{note}\n"
    if fmt == "html":
        head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>\n" for r in rows)
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>corrbench leaderboard</title>"
                "<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
                "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#eef4f8}</style>"
                f"</head><body><h1>corrbench leaderboard</h1><p>{html.escape(note)}</p>"
                f"<table id=\"leaderboard\"><tr>{head}</tr>\n{body}</table></body></html>\n")
    raise UsageError(f"unknown format {fmt!r}; use md, csv or html")
