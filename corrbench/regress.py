"""The CI regression lane: a small deterministic run compared with committed PCK numbers.

What runs: the embedded ``synthetic`` dataset (test split, first :data:`LIMIT` pairs) with the
weight-free methods and tiny random-weight models built in-process with fixed seeds — a tiny Stable
Diffusion pipeline (``corrbench.testing.sd``) for ``sd-layer-4`` / ``sd-concat-all``, a seeded random
DHF aggregation network saved in the official checkpoint format for ``dhf`` / ``dhf-one-step``, and
timm's ``test_vit`` with random weights for ``dino``. Features are recomputed every time (no cache), so
the lane checks extraction, readout and PCK end to end. It takes about a minute on 2 CPU cores.

The lane is deterministic on one machine, but not across CPUs: float32 kernels (SIMD width, thread
count) round differently, and a keypoint whose best and second-best target pixels are nearly equally
similar can then match elsewhere. So the check is per keypoint. The baseline records, per method and
keypoint, its correctness at every checked PCK threshold and the *margins* of its nearest-neighbour
match (:func:`corrbench.readout.match_margins`: best cosine similarity minus the best one more than a
pixel away — the far margin — and minus the second best anywhere — the local margin). A keypoint is a
*near-tie* in a cell when, in the baseline or in this run, its far margin is below :data:`EPS`, or its
local margin is below :data:`EPS` and a one-pixel move of its prediction could cross that cell's
threshold. Every other keypoint must keep its exact correctness in every cell (a change is listed by
method, pair and keypoint), and each PCK cell may move by at most :data:`TOLERANCE` plus one keypoint's
share (100 / n points) per near-tie in it. :data:`EPS` is far above the similarity drift measured
between CPU capabilities and thread counts (see its comment), so the lane passes on any CPU with the
pinned torch, and a real change to a feature or to the readout still fails it.

When a change is intended, update the baseline with one command and commit the file; the diff shows
up in review::

    python -m corrbench.regress --update      # or: corrbench regress --update
    git diff benchmarks/baselines/ci-synthetic.json
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .compare import BASELINE_FORMAT, LANE_TOLERANCE, Comparison, cells_from_baseline, compare_cells
from .errors import CorrbenchError

DATASET = "synthetic"
SPLIT = "test"
LIMIT = 30  # the first 30 pairs: 6 images, 270 keypoints (one keypoint = 0.37 PCK points)
METHODS = ("dsift", "colour-patch", "random-conv", "sd-layer-4", "sd-concat-all", "dhf", "dhf-one-step", "dino")
#: allowed change, PCK points, either direction, on top of the near-ties' share (see the module docstring).
#: Below one keypoint (0.37 points): a moved stable match fails.
TOLERANCE = LANE_TOLERANCE
#: near-tie threshold on the cosine-similarity margins of a match (cosines lie in [-1, 1]). Measured on the
#: lane between ATEN_CPU_CAPABILITY=default and avx2 and 1 or 2 threads: any single similarity moved by at
#: most 1.0e-4 (sd-layer-4, whose float16-cached features flip a rounding step now and then; the float32
#: methods ≤ 2.3e-5) and any margin by at most 2.3e-5. A match can only move when its margin changes by
#: more than the margin itself, so 1e-3 is 5× the worst bound (2 × 1.0e-4) and 43× the worst margin drift.
EPS = 1e-3
SEED = 0
#: recorded in the baseline for readers: the tiny SD's inversion steps and DHF's saved slots, as the SD and
#: DHF plugins' tiny configurations set them (corrbench_sd.tiny; the tiny DHF network weights the constant
#: layers of the tiny UNet 0, see corrbench_dhf.tiny.CONSTANT_LAYERS)
NUM_STEPS = 10
SAVE_INDICES = (9, 5, 0)


def default_baseline() -> Path:
    from .reproduce import default_baseline_path

    return default_baseline_path("ci-synthetic")


def tiny_models(workdir: str | os.PathLike, methods=None) -> dict[str, Any]:
    """``--set`` overrides selecting each registered method's tiny configuration (``tiny_config``).

    Every method that offers one takes part, built-in or third-party alike: the core asks the
    methods, it never names a family. The tiny models are written under ``workdir`` (once).
    """
    from .plugins import get_host

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    for entry in get_host().methods.entries():
        if methods is not None and entry.name not in methods:
            continue
        try:
            cls = entry.load()
        except CorrbenchError:
            continue  # a plugin whose extras are not installed
        cfg = cls.tiny_config(workdir)
        if cfg is not None:
            out.update({f"{entry.name}.{k}": v for k, v in cfg.items()})
    return out


def lane_overrides(models: dict[str, Any], methods=METHODS) -> dict[str, Any]:
    """The subset of :func:`tiny_models` overrides that the lane's methods take."""
    prefixes = tuple(f"{m}." for m in methods)
    return {k: v for k, v in models.items() if k.startswith(prefixes)}


