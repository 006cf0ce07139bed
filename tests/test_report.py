"""``corrbench report --html`` and ``corrbench plot matches`` on a real small synthetic run, through the CLI.

Every number the page shows is checked against an independent float64 recomputation from
predictions.jsonl; the galleries must show pairs no other pair beats (best) or trails (worst).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

#: read when a command runs, so the session's isolated data and cache folders (conftest) are used
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
SECTIONS = ("headline", "curves", "categories", "difficulty", "cost", "galleries", "plugin-figures", "settings")


def corrbench(*args, check=True, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run the CLI; ``env`` adds variables, and a variable given as None is removed."""
    full = {**os.environ, **THREADS, **(env or {})}
    res = subprocess.run([sys.executable, "-m", "corrbench", *map(str, args)], capture_output=True, text=True,
                         env={k: v for k, v in full.items() if v is not None}, timeout=300, cwd=cwd)
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


#: as a user runs it: conftest turns the run's own report off for every other test
USER_DEFAULT = {"CORRBENCH_REPORT": None}


@pytest.fixture(scope="module")
def run_proc(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    return out, corrbench("run", "--limit", 12, "--out", out, "-q", env=USER_DEFAULT)


@pytest.fixture(scope="module")
def run_dir(run_proc):
    return run_proc[0]


@pytest.fixture(scope="module")
def report(run_dir):
    out = run_dir.parent / "report.html"
    res = corrbench("report", run_dir, "--html", out, "-q")
    assert f"report: {out}" in res.stdout
    return out.read_text()


def on_a_terminal(*args) -> str:
    """stderr of a command run with a terminal as stderr (tqdm draws only on a terminal)."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    master, slave = pty.openpty()
    # a new pseudo-terminal is 0 columns wide, where tqdm draws empty bars
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    chunks = []

    def drain():  # read while the command writes, so a full terminal buffer never blocks it
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the command closed its end
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = {k: v for k, v in {**os.environ, **THREADS}.items() if k != "TQDM_DISABLE"}
    res = subprocess.run([sys.executable, "-m", "corrbench", *map(str, args)], stdout=subprocess.PIPE, stderr=slave,
                         env=env, timeout=300)
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    assert res.returncode == 0
    return b"".join(chunks).decode(errors="replace")


# -- an independent reading of the run ----------------------------------------------------------------------------
def predictions(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines() if line.strip()]


def bracket(dists, L, alpha=0.1):
    """Keypoints surely correct (strictly inside α·L by a margin) and possibly correct (within the margin).

    The run counts d ≤ α·L; a distance equal to α·L up to round-off may land either way, so an
    independent count is a bracket, not a single number.
    """
    d = np.asarray(dists, dtype=np.float64)
    t = alpha * float(L)
    return int(np.sum(d < t * (1 - 1e-6))), int(np.sum(d <= t * (1 + 1e-6)))


def pck_bracket(rows, alpha=0.1, norm="bbox"):
    lo = hi = n = 0
    for r in rows:
        a, b = bracket(r["distances"], r[f"L_{norm}"], alpha)
        lo, hi, n = lo + a, hi + b, n + len(r["distances"])
    return 100.0 * lo / n, 100.0 * hi / n


class Page(HTMLParser):
    """The elements of the report the tests read: element ids, data-* attributes of rows and figures."""

    def __init__(self, text: str):
        super().__init__()
        self.ids, self.values, self.cis, self.figures, self.plugin_figures, self.imgs = set(), {}, {}, [], [], []
        self.rows = {}  # (run, method) -> (value, ci low, ci high), for reports of several runs
        self._method = self._run = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "tr" and "data-method" in a:
            self._method, self._run = a["data-method"], a["data-run"]
        if tag == "td" and a.get("class") == "value":
            self.values[self._method] = a["data-value"]
            self.rows[self._run, self._method] = (a["data-value"],)
        if tag == "td" and a.get("class") == "ci":
            self.cis[self._method] = (a["data-low"], a["data-high"])
            self.rows[self._run, self._method] += (a["data-low"], a["data-high"])
        if tag == "div" and a.get("class") == "method-gallery":
            self._method = a["data-method"]
        if tag == "figure" and a.get("class") in ("best", "worst"):
            self.figures.append((self._method, a["class"], a["data-pair"], float(a["data-pck"])))
        if tag == "figure" and a.get("class") == "plugin-figure":
            self.plugin_figures.append((a["data-method"], a["data-plot"]))
        if tag == "img":
            self.imgs.append(a.get("src", ""))


# -- the tests -------------------------------------------------------------------------------------------------
def test_report_has_every_section_and_is_self_contained(report):
    page = Page(report)
    assert set(SECTIONS) <= page.ids
    assert page.imgs and all(src.startswith("data:image/") for src in page.imgs), "every image is embedded"
    assert not re.search(r'<(link|script)[^>]+(href|src)=', report), "no external stylesheet or script"


def test_headline_equals_an_independent_pck(run_dir, report):
    page = Page(report)
    rows = predictions(run_dir)
    methods = sorted({r["method"] for r in rows})
    assert sorted(page.values) == methods
    for m in methods:
        lo, hi = pck_bracket([r for r in rows if r["method"] == m])
        shown = float(page.values[m])
        assert lo - 1e-9 <= shown <= hi + 1e-9, (m, shown, lo, hi)
        assert f">{shown:.2f}<" in report  # the visible cell rounds the same number


def test_ci_comes_from_the_run_and_brackets_the_value(run_dir, report):
    page = Page(report)
    results = json.loads((run_dir / "results.json").read_text())
    for m, entry in results["methods"].items():
        ci = (entry.get("statistics") or {}).get("ci95", {}).get("point", {}).get("pck@0.10_bbox")
        low, high = page.cis[m]
        if ci is None:  # a run written before the statistics existed: the interval is shown as missing
            assert (low, high) == ("", "")
            continue
        assert (float(low), float(high)) == pytest.approx(ci, abs=1e-9)
        assert float(low) <= float(page.values[m]) <= float(high)


def test_an_older_run_renders_and_the_dhf_plugin_figure_appears_only_where_it_applies(run_dir, report, tmp_path):
    """A run without statistics shows "–" for its CIs; the DHF plugin's registered figure (register_plots)
    is drawn for a method whose results name an aggregation checkpoint, and for no other."""
    import torch
    from corrbench_dhf.checkpoint import save_checkpoint
    from corrbench_dhf.network import AggregationNetwork

    torch.manual_seed(0)
    net = AggregationNetwork([8] * 12, 11, projection_dim=16, num_norm_groups=4)
    ckpt = save_checkpoint(tmp_path / "ckpt.pt", net, config={"num_timesteps": 50}, step=1)
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    results = json.loads((old / "results.json").read_text())
    for m in results["methods"].values():
        m.pop("statistics", None)
    results["protocol"].pop("headline", None)
    fake = json.loads(json.dumps(results["methods"]["dsift"]))
    fake["info"] = {"aggregation_weights": str(ckpt)}
    results["methods"]["dhf"] = fake
    (old / "results.json").write_text(json.dumps(results))
    bar, quiet = on_a_terminal("report", run_dir, old, "--html", tmp_path / "both.html"), \
        on_a_terminal("report", old, "--html", tmp_path / "quiet.html", "-q")
    assert "report:" in bar and "step" in bar and "report:" not in quiet  # the progress bar, silenced by -q
    both = Page((tmp_path / "both.html").read_text())
    new = Page(report)
    assert {m for r, m in both.rows if r == "old"} == {"dsift", "colour-patch", "dhf"}
    for m in ("dsift", "colour-patch", "dhf"):
        assert both.rows["old", m] == (new.values["dsift" if m == "dhf" else m], "", "")
    for m in ("dsift", "colour-patch"):
        assert both.rows[run_dir.name, m] == (new.values[m], *new.cis[m])
    assert both.plugin_figures == [("dhf", "mixing-weights")]


def test_galleries_show_the_truly_best_and_worst_pairs(run_dir, report):
    page = Page(report)
    rows = predictions(run_dir)
    for m in sorted({r["method"] for r in rows}):
        scores = {}
        for r in rows:
            if r["method"] == m:
                lo, hi = bracket(r["distances"], r["L_bbox"])
                assert lo == hi, "no keypoint of this run sits on the threshold"
                scores[r["pair"]] = 100.0 * lo / len(r["distances"])
        best = [f for f in page.figures if f[0] == m and f[1] == "best"]
        worst = [f for f in page.figures if f[0] == m and f[1] == "worst"]
        assert len(best) == 3 and len(worst) == 3
        assert not {f[2] for f in best} & {f[2] for f in worst}
        for _, _, pair, pck in best + worst:
            assert pck == pytest.approx(scores[pair], abs=1e-9)
        others = [s for p, s in scores.items() if p not in {f[2] for f in best}]
        assert min(f[3] for f in best) >= max(others)
        others = [s for p, s in scores.items() if p not in {f[2] for f in worst}]
        assert max(f[3] for f in worst) <= min(others)


def test_difficulty_and_settings_come_from_the_run(run_dir, report):
    import pandas as pd

    b = pd.read_csv(run_dir / "breakdown.csv")
    flags = sorted(set(b["group"]) - {"category"})
    assert flags, "the synthetic dataset annotates difficulty flags"
    for flag in flags:
        assert f">{flag}<" in report
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dataset"]["name"] in report and str(results["git_hash"] or "–") in report
    assert '&#34;bin_size&#34;' in report or '&quot;bin_size&quot;' in report  # dsift's config, escaped JSON


def test_a_run_writes_its_own_report_and_says_where(run_proc, report):
    """The default run ends with its report in the run folder: the page `corrbench report --html` draws
    (whose numbers the tests above check against independent recomputations), byte for byte."""
    run_dir, proc = run_proc
    page = run_dir / "report.html"
    assert proc.stdout.strip().splitlines()[-2:] == [f"results: {run_dir}", f"report: {page}"]
    assert page.read_text() == report
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.parametrize("how", ["flag", "env"])
def test_no_report_writes_none_and_says_how_to_make_one(run_dir, tmp_path, how):
    out = tmp_path / "run"
    args, env = (["--no-report"], USER_DEFAULT) if how == "flag" else ([], {"CORRBENCH_REPORT": "0"})
    proc = corrbench("run", "--limit", 2, "-m", "dsift", "--out", out, *args, env=env)
    assert (out / "results.json").is_file() and not (out / "report.html").exists()
    assert f"report: corrbench report {out} --html {out / 'report.html'}" in proc.stderr
    assert "report:" not in proc.stdout


def test_a_bad_report_setting_is_a_usage_error(tmp_path):
    proc = corrbench("run", "--limit", 2, "-m", "dsift", "--out", tmp_path / "run", check=False,
                     env={"CORRBENCH_REPORT": "sometimes"})
    assert proc.returncode == 2 and "sometimes" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_report_that_cannot_be_written_keeps_the_results_and_says_so(tmp_path):
    out = tmp_path / "run"
    (out / "report.html").mkdir(parents=True)  # a folder where the page should go: the rename is refused
    proc = corrbench("run", "--limit", 2, "-m", "dsift", "--out", out, "-q", check=False, env=USER_DEFAULT)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: the results are complete in {out}, but its report was not written: ")
    assert f"corrbench report {out} --html {out / 'report.html'}" in line
    assert json.loads((out / "results.json").read_text())["methods"]["dsift"]
    assert (out / "report.html").is_dir() and not list(out.glob(".*.tmp"))


def test_report_text_output_is_kept_and_takes_several_runs(run_dir):
    two = corrbench("report", run_dir, run_dir).stdout
    assert two.count(f"{run_dir}:") == 2 and two.count("| dsift") == 2 and "PCK@0.1 bbox" in two


def test_report_bad_input_is_one_line(run_dir, tmp_path):
    res = corrbench("report", tmp_path / "nowhere", "--html", tmp_path / "x.html", check=False)
    assert res.returncode == 2 and "nowhere" in res.stderr and "Traceback" not in res.stderr
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    with open(broken / "predictions.jsonl", "a") as fh:
        fh.write("{not json\n")
    res = corrbench("report", broken, "--html", tmp_path / "x.html", check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "predictions.jsonl line" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.html").exists()


def test_plot_matches_is_a_core_command_and_counts_like_the_run(run_dir, tmp_path):
    rows = [r for r in predictions(run_dir) if r["method"] == "dsift"]
    row = rows[0]
    out = tmp_path / "m.png"
    res = corrbench("plot", "matches", "--run", run_dir, "--pair", row["pair"], "--method", "dsift", "--out", out)
    lo, hi = bracket(row["distances"], row["L_bbox"])
    assert lo == hi and f"{lo}/{len(row['distances'])} correct" in res.stdout
    from PIL import Image

    assert Image.open(out).size[0] > 300
    res = corrbench("plot", "matches", "--run", run_dir, "--pair", row["pair"], check=False)
    assert res.returncode == 2 and "several methods" in res.stderr


def test_plot_contract_in_process_a_broken_figure_is_left_out_with_a_warning(run_dir, tmp_path):
    """register_plots through a plugin host: figures returned for the methods they apply to, None skipped,
    and one that raises named in a warning while the rest of the report is written."""
    import corrbench
    from corrbench.plugins import PluginHost, get_host, reset_host
    from corrbench.report import write_report

    seen = []

    class Plugin:
        @staticmethod
        @corrbench.hookimpl
        def register_plots(register):
            def bars(ctx):
                seen.append((ctx.method, ctx.entry["n_pairs"], ctx.run_dir))
                if ctx.method != "dsift":
                    return None
                fig = ctx.figure(3, 2)
                fig.add_subplot(1, 1, 1).bar([0, 1], [1, 2])
                return fig

            def broken(ctx):
                raise RuntimeError("no such tensor")

            register("bars", bars, description="two bars")
            register("broken", broken)

    previous = get_host()
    host = PluginHost()
    host.register_plugin(Plugin(), "test-plots")
    reset_host(host)
    try:
        with pytest.warns(UserWarning, match="'broken'.*no such tensor"):
            write_report([run_dir], tmp_path / "r.html", progress=False)
    finally:
        reset_host(previous)
    assert host.plugins["test-plots"].plots == ["bars", "broken"]
    assert sorted(m for m, _, _ in seen) == ["colour-patch", "dsift"] and all(n == 12 for _, n, _ in seen)
    page = Page((tmp_path / "r.html").read_text())
    assert page.plugin_figures == [("dsift", "bars")]
    assert "no such tensor" in (tmp_path / "r.html").read_text()


def test_gallery_ranking_ties_and_small_runs():
    """Ties in PCK go to the smaller mean normalised distance; with fewer than 2k pairs best and worst split them."""
    from corrbench.report.data import gallery

    def row(pair, dists, L=10.0):
        return {"pair": pair, "category": "c", "distances": dists, "L_bbox": L}

    rows = [row("a", [0.5, 5.0]), row("b", [0.2, 5.0]), row("c", [5.0, 6.0]), row("d", [0.1, 0.2]),
            row("e", [3.0, 9.0]), row("nobox", [0.0], L=float("nan"))]
    best, worst = gallery(rows, alpha=0.1, norm="bbox", k=2)
    assert [p["pair"] for p in best] == ["d", "b"]  # d: 100 %; a and b: 50 %, b nearer on average
    assert [p["pair"] for p in worst] == ["e", "c"]  # both 0 %, e farther on average (0.6 L against 0.55 L)
    best, worst = gallery(rows[:3], alpha=0.1, norm="bbox", k=3)
    assert [p["pair"] for p in best] == ["b", "a"] and [p["pair"] for p in worst] == ["c"]
