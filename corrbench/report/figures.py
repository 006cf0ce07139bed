"""The report's figures, each returned as a ``data:image/...;base64,`` URI so the HTML needs no other file."""

from __future__ import annotations

import base64
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..plots import PlotContext, figure
from . import data


def to_uri(fig, dpi: int = 90, fmt: str = "png") -> str:
    """PNG for charts (sharp lines); JPEG for the photo galleries (a tenth of the size)."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        fig.savefig(buf, format="jpeg", dpi=dpi, pil_kwargs={"quality": 82})
    else:
        fig.savefig(buf, format="png", dpi=dpi)
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _label(run: data.RunData, method: str, several_runs: bool) -> str:
    return f"{method} ({run.label})" if several_runs else method


def curves(runs: list[data.RunData]) -> dict[str, str]:
    """PCK against α, one panel per norm, one line per method (solid: per point, dashed: per image)."""
    out = {}
    several = len(runs) > 1
    fig = figure(11, 4)
    for k, norm in enumerate(("bbox", "img")):
        ax = fig.add_subplot(1, 2, k + 1)
        lines = [(run, method) for run in runs for method in run.methods]
        for i, (run, method) in enumerate(lines):
            for average, style in (("point", "-"), ("image", "--")):  # one colour per method, style per average
                xs, ys = data.curve(run, method, norm, average)
                if xs:
                    ax.plot(xs, ys, style, color=f"C{i % 10}", marker="o" if len(xs) < 8 else None, markersize=3,
                            label=f"{_label(run, method, several)}, per {average}")
        ax.set_xlabel(f"α (fraction of L_{norm})")
        ax.set_ylabel("PCK (%)")
        ax.set_title(f"PCK@α, {norm} normalisation", fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out["curves"] = to_uri(fig)
    return out


def categories(run: data.RunData, metric: str) -> str | None:
    """Grouped horizontal bars: PCK per category, one bar per method."""
    per = {m: data.per_category(run, m, metric) for m in run.methods}
    cats = sorted({c for v in per.values() for c in v})
    if not cats:
        return None
    methods = list(per)
    fig = figure(8, 1.0 + 0.35 * len(cats) * max(1, len(methods)) ** 0.6)
    ax = fig.add_subplot(1, 1, 1)
    h = 0.8 / len(methods)
    y = np.arange(len(cats))
    for i, m in enumerate(methods):
        ax.barh(y + i * h, [per[m].get(c, np.nan) for c in cats], height=h, label=m)
    ax.set_yticks(y + h * (len(methods) - 1) / 2, cats, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (%), pooled per keypoint within the category")
    ax.set_xlim(0, 100)
    ax.legend(fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return to_uri(fig)


def difficulty(run: data.RunData, metric: str, average: str) -> str | None:
    """One panel per difficulty flag (breakdown.csv): PCK per level, one bar per method."""
    table = data.difficulty(run, metric, average)
    if table.empty:
        return None
    groups = list(dict.fromkeys(table["group"]))
    methods = list(dict.fromkeys(table["method"]))
    fig = figure(3.2 * len(groups) + 0.5, 3.2)
    for k, group in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), k + 1)
        sub = table[table["group"] == group]
        levels = sorted(dict.fromkeys(sub["level"].astype(str)))
        x = np.arange(len(levels))
        w = 0.8 / len(methods)
        for i, m in enumerate(methods):
            vals = {str(lv): v for lv, v in zip(sub[sub["method"] == m]["level"], sub[sub["method"] == m]["value"])}
            ax.bar(x + i * w, [vals.get(lv, np.nan) for lv in levels], width=w, label=m)
        ax.set_xticks(x + w * (len(methods) - 1) / 2, levels)
        ax.set_title(group, fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
        if k == 0:
            ax.set_ylabel(f"{metric} (%)")
            ax.legend(fontsize=7)
    fig.tight_layout()
    return to_uri(fig)


def cost(rows: list[dict[str, Any]], metric: str) -> str | None:
    """Seconds per image (log scale) against the headline PCK, with CI bars where known."""
    pts = [r for r in rows if r["s_per_image"] and r["value"] is not None]
    if not pts:
        return None
    fig = figure(6.5, 4)
    ax = fig.add_subplot(1, 1, 1)
    several = len({r["run"] for r in pts}) > 1
    for r in pts:
        err = None
        if r["ci_low"] is not None and r["ci_high"] is not None:
            err = [[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]]
        ax.errorbar([r["s_per_image"]], [r["value"]], yerr=err, fmt="o", capsize=3)
        ax.annotate(f"{r['method']} ({r['run']})" if several else r["method"], (r["s_per_image"], r["value"]),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("feature extraction, s/image (log scale; lower is cheaper)")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return to_uri(fig)


def match(row: dict[str, Any], alpha: float, norm: str, compare: str, height: int = 220) -> str | None:
    """One gallery picture, drawn with PIL (a tenth of matplotlib's time: a report draws dozens).

    Source and target side by side at ``height`` pixels; ground truth as circles in each keypoint's
    colour, predictions as crosses (green correct, red wrong, a red line to its truth). The same
    picture as ``corrbench plot matches``, without axes. None (with a warning) when an image is gone.
    """
    from PIL import Image, ImageDraw

    from ..images import load_rgb
    from ..plots import keypoint_colours, row_correct

    try:
        src, tgt = load_rgb(Path(row["source"])), load_rgb(Path(row["target"]))
        ok = row_correct(row, alpha, norm, compare)
    except Exception as exc:  # noqa: BLE001 - a moved dataset must not lose the rest of the report
        warnings.warn(f"gallery: pair {row.get('pair')} of {row.get('method')} not drawn: {exc}", stacklevel=2)
        return None
    scales = [height / im.height for im in (src, tgt)]
    sizes = [(max(1, round(im.width * sc)), height) for im, sc in zip((src, tgt), scales)]
    gap = 6
    canvas = Image.new("RGB", (sizes[0][0] + gap + sizes[1][0], height), "white")
    canvas.paste(src.convert("RGB").resize(sizes[0], Image.BILINEAR), (0, 0))
    canvas.paste(tgt.convert("RGB").resize(sizes[1], Image.BILINEAR), (sizes[0][0] + gap, 0))
    draw = ImageDraw.Draw(canvas)
    colours = [tuple(int(255 * c) for c in rgb) for rgb in keypoint_colours(len(row["source_points"]))]
    dx = sizes[0][0] + gap

    def at(p, k):  # image pixel centre -> canvas position
        return ((p[0] + 0.5) * scales[k] - 0.5 + (dx if k else 0), (p[1] + 0.5) * scales[k] - 0.5)

    r = max(3, height // 45)
    for p, t, q, good, col in zip(row["source_points"], row["target_points"], row["predicted_points"], ok, colours):
        for k, pt in ((0, p), (1, t)):
            x, y = at(pt, k)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=col, outline="white")
        (x, y), (tx, ty) = at(q, 1), at(t, 1)
        mark = (40, 220, 40) if good else (230, 30, 30)
        if not good:
            draw.line((x, y, tx, ty), fill=mark, width=1)
        for sx in (-1, 1):  # the cross, outlined in black so it shows on any background
            draw.line((x - r * sx, y - r, x + r * sx, y + r), fill="black", width=4)
            draw.line((x - r * sx, y - r, x + r * sx, y + r), fill=mark, width=2)
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plugin_figures(run: data.RunData, method: str, plots) -> list[dict[str, str]]:
    """The registered report figures (register_plots) that apply to one method of a run."""
    out = []
    ctx = PlotContext(run_dir=run.path, results=run.results, method=method, entry=run.methods.get(method, {}))
    for entry in plots.entries():
        try:
            fig = entry.load()(ctx)
        except Exception as exc:  # noqa: BLE001 - a broken plugin figure is left out, the report stays whole
            warnings.warn(f"report figure {entry.name!r} (plugin {entry.plugin}) failed for {method}: {exc}",
                          stacklevel=2)
            continue
        if fig is not None:
            out.append({"name": entry.name, "plugin": entry.plugin, "description": entry.description,
                        "uri": to_uri(fig)})
    return out