@dataclass
class LaneRun:
    """What the check needs of a lane run: ``results.json`` and the ``predictions.jsonl`` rows."""

    results: dict[str, Any]
    predictions: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path | None = None


def run_lane(out_dir: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
             methods=METHODS, limit: int = LIMIT, progress: bool = False) -> LaneRun:
    """Run the lane in a temporary folder (models, no feature cache); the run folder is kept in ``out_dir``."""
    import torch

    from .runner import run_benchmark

    torch.manual_seed(SEED)  # nothing should depend on the global RNG; this makes sure it cannot vary
    with tempfile.TemporaryDirectory(prefix="corrbench-lane-") as tmp:
        overrides = lane_overrides(tiny_models(tmp), methods)
        run_dir = Path(out_dir) if out_dir is not None else Path(tmp) / "run"
        result = run_benchmark(list(methods), DATASET, split=SPLIT, data_root=data_root, overrides=overrides,
                               limit=limit, device="cpu", batch_size=8, out_dir=run_dir, no_cache=True,
                               progress=progress)
        return LaneRun(result.results, _read_jsonl(run_dir / "predictions.jsonl"),
                       Path(out_dir) if out_dir is not None else None)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as exc:
        raise CorrbenchError(f"{path}: cannot read the run's predictions: {exc}") from exc


def load_lane_run(run_dir: str | os.PathLike) -> LaneRun:
    """A finished run folder (``results.json`` + ``predictions.jsonl``) as a :class:`LaneRun`."""
    from .results import load_run

    run_dir = Path(run_dir)
    results, _summary = load_run(run_dir)
    preds = _read_jsonl(run_dir / "predictions.jsonl") if (run_dir / "predictions.jsonl").is_file() else []
    return LaneRun(results, preds, run_dir)


# --------------------------------------------------------------------------------------------------
# Per-keypoint records
# --------------------------------------------------------------------------------------------------
#: correctness symbols of one keypoint in one cell: wrong / right, and the same within one pixel step of
#: the threshold (a one-pixel move of the prediction, in the frame the cell measures, could flip it)
SYMBOLS = {(False, False): "0", (True, False): "1", (False, True): "-", (True, True): "+"}
CORRECT_SYMBOLS = "1+"
NEAR_THRESHOLD_SYMBOLS = "+-"
LOAD_FRAME_METRIC = "pck@0.10_img_loadframe"


def _cell_columns(results: dict[str, Any]) -> dict[str, tuple[float, str, str, str]]:
    """metric → (alpha, distance key, reference-length key, frame) of the cells checked per keypoint."""
    proto = results.get("protocol") or {}
    from .metrics import ALPHAS

    cols = {}
    for a in proto.get("alphas") or ALPHAS:
        for norm in ("img", "bbox"):
            cols[f"pck@{float(a):.2f}_{norm}"] = (float(a), "distances", f"L_{norm}", "original")
    cols[LOAD_FRAME_METRIC] = (0.10, "load_distances", "L_load", "load")
    return cols


def _margins_of(pred: dict[str, Any], key: str, n: int) -> list[float | None]:
    values = pred.get(key)
    if values is None:  # a pair-conditioned readout, or a prediction read from the cache: no margin known
        return [None] * n
    return [None if v is None else float(f"{float(v):.2g}") for v in values]


