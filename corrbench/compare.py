"""Cell-by-cell comparison of two sets of PCK numbers: results folders and/or baseline JSON files.

A *cell* is one number, keyed by ``(method, dataset, metric)`` where ``metric`` is the key used in
``results.json`` (``pck@0.10_img``, ``pck@0.10_bbox``, ...; pooled per keypoint, in percent). Either
side of a comparison may be

- a finished run folder (``results.json`` + ``summary.csv``, as written by ``corrbench run``);
- a folder of run folders (``corrbench reproduce`` writes one per dataset): their cells are merged;
- a baseline JSON file in the ``corrbench-baseline/1`` format (``benchmarks/baselines/*.json``):
  ``{"format": ..., "datasets": {name: {"split": ...}}, "rows": [{"method": m, "metrics":
  {dataset: {metric: value}}}]}``; or ``corrbench-baseline/2``, the same plus optional per-keypoint
  records in a row's ``"keypoints"`` (written by the CI lane, :mod:`corrbench.regress`; this module
  reads only the cells of either version).

A cell *drops* when ``results − baseline < −tolerance`` (PCK points). Cells present in the baseline but
not in the results are *missing*, and fail the comparison too: a method that silently disappeared must
not pass. ``two_sided`` also fails on rises (the CI lane: a deterministic run must not move at all).

Numbers measured under different protocols (``--protocol``: per image vs per keypoint, ``<`` vs ``≤``,
readout, resolution...) are not comparable, so a comparison whose two sides name different protocols for
a dataset is refused unless ``allow_mixed`` is set. A run's protocol is ``protocol.name`` in its
results.json, plus ``+knob`` for each knob the user changed; a baseline file may state one per dataset
(``"datasets": {"spair": {"split": ..., "protocol_preset": "dift"}}``; its free-text ``protocol`` describes the
pair list); runs and baselines that predate
protocols were measured under ``dhf``.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from .errors import CorrbenchError, UsageError

#: the format written now; /2 adds optional per-keypoint records to /1 (see regress.py), cells are unchanged
BASELINE_FORMAT = "corrbench-baseline/2"
#: the cells-only format (published tables: numbers without per-keypoint records)
CELLS_FORMAT = "corrbench-baseline/1"
READABLE_FORMATS = (CELLS_FORMAT, BASELINE_FORMAT)
DEFAULT_TOLERANCE = 1.0
#: reproducing a published number: the paper's SD rows draw a random VAE sample, so exact equality is not expected
PAPER_TOLERANCE = 2.0
#: the CI lane, on top of its near-ties' share: below one of its 270 keypoints (0.37 points)
LANE_TOLERANCE = 0.1

CellKey = tuple[str, str, str]  # (method, dataset, metric)


@dataclass
class Cells:
    """Numbers of one side of a comparison, plus what it says about its datasets (split, source)."""

    source: str
    values: dict[CellKey, float] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)  # dataset → split
    protocols: dict[str, str] = field(default_factory=dict)  # dataset → protocol label


def protocol_label(protocol: dict[str, Any] | None) -> str:
    """``dift``, or ``dift+readout,flip`` when the run changed knobs of its preset (see module docstring)."""
    protocol = protocol or {}
    name = str(protocol.get("name") or "dhf")
    changed = protocol.get("overrides") or []
    return f"{name}+{','.join(changed)}" if changed else name


# --------------------------------------------------------------------------------------------------
# Reading either side
# --------------------------------------------------------------------------------------------------
def load_cells(path: str | Path) -> Cells:
    """Cells of a run folder, a folder of run folders, or a baseline JSON file."""
    path = Path(path)
    if path.is_file():
        return _cells_from_json_file(path)
    if path.is_dir():
        if (path / "results.json").is_file():
            return _cells_from_run(path)
        runs = sorted(p.parent for p in path.glob("*/results.json"))
        if runs:
            merged = Cells(str(path))
            for run in runs:
                part = _cells_from_run(run)
                clash = set(part.values) & set(merged.values)
                if clash:
                    raise CorrbenchError(f"{path}: cells {_fmt_key(sorted(clash)[0])} appear in more than one run "
                                         f"folder ({run.name} and another); compare the run folders one by one")
                merged.values.update(part.values)
                merged.splits.update(part.splits)
                merged.protocols.update(part.protocols)
            return merged
        raise UsageError(f"{path} is neither a corrbench run folder (results.json), a folder of run folders, "
                         f"nor a baseline JSON file")
    raise UsageError(f"{path} does not exist")


def _cells_from_run(run_dir: Path) -> Cells:
    from .results import load_run

    results, _summary = load_run(run_dir)
    try:
        dataset = str(results["dataset"]["name"])
        split = str(results["dataset"].get("split", ""))
        methods = results["methods"]
    except (KeyError, TypeError) as exc:
        raise CorrbenchError(f"{run_dir / 'results.json'}: no dataset/methods section ({exc})") from exc
    cells = Cells(str(run_dir), splits={dataset: split}, protocols={dataset: protocol_label(results.get("protocol"))})
    for method, entry in methods.items():
        for metric, value in (entry.get("metrics") or {}).items():
            cells.values[(method, dataset, metric)] = _number(value, f"{run_dir}/results.json {method} {metric}")
    return cells


def _cells_from_json_file(path: Path) -> Cells:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorrbenchError(f"{path}: not valid JSON: {exc}") from exc
    if isinstance(obj, dict) and "methods" in obj and "dataset" in obj and "rows" not in obj:
        raise UsageError(f"{path} looks like a results.json: pass its run folder ({path.parent}) instead")
    return cells_from_baseline(obj, str(path))


def cells_from_baseline(obj: Any, source: str = "baseline") -> Cells:
    """Cells of a parsed ``corrbench-baseline/1`` or ``/2`` object; every problem names ``source``."""
    if not isinstance(obj, dict) or obj.get("format") not in READABLE_FORMATS:
        raise CorrbenchError(f"{source}: not a corrbench baseline file (expected \"format\": "
                             f"{' or '.join(repr(f) for f in READABLE_FORMATS)})")
    rows = obj.get("rows")
    if not isinstance(rows, list):
        raise CorrbenchError(f"{source}: \"rows\" must be a list")
    datasets = obj.get("datasets") or {}
    cells = Cells(source, splits={str(d): str((v or {}).get("split", "")) for d, v in datasets.items()},
                  protocols={str(d): str((v or {}).get("protocol_preset") or "dhf") for d, v in datasets.items()})
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("method"), str):
            raise CorrbenchError(f"{source}: rows[{i}] has no \"method\" name")
        method = row["method"]
        for dataset, metrics in (row.get("metrics") or {}).items():
            if not isinstance(metrics, dict):
                raise CorrbenchError(f"{source}: rows[{i}] ({method}) metrics of {dataset!r} must be an object")
            for metric, value in metrics.items():
                if value is None:  # a number the source does not report
                    continue
                key = (method, str(dataset), str(metric))
                if key in cells.values:
                    raise CorrbenchError(f"{source}: cell {_fmt_key(key)} is given twice")
                cells.values[key] = _number(value, f"{source} {method} {dataset} {metric}")
    return cells


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise CorrbenchError(f"{what}: {value!r} is not a finite number")
    return float(value)


def _fmt_key(key: CellKey) -> str:
    return "/".join(key)


# --------------------------------------------------------------------------------------------------
# Comparing
# --------------------------------------------------------------------------------------------------
STATUS_OK, STATUS_DROP, STATUS_RISE, STATUS_MISSING, STATUS_NEW = "ok", "DROP", "rise", "MISSING", "new"


@dataclass
class Comparison:
    baseline: Cells
    results: Cells
    tolerance: float
    two_sided: bool
    allow_missing: bool
    table: pd.DataFrame  # one row per cell
    notes: list[str]
    per_cell: bool = False  # tolerances differ per cell (the table's "tolerance" column)

    @property
    def failures(self) -> pd.DataFrame:
        bad = {STATUS_DROP} | ({STATUS_RISE} if self.two_sided else set()) | \
              (set() if self.allow_missing else {STATUS_MISSING})
        return self.table[self.table["status"].isin(bad)]

    @property
    def ok(self) -> bool:
        return self.failures.empty

    def counts(self) -> dict[str, int]:
        return {s: int((self.table["status"] == s).sum()) for s in
                (STATUS_OK, STATUS_DROP, STATUS_RISE, STATUS_MISSING, STATUS_NEW)}

    def summary_line(self) -> str:
        c = self.counts()
        compared = c[STATUS_OK] + c[STATUS_DROP] + c[STATUS_RISE]
        rule = "changes" if self.two_sided else "drops"
        verdict = "PASS" if self.ok else "FAIL"
        limit = "their tolerance" if self.per_cell else f"{self.tolerance:g} PCK points"
        return (f"{verdict}: {compared} cells compared, {c[STATUS_DROP]} dropped and {c[STATUS_RISE]} rose by more "
                f"than {limit} ({rule} fail), {c[STATUS_MISSING]} missing from the results"
                f"{' (allowed)' if self.allow_missing else ''}, {c[STATUS_NEW]} not in the baseline")

    def render(self, fmt: str = "md", show: str = "all") -> str:
        table = self.table if show == "all" else self.table[self.table["status"] != STATUS_OK]
        if fmt == "csv":
            return table.to_csv(index=False, float_format="%.4f")
        if fmt == "md":
            shown = table.copy()
            for col in ("baseline", "results", "delta", "tolerance"):
                if col in shown:
                    shown[col] = [_fmt_value(v, signed=(col == "delta")) for v in shown[col]]
            body = shown.to_markdown(index=False, disable_numparse=True) if not shown.empty else "(no cells differ)"
            return body + "\n"
        raise UsageError(f"unknown format {fmt!r}; use md or csv")


def _fmt_value(v: Any, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def select_metrics(keys: Iterable[CellKey], patterns: Sequence[str] | None) -> set[CellKey]:
    """Keep cells whose metric matches one of ``patterns`` (shell wildcards; ``img`` means ``*_img``)."""
    keys = set(keys)
    if not patterns:
        return keys
    pats = [p if any(ch in p for ch in "*?[@") else f"*_{p}" for p in patterns]
    return {k for k in keys if any(fnmatch.fnmatchcase(k[2], p) for p in pats)}


def compare_cells(baseline: Cells, results: Cells, tolerance: float = DEFAULT_TOLERANCE,
                  metrics: Sequence[str] | None = None, methods: Sequence[str] | None = None,
                  two_sided: bool = False, allow_missing: bool = False,
                  tolerances: dict[CellKey, float] | None = None, allow_mixed: bool = False) -> Comparison:
    """Compare cell by cell; ``tolerances`` overrides ``tolerance`` for the cells it names (a column of the table)."""
    if tolerance < 0 or not math.isfinite(tolerance):
        raise UsageError(f"--tolerance must be a non-negative number of PCK points, got {tolerance}")
    mixed = check_protocols(baseline, results, allow_mixed)
    keys = select_metrics(set(baseline.values) | set(results.values), metrics)
    if methods:
        keys = {k for k in keys if k[0] in set(methods)}
    if metrics and not keys:
        raise UsageError(f"--metrics {','.join(metrics)} matches no cell; metrics present: "
                         f"{', '.join(sorted({k[2] for k in set(baseline.values) | set(results.values)}))}")
    rows = []
    for key in sorted(keys):
        b, r = baseline.values.get(key), results.values.get(key)
        tol = tolerances.get(key, tolerance) if tolerances else tolerance
        if b is None:
            status, delta = STATUS_NEW, None
        elif r is None:
            status, delta = STATUS_MISSING, None
        else:
            delta = r - b
            # a tiny epsilon so that a difference of exactly the tolerance (after float noise) passes
            status = STATUS_DROP if delta < -tol - 1e-9 else STATUS_RISE if delta > tol + 1e-9 else STATUS_OK
        rows.append({"method": key[0], "dataset": key[1], "metric": key[2], "baseline": b, "results": r,
                     "delta": delta, "tolerance": tol, "status": status})
    columns = ["method", "dataset", "metric", "baseline", "results", "delta", "tolerance", "status"]
    if not tolerances:
        columns.remove("tolerance")
    table = pd.DataFrame(rows, columns=columns)
    notes = []
    notes.extend(mixed)
    for dataset in sorted({k[1] for k in keys}):
        bs, rs = baseline.splits.get(dataset), results.splits.get(dataset)
        if bs and rs and bs != rs:
            notes.append(f"dataset {dataset}: the baseline was measured on split {bs!r}, the results on {rs!r}")
    return Comparison(baseline, results, tolerance, two_sided, allow_missing, table, notes, per_cell=bool(tolerances))


def check_protocols(baseline: Cells, results: Cells, allow_mixed: bool = False) -> list[str]:
    """Refuse (UsageError) to compare a dataset measured under two protocols; with ``allow_mixed``, notes."""
    notes = []
    for dataset in sorted(set(baseline.protocols) & set(results.protocols)):
        bp, rp = baseline.protocols[dataset], results.protocols[dataset]
        if bp != rp:
            message = (f"dataset {dataset}: {baseline.source} was measured under protocol {bp!r}, "
                       f"{results.source} under {rp!r}")
            if not allow_mixed:
                raise UsageError(f"{message}; their numbers are not comparable (--allow-mixed-protocols to compare "
                                 "anyway)")
            notes.append(message + " (compared anyway: --allow-mixed-protocols)")
    return notes


def compare_paths(baseline: str | Path, results: str | Path, **kwargs: Any) -> Comparison:
    return compare_cells(load_cells(baseline), load_cells(results), **kwargs)
