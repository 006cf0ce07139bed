"""``corrbench report RUN … --html FILE``: gather the numbers and figures, render the template to one file."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable

from ..errors import CorrbenchError, UsageError, describe_os_error
from ..fsmode import atomic_write_bytes
from . import data

TEMPLATE = "template.html.j2"
#: best/worst pairs shown per method
GALLERY_K = 3


def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _environment():
    try:
        import jinja2
    except ImportError as exc:  # pragma: no cover - jinja2 is in the report extra
        raise UsageError("the HTML report needs jinja2 and matplotlib: pip install 'corrbench[report]'") from exc
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = fmt
    return env


def _settings(run: data.RunData) -> dict[str, Any]:
    """What ran: dataset, protocol, versions and each method's configuration, as pretty JSON blocks."""
    r = run.results
    methods = {m: {k: e.get(k) for k in ("plugin", "plugin_version", "method_version", "config", "weights",
                                         "readout", "readout_config", "preprocess", "info", "n_pairs",
                                         "n_keypoints", "cost") if k in e}
               for m, e in run.methods.items()}
    stats = {m: (e.get("statistics") or {}).get("bootstrap") for m, e in run.methods.items()
             if (e.get("statistics") or {}).get("bootstrap")}
    dump = lambda o: json.dumps(o, indent=2, default=str)  # noqa: E731
    return {"facts": [("corrbench", r.get("corrbench_version")), ("date", r.get("date")), ("git", r.get("git_hash")),
                      ("command", " ".join(map(str, r.get("command") or []))),
                      ("total seconds", fmt(data.finite(r.get("total_seconds")), 1))],
            "dataset": dump(run.dataset), "protocol": dump(run.protocol), "env": dump(r.get("env") or {}),
            "methods": dump(methods), "bootstrap": dump(stats) if stats else None}


def build_context(runs: list[data.RunData], plots=None, step: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Everything the template shows; ``step`` is called after each long piece (the progress bar)."""
    from . import figures

    all_rows = []
    sections = []
    for run in runs:
        head = run.headline
        alpha, norm = data.parse_metric(head["metric"])
        rows = data.headline_rows(run)
        all_rows += rows
        galleries = []
        for method in run.methods:
            best, worst = data.gallery(run.rows_of(method), alpha, norm, run.compare, GALLERY_K)
            pics = {}
            for kind, picks in (("best", best), ("worst", worst)):
                pics[kind] = [{"pair": p["pair"], "category": p["category"], "pck": p["pck"], "correct": p["correct"],
                               "n": p["n"], "uri": figures.match(p["row"], alpha, norm, run.compare)} for p in picks]
            galleries.append({"method": method, **pics})
            step(f"{run.label}: {method} gallery")
        extra = []
        if plots is not None:
            for method in run.methods:
                extra += [{"method": method, **f} for f in figures.plugin_figures(run, method, plots)]
        step(f"{run.label}: figures")
        sections.append({"label": run.label, "path": str(run.path), "dataset": run.dataset, "head": head,
                         "rows": rows, "categories": figures.categories(run, head["metric"]),
                         "difficulty": figures.difficulty(run, head["metric"], head["average"]),
                         "difficulty_table": data.difficulty(run, head["metric"], head["average"]).to_dict("records"),
                         "galleries": galleries, "plugin_figures": extra, "settings": _settings(run),
                         "alpha": alpha, "norm": norm})
    heads = {(s["head"]["metric"], s["head"]["average"]) for s in sections}
    metric, average = sorted(heads)[0]
    context = {"title": "corrbench report: " + ", ".join(s["label"] for s in sections), "runs": sections,
               "rows": all_rows, "metric": metric, "average": average, "mixed_headline": len(heads) > 1,
               "curves": figures.curves(runs)["curves"], "cost": figures.cost(all_rows, metric)}
    step("curves and cost")
    return context


def write_report(run_dirs: list[Path], out_file: Path, progress: bool = True) -> dict[str, Any]:
    """Render the report of ``run_dirs`` to ``out_file``; returns the template context (for tests)."""
    from tqdm.auto import tqdm

    if not run_dirs:
        raise UsageError("report: give at least one run folder")
    env = _environment()
    runs = [data.load(p) for p in run_dirs]
    from ..plugins import get_host

    plots = get_host().plots
    total = sum(len(r.methods) + 1 for r in runs) + 1
    with tqdm(total=total, desc="report", unit="step", disable=not progress or None, leave=False) as bar, \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        context = build_context(runs, plots, step=lambda s: (bar.set_postfix_str(s, refresh=False), bar.update()))
    context["warnings"] = sorted({str(w.message) for w in caught if "report figure" in str(w.message)
                                  or "gallery" in str(w.message)})
    for w in context["warnings"]:
        warnings.warn(w, stacklevel=2)
    html = env.get_template(TEMPLATE).render(**context)
    out = Path(out_file)
    try:  # atomic: an interrupted or refused write leaves the previous report (or none), never half a page
        atomic_write_bytes(out, html.encode("utf-8"))
    except OSError as exc:
        raise CorrbenchError(f"cannot write the report: {describe_os_error(exc)}") from exc
    return context