def keypoint_records(results: dict[str, Any], predictions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: ``pairs`` ([pair id, keypoints]), far/local ``margin`` lists, one symbol string per cell.

    The symbols (:data:`SYMBOLS`) are computed with the run's own comparison rule
    (:func:`corrbench.metrics.correct`), so they count exactly what the run's PCK counts.
    """
    import numpy as np

    from .metrics import correct

    compare_rule = (results.get("protocol") or {}).get("compare", "le")
    cols = _cell_columns(results)
    out: dict[str, dict[str, Any]] = {}
    for pred in predictions:
        method = pred["method"]
        rec = out.setdefault(method, {"pairs": [], "margin": [], "local_margin": [],
                                      "cells": {m: "" for m in cols}})
        dist = np.asarray(pred["distances"], dtype=np.float64)
        n = len(dist)
        rec["pairs"].append([str(pred["pair"]), n])
        rec["margin"] += _margins_of(pred, "margins", n)
        rec["local_margin"] += _margins_of(pred, "local_margins", n)
        for metric, (alpha, dkey, lkey, frame) in cols.items():
            if dkey not in pred or lkey not in pred:  # a run from before these fields existed
                rec["cells"].pop(metric, None)
                continue
            if metric not in rec["cells"]:
                continue
            d = np.asarray(pred[dkey], dtype=np.float64)
            ref = float("nan") if pred[lkey] is None else float(pred[lkey])
            thr = alpha * ref
            ok = correct(d, np.full(n, thr), compare_rule)
            step = math.sqrt(2) if frame == "load" else float(pred.get("pixel_step", float("inf")))
            near = np.abs(d - thr) <= step * (1 + 1e-6) + 1e-9 * abs(thr) if math.isfinite(thr) else np.zeros(n, bool)
            rec["cells"][metric] += "".join(SYMBOLS[(bool(o), bool(e))] for o, e in zip(ok, near))
    return out


def baseline_from_run(results: dict[str, Any], predictions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The baseline file's content: numbers rounded to 4 decimals, per-keypoint records, nothing volatile."""
    ds = results["dataset"]
    records = keypoint_records(results, predictions) if predictions else {}
    rows = []
    for m, entry in results["methods"].items():
        row = {"method": m, "keypoints": entry["n_keypoints"],
               "metrics": {ds["name"]: {k: round(float(v), 4) for k, v in sorted(entry["metrics"].items())}}}
        if m in records:
            row["per_keypoint"] = records[m]
        rows.append(row)
    return {
        "format": BASELINE_FORMAT,
        "name": "ci-synthetic",
        "title": "corrbench CI regression lane (python -m corrbench.regress)",
        "update": "python -m corrbench.regress --update  (review the diff of this file before committing)",
        "lane": {"dataset": DATASET, "split": SPLIT, "limit": LIMIT, "methods": list(METHODS), "seed": SEED,
                 "num_steps": NUM_STEPS, "save_indices": list(SAVE_INDICES), "tolerance": TOLERANCE, "eps": EPS},
        "check": ("per_keypoint: pairs in run order with their keypoint counts; margin / local_margin: cosine "
                  "gap of each match to the best pixel more than one pixel away / to the second best pixel "
                  "(null: none known); cells: one symbol per keypoint, 0 wrong, 1 right, - wrong and + right "
                  "within one pixel step of the threshold. Keypoints with a margin >= eps must keep their "
                  "correctness; see corrbench/regress.py"),
        "datasets": {ds["name"]: {"split": ds["split"], "pairs": ds["n_pairs"], "images": ds["n_images"]}},
        "environment": {"torch": results.get("env", {}).get("torch"), "python": platform.python_version()},
        "rows": rows,
    }


def dumps_baseline(obj: Any) -> str:
    """JSON with two-space indents, but lists of numbers/strings on one line (a readable diff)."""

    def enc(v: Any, pad: str) -> str:
        if isinstance(v, dict) and v:
            inner = ",\n".join(f"{pad}  {json.dumps(k)}: {enc(x, pad + '  ')}" for k, x in v.items())
            return "{\n" + inner + "\n" + pad + "}"
        if isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v):
            return "[\n" + ",\n".join(f"{pad}  {enc(x, pad + '  ')}" for x in v) + "\n" + pad + "]"
        return json.dumps(v, separators=(", ", ": "))

    return enc(obj, "") + "\n"


