"""``corrbench leaderboard`` on a real small synthetic run, through the CLI: ranking, numbers, paired tests, refusals."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

#: read when a command runs, so the session's isolated data and cache folders (conftest) are used
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def corrbench(*args, check=True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "corrbench", *map(str, args)], capture_output=True, text=True,
                         env={**os.environ, **THREADS}, timeout=300)
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("leaderboard") / "run"
    res = corrbench("run", "--limit", 12, "--out", out)
    # a run ends by saying where its results are and how to see them
    assert f"results: {out}" in res.stdout and f"corrbench report {out} --html {out / 'report.html'}" in res.stderr
    return out


def independent_pck(run_dir, alpha=0.1, norm="bbox") -> dict[str, float]:
    """PCK@α pooled per keypoint, in float64 from predictions.jsonl (no keypoint of this run sits on α·L)."""
    hits, total = {}, {}
    for line in (run_dir / "predictions.jsonl").read_text().splitlines():
        r = json.loads(line)
        d = np.asarray(r["distances"], dtype=np.float64)
        t = alpha * float(r[f"L_{norm}"])
        assert not np.any(np.abs(d - t) <= 1e-6 * t), "a keypoint on the threshold would make the count ambiguous"
        hits[r["method"]] = hits.get(r["method"], 0) + int(np.sum(d <= t))
        total[r["method"]] = total.get(r["method"], 0) + d.size
    return {m: 100.0 * hits[m] / total[m] for m in hits}


def test_csv_ranks_by_the_independent_pck_with_paired_tests(run_dir, tmp_path):
    out = tmp_path / "lb.csv"
    res = corrbench("leaderboard", run_dir, "--format", "csv", "--out", out, "--resamples", 500)
    assert f"leaderboard: {out}" in res.stdout
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    truth = independent_pck(run_dir)
    assert [r["method"] for r in rows] == sorted(truth, key=lambda m: -truth[m])
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    results = json.loads((run_dir / "results.json").read_text())
    for r in rows:
        assert float(r["value"]) == pytest.approx(truth[r["method"]], abs=1e-5)
        ci = (results["methods"][r["method"]].get("statistics") or {}).get("ci95", {}).get("point", {})
        if "pck@0.10_bbox" in ci:
            assert [float(r["ci_low"]), float(r["ci_high"])] == pytest.approx(ci["pck@0.10_bbox"], abs=1e-5)
    # the paired Δ between neighbours is the difference of the two PCKs (both methods scored every pair)
    top, second = rows[0], rows[1]
    assert float(top["delta_next"]) == pytest.approx(truth[top["method"]] - truth[second["method"]], abs=1e-5)
    assert top["separated_from_next"] == ("yes" if float(top["p_next"]) < 0.05 else "no")
    assert rows[-1]["separated_from_next"] == "–"


def test_markdown_and_html(run_dir, tmp_path):
    md = corrbench("leaderboard", run_dir, "--resamples", 200).stdout
    truth = independent_pck(run_dir)
    for m, v in truth.items():
        assert f"| {m} |" in md and f"| {v:.2f} |" in md
    assert "separated from next" in md
    corrbench("leaderboard", run_dir, "--format", "html", "--out", tmp_path / "lb.html", "--resamples", 200)
    page = (tmp_path / "lb.html").read_text()
    assert '<table id="leaderboard">' in page and all(f"<td>{m}</td>" in page for m in truth)


def test_mixing_protocols_or_splits_is_refused_unless_allowed(run_dir, tmp_path):
    other = tmp_path / "other-split"
    shutil.copytree(run_dir, other)
    results = json.loads((other / "results.json").read_text())
    split = results["dataset"]["split"]
    results["dataset"]["split"] = "val"
    (other / "results.json").write_text(json.dumps(results))
    res = corrbench("leaderboard", run_dir, other, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "split" in res.stderr and "--allow-mixed" in res.stderr
    res = corrbench("leaderboard", run_dir, other, "--allow-mixed", "--format", "csv", "--resamples", 200)
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 4 and {r["method"] for r in rows} == {f"{m} ({d})" for m in ("dsift", "colour-patch")
                                                               for d in (run_dir.name, other.name)}
    results["dataset"]["split"] = split
    results["protocol"]["name"] = "some-other-protocol"
    (other / "results.json").write_text(json.dumps(results))
    res = corrbench("leaderboard", run_dir, other, check=False)
    assert res.returncode == 2 and "protocol" in res.stderr
