"""The reproduced table: verdicts per row and the three output formats (Markdown, CSV, LaTeX) plus JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .plan import Plan, RowPlan


@dataclass
class Outcome:
    plan: Plan
    tolerance: float
    ours: dict[tuple[str, str, str], float]  # (method, dataset, norm) → PCK
    failures: dict[str, str]  # method → reason (whole row)
    dataset_failures: dict[tuple[str, str], str]  # (method, dataset) → reason
    run_dirs: dict[str, str]
    out_dir: Path | None = None
    reporting: bool = True  # False on the non-zero ranks of a distributed run

    def verdict(self, rp: RowPlan) -> str:
        if not rp.available:
            return "missing plugin"
        if rp.row.method in self.failures:
            return "failed"
        deltas = []
        for dp in self.plan.datasets:
            for norm in self.plan.table.norms:
                ours = self.ours.get((rp.row.method, dp.spec.name, norm))
                paper = rp.row.paper.get(dp.spec.name, {}).get(norm)
                if ours is not None and paper is not None:
                    deltas.append(ours - paper)
        if not deltas:
            return "failed"
        tol = self.tolerance + 1e-9
        if any(d < -tol for d in deltas):
            verdict = "below paper"
        elif any(d > tol for d in deltas):
            verdict = "above paper"
        else:
            verdict = "reproduced"
        if any((rp.row.method, dp.spec.name) in self.dataset_failures for dp in self.plan.datasets):
            verdict += " (partial)"
        return verdict

    def note(self, rp: RowPlan) -> str:
        if not rp.available:
            return rp.problem
        if rp.row.method in self.failures:
            return self.failures[rp.row.method]
        parts = [f"{d}: {msg}" for (m, d), msg in self.dataset_failures.items() if m == rp.row.method]
        return "; ".join(parts)

    # -- the table in three formats ------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        out = []
        for rp in self.plan.rows:
            rec: dict[str, Any] = {"row": rp.row.label, "method": rp.row.method, "layers_x_timesteps": rp.row.layers}
            for dp in self.plan.datasets:
                for norm in self.plan.table.norms:
                    paper = rp.row.paper.get(dp.spec.name, {}).get(norm)
                    ours = self.ours.get((rp.row.method, dp.spec.name, norm))
                    rec[f"{dp.spec.name}_{norm}_paper"] = paper
                    rec[f"{dp.spec.name}_{norm}_ours"] = ours
                    rec[f"{dp.spec.name}_{norm}_delta"] = None if ours is None or paper is None else ours - paper
            rec["verdict"] = self.verdict(rp)
            rec["note"] = self.note(rp)
            out.append(rec)
        return out

    def header_lines(self) -> list[str]:
        p = self.plan
        lines = [f"{p.table.title}: paper vs corrbench",
                 f"PCK@{p.table.alpha:g} in %, pooled over keypoints, original target frame, "
                 f"distance <= {p.table.alpha:g}·L. "
                 f"Cells: paper / ours (Δ = ours − paper). Verdict tolerance: ±{self.tolerance:g} points.",
                 f"Device {p.device}."]
        for dp in p.datasets:
            lines.append(f"{dp.spec.label}: split {dp.split}"
                         + ("" if dp.split == dp.spec.split else f" (NOT the paper's {dp.spec.split})")
                         + f", {dp.pairs} pairs. Protocol: {dp.spec.protocol}.")
        if not p.paper_protocol():
            changes = []
            if p.overrides:
                changes.append("overrides " + ", ".join(f"{k}={v}" for k, v in p.overrides.items()))
            if p.limit:
                changes.append(f"--limit {p.limit}")
            changes += [f"{dp.spec.name} split {dp.split}" for dp in p.datasets if dp.split != dp.spec.split]
            lines.append("WARNING: not the paper protocol (" + "; ".join(changes) + "): the numbers are not "
                         "comparable with the paper and the verdicts are only mechanical.")
        return lines

    def markdown(self) -> str:
        p = self.plan
        cols = ["Method", "Layers × steps"] + [f"{dp.spec.label} {n}" for dp in p.datasets for n in p.table.norms] \
            + ["Verdict", "Note"]
        lines = [f"# {self.header_lines()[0]}", ""] + [f"{line}  " for line in self.header_lines()[1:]] + [""]
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(cols) - 4) + ["---"] * 2) + "|")
        for rec in self.records():
            cells = [rec["row"] + f" (`{rec['method']}`)", rec["layers_x_timesteps"]]
            for dp in p.datasets:
                for n in p.table.norms:
                    cells.append(_cell(rec[f"{dp.spec.name}_{n}_paper"], rec[f"{dp.spec.name}_{n}_ours"]))
            cells += [rec["verdict"], _md_escape(rec["note"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        ref = f" ({p.table.deviations_doc})" if p.table.deviations_doc else ""
        lines.append(f"Known deviations and unknowns{ref}:")
        lines += [f"- {d}" for d in p.table.deviations]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        import pandas as pd

        return pd.DataFrame(self.records()).to_csv(index=False, float_format="%.2f")

    def latex(self) -> str:
        p = self.plan
        norms = p.table.norms
        n_metric = len(p.datasets) * len(norms)
        spec = "ll" + "rrr" * n_metric + "l"
        out = [f"% {self.header_lines()[0]} (generated by corrbench reproduce {p.table.name})",
               *[f"% {_latex_escape(line)}" for line in self.header_lines()[1:]],
               f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
        head1 = ["", ""] + [f"\\multicolumn{{{3 * len(norms)}}}{{c}}{{{_latex_escape(dp.spec.label)}}}"
                            for dp in p.datasets] + [""]
        head2 = ["", ""] + [f"\\multicolumn{{3}}{{c}}{{PCK@{p.table.alpha:g} {n}}}"
                            for _ in p.datasets for n in norms] + [""]
        head3 = ["Method", "Layers $\\times$ steps"] + ["paper", "ours", "$\\Delta$"] * n_metric + ["Verdict"]
        out += [" & ".join(head1) + " \\\\", " & ".join(head2) + " \\\\", "\\midrule", " & ".join(head3) + " \\\\",
                "\\midrule"]
        for rec in self.records():
            cells = [_latex_escape(rec["row"]), _latex_escape(rec["layers_x_timesteps"]).replace("×", "$\\times$")]
            for dp in p.datasets:
                for n in norms:
                    for part in ("paper", "ours", "delta"):
                        v = rec[f"{dp.spec.name}_{n}_{part}"]
                        cells.append("--" if v is None else (f"{v:+.2f}" if part == "delta" else f"{v:.2f}"))
            cells.append(_latex_escape(rec["verdict"]))
            out.append(" & ".join(cells) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(out) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.plan.table.name, "tolerance": self.tolerance, "plan": self.plan.as_dict(),
                "rows": self.records(), "run_dirs": self.run_dirs, "failures": self.failures,
                "dataset_failures": {f"{m}/{d}": v for (m, d), v in self.dataset_failures.items()}}

    def write(self, out_dir: Path) -> None:
        from ..fsmode import atomic_write_bytes

        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_dir / "table.md", self.markdown().encode())
        atomic_write_bytes(out_dir / "table.csv", self.csv().encode())
        atomic_write_bytes(out_dir / "table.tex", self.latex().encode())
        atomic_write_bytes(out_dir / "reproduce.json",
                           (json.dumps(self.as_dict(), indent=2, default=str) + "\n").encode())
        self.out_dir = out_dir


def _cell(paper: float | None, ours: float | None) -> str:
    p = "–" if paper is None else f"{paper:.2f}"
    if ours is None:
        return f"{p} / –"
    d = "" if paper is None else f" ({ours - paper:+.2f})"
    return f"{p} / {ours:.2f}{d}"


def _md_escape(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")[:300]


_LATEX_SPECIAL = {"&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_", "{": "\\{", "}": "\\}",
                  "~": "\\textasciitilde{}", "^": "\\textasciicircum{}", "\\": "\\textbackslash{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