# --------------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------------
@dataclass
class KeypointChange:
    method: str
    pair: str
    index: int  # keypoint index within the pair
    metric: str
    before: str  # "right" / "wrong"
    after: str
    margin: float | None  # the smaller far margin of the two sides


@dataclass
class LaneCheck:
    """The verdict: the cell comparison (per-cell tolerances) plus the stable keypoints that changed."""

    comparison: Comparison
    changes: list[KeypointChange]
    problems: list[str]  # records that could not be lined up (another pair list, a method without records)
    near_ties: dict[tuple[str, str, str], int]
    eps: float

    @property
    def ok(self) -> bool:
        return self.comparison.ok and not self.changes and not self.problems

    @property
    def failures(self):
        return self.comparison.failures

    @property
    def table(self):
        return self.comparison.table

    def render(self, fmt: str = "md", show: str = "all") -> str:
        text = self.comparison.render(fmt, show)
        if fmt != "md":
            return text
        lines = [text]
        if self.changes:
            lines.append(f"Stable keypoints (margin >= {self.eps:g}) whose correctness changed:\n")
            lines.append("| method | pair | keypoint | metric | before | after | margin |")
            lines.append("|---|---|---|---|---|---|---|")
            shown = self.changes[:50]
            for c in shown:
                margin = "–" if c.margin is None else f"{c.margin:.2g}"
                lines.append(f"| {c.method} | {c.pair} | {c.index} | {c.metric} | {c.before} | {c.after} | {margin} |")
            if len(self.changes) > len(shown):
                lines.append(f"\n… and {len(self.changes) - len(shown)} more")
            lines.append("")
        for p in self.problems:
            lines.append(f"problem: {p}")
        return "\n".join(lines) + ("\n" if len(lines) > 1 else "")

    def summary_line(self) -> str:
        line = self.comparison.summary_line()
        if not self.near_ties and not self.changes and not self.problems:
            return line
        per_method: dict[str, int] = {}
        for (method, _ds, _metric), n in self.near_ties.items():
            per_method[method] = max(per_method.get(method, 0), n)
        ties = ", ".join(f"{m} {n}" for m, n in per_method.items()) or "none"
        verdict = "PASS" if self.ok else "FAIL"
        if line.startswith(("PASS", "FAIL")):
            line = line.split(": ", 1)[1]
        return (f"{verdict}: {line}; stable keypoints (margin >= {self.eps:g}): {len(self.changes)} changed; "
                f"near-ties allowed per cell (at most, per method): {ties}"
                + (f"; {len(self.problems)} problem(s)" if self.problems else ""))


def _min_margin(a: float | None, b: float | None) -> float:
    vals = [v for v in (a, b) if v is not None]
    return min(vals) if vals else math.inf


def check(results_dir_or_result: Any, baseline: str | os.PathLike | dict[str, Any], tolerance: float = TOLERANCE,
          eps: float = EPS) -> LaneCheck:
    """Compare a lane run (a :class:`LaneRun`, or a run folder) with the baseline file, two-sided, per keypoint.

    A baseline without per-keypoint records (``corrbench-baseline/1``) is compared cell by cell with
    ``tolerance`` alone.
    """
    if isinstance(baseline, dict):
        obj, source = baseline, "baseline"
    else:
        try:
            obj, source = json.loads(Path(baseline).read_text(encoding="utf-8")), str(baseline)
        except (OSError, json.JSONDecodeError) as exc:
            raise CorrbenchError(f"{baseline}: cannot read the baseline: {exc}") from exc
    base = cells_from_baseline(obj, source)
    run = results_dir_or_result if hasattr(results_dir_or_result, "results") else load_lane_run(results_dir_or_result)
    ours_obj = baseline_from_run(run.results, getattr(run, "predictions", None))
    ours = cells_from_baseline(ours_obj, "this run")
    ours_records = {r["method"]: r.get("per_keypoint") for r in ours_obj["rows"]}
    changes: list[KeypointChange] = []
    problems: list[str] = []
    near_ties: dict[tuple[str, str, str], int] = {}
    tolerances: dict[tuple[str, str, str], float] = {}
    dataset = str(run.results["dataset"]["name"])
    for row in obj.get("rows", []):
        method, before = row["method"], row.get("per_keypoint")
        if not before or method not in run.results.get("methods", {}):
            continue  # no records to check, or the method is missing (its cells fail as MISSING)
        after = ours_records.get(method)
        if not after:
            problems.append(f"{method}: the baseline has per-keypoint records, this run none (no predictions.jsonl?)")
            continue
        if before["pairs"] != after["pairs"]:
            problems.append(f"{method}: the run's pairs or keypoint counts differ from the baseline's")
            continue
        ids = [(pair, k) for pair, n in before["pairs"] for k in range(n)]
        far = [_min_margin(a, b) for a, b in zip(before["margin"], after["margin"])]
        local = [_min_margin(a, b) for a, b in zip(before["local_margin"], after["local_margin"])]
        for metric, b_sym in before["cells"].items():
            r_sym = after["cells"].get(metric)
            if r_sym is None or len(r_sym) != len(b_sym) or len(b_sym) != len(ids):
                problems.append(f"{method} {metric}: no matching per-keypoint record in this run")
                continue
            ties = 0
            for k, (bs, rs) in enumerate(zip(b_sym, r_sym)):
                if far[k] < eps or (local[k] < eps and (bs in NEAR_THRESHOLD_SYMBOLS or rs in NEAR_THRESHOLD_SYMBOLS)):
                    ties += 1  # may move across CPUs: counted in the cell's tolerance instead
                elif (bs in CORRECT_SYMBOLS) != (rs in CORRECT_SYMBOLS):
                    word = lambda s: "right" if s in CORRECT_SYMBOLS else "wrong"  # noqa: E731
                    changes.append(KeypointChange(method, ids[k][0], ids[k][1], metric, word(bs), word(rs),
                                                  None if math.isinf(far[k]) else far[k]))
            key = (method, dataset, metric)
            near_ties[key] = ties
            tolerances[key] = tolerance + 100.0 * ties / max(len(ids), 1)
    cmp = compare_cells(base, ours, tolerance=tolerance, two_sided=True, tolerances=tolerances or None)
    if tolerances:
        cmp.table.insert(cmp.table.columns.get_loc("tolerance"), "near-ties",
                         [str(near_ties[k]) if k in near_ties else "–"
                          for k in zip(cmp.table["method"], cmp.table["dataset"], cmp.table["metric"])])
    return LaneCheck(cmp, changes, problems, near_ties, eps)


def main(update: bool = False, baseline: str | os.PathLike | None = None, tolerance: float | None = None,
         out_dir: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
         echo: Callable[[str], None] = print) -> bool:
    """Run the lane; check it (True when it passes) or, with ``update``, rewrite the baseline."""
    from .fsmode import atomic_write_bytes

    path = Path(baseline) if baseline else default_baseline()
    tol = TOLERANCE if tolerance is None else float(tolerance)
    if not update and not path.is_file():
        raise CorrbenchError(f"{path}: no baseline to compare with; create it with python -m corrbench.regress --update")
    started = time.perf_counter()
    result = run_lane(out_dir=out_dir, data_root=data_root)
    echo(f"lane: {len(METHODS)} methods on {DATASET}/{SPLIT}, {result.results['dataset']['n_pairs']} pairs, "
         f"{time.perf_counter() - started:.0f} s")
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, dumps_baseline(baseline_from_run(result.results, result.predictions)).encode())
        echo(f"wrote {path}; review `git diff {path}` and commit it")
        return True
    cmp = check(result, path, tol)
    echo(cmp.render("md", "all"))
    echo(cmp.summary_line())
    return cmp.ok


if __name__ == "__main__":  # python -m corrbench.regress [--update] [--baseline PATH] ...
    from .cli_reproduce import regress, standalone

    standalone(regress, prog="python -m corrbench.regress")
