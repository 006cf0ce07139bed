"""Bootstrap intervals, the paired test, curves and breakdowns against naive float64 loops.

The reference code below re-derives every number from predictions.jsonl-style rows with plain Python
loops; it shares only the documented resampling rule with corrbench.stats (numpy PCG64(seed), categories
in sorted order, one (resamples, m) block of indices each), which is what makes the intervals
reproducible across machines.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from corrbench import stats


def _rows(seed=0, n_pairs=30, categories=("bird", "cat", "dog")):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_pairs):
        k = int(rng.integers(2, 7))
        tgt = rng.uniform(0, 100, size=(k, 2))
        pred = tgt + rng.normal(0, 12, size=(k, 2))
        rows.append({"method": "m", "pair": f"p{i}", "category": categories[i % len(categories)],
                     "target_points": tgt.tolist(), "predicted_points": pred.tolist(),
                     "distances": np.linalg.norm(pred - tgt, axis=1).tolist(),
                     "L_bbox": float(rng.uniform(40, 120)), "L_img": 150.0,
                     "keypoint_ids": [str(j) for j in range(k)]})
    return rows


def _naive_correct(d, L, alpha, compare="le"):
    return d <= alpha * L * (1 + 1e-9) if compare == "le" else d < alpha * L * (1 - 1e-9)


def _naive_pck(rows, alpha, norm, average, compare="le"):
    if average == "point":
        hit = tot = 0
        for r in rows:
            for d in r["distances"]:
                hit += _naive_correct(d, r[f"L_{norm}"], alpha, compare)
                tot += 1
        return 100.0 * hit / tot
    accs = [sum(_naive_correct(d, r[f"L_{norm}"], alpha, compare) for d in r["distances"]) / len(r["distances"])
            for r in rows]
    return 100.0 * sum(accs) / len(accs)


def _naive_draws(rows, resamples, seed):
    """The documented rule, spelled out: per sorted category, a (resamples, m) block of indices."""
    rng = np.random.Generator(np.random.PCG64(seed))
    draws = [[] for _ in range(resamples)]
    for cat in sorted({r["category"] for r in rows}):
        members = [i for i, r in enumerate(rows) if r["category"] == cat]
        block = rng.integers(0, len(members), size=(resamples, len(members)))
        for b in range(resamples):
            draws[b].extend(members[j] for j in block[b])
    return draws


def _naive_interval(values):
    return np.percentile(np.asarray(values, dtype=np.float64), [2.5, 97.5])


@pytest.mark.parametrize("average", ["point", "image"])
def test_bootstrap_interval_equals_naive_loop(average):
    rows = _rows()
    got = stats.method_statistics(rows, (0.05, 0.10), "le", resamples=300, seed=3)
    draws = _naive_draws(rows, 300, 3)
    for alpha in (0.05, 0.10):
        for norm in ("bbox", "img"):
            values = [_naive_pck([rows[i] for i in d], alpha, norm, average) for d in draws]
            lo, hi = _naive_interval(values)
            key = f"pck@{alpha:.2f}_{norm}"
            assert got["ci95"][average][key] == pytest.approx([lo, hi], abs=1e-9)
            point = _naive_pck(rows, alpha, norm, average)
            assert lo <= point <= hi


def test_curve_category_mean_image_metrics_and_keypoint_ids_equal_naive():
    rows = _rows(seed=1)
    got = stats.method_statistics(rows, (0.10,), "lt", resamples=100)
    for i, a in enumerate(got["curve"]["alphas"]):
        assert a == pytest.approx(0.01 * (i + 1))
        for norm in ("bbox", "img"):
            assert got["curve"][norm]["point"][i] == pytest.approx(_naive_pck(rows, a, norm, "point", "lt"), abs=1e-9)
            assert got["curve"][norm]["image"][i] == pytest.approx(_naive_pck(rows, a, norm, "image", "lt"), abs=1e-9)
    cats = sorted({r["category"] for r in rows})
    mean = sum(_naive_pck([r for r in rows if r["category"] == c], 0.1, "bbox", "point", "lt") for c in cats) / len(cats)
    assert got["category_mean"]["pck@0.10_bbox"] == pytest.approx(mean, abs=1e-9)
    assert got["image_metrics"]["pck@0.10_img"] == pytest.approx(_naive_pck(rows, 0.1, "img", "image", "lt"), abs=1e-9)
    # per keypoint id: category/id slots
    hits, tot = 0, 0
    for r in rows:
        if r["category"] == "cat" and len(r["distances"]) > 1:
            hits += _naive_correct(r["distances"][1], r["L_bbox"], 0.1, "lt")
            tot += 1
    assert got["per_keypoint_id"]["cat/1"]["n"] == tot
    assert got["per_keypoint_id"]["cat/1"]["pck@0.10_bbox"] == pytest.approx(100.0 * hits / tot, abs=1e-9)


def test_swap_rate_counts_predictions_on_the_mirror_partner():
    tgt = [[10.0, 10.0], [90.0, 10.0], [50.0, 80.0]]  # left eye, right eye, nose
    base = {"method": "m", "category": "face", "target_points": tgt, "L_bbox": 100.0, "L_img": 100.0,
            "keypoint_ids": ["le", "re", "nose"], "mirror_index": [1, 0, -1]}
    swapped = [[90.0, 11.0], [10.0, 12.0], [50.0, 80.0]]  # both eyes on the other eye; the nose right
    half = [[10.0, 10.0], [11.0, 10.0], [0.0, 0.0]]  # left right; right eye on the left eye; nose far off
    rows = []
    for i, pred in enumerate((swapped, half)):
        d = np.linalg.norm(np.asarray(pred) - np.asarray(tgt), axis=1).tolist()
        rows.append({**base, "pair": f"p{i}", "predicted_points": pred, "distances": d})
    out = stats.swap_rate(stats.PairArrays.from_rows(rows), "le")
    # 4 keypoints have a partner (the eyes of both pairs); 3 of them landed on it
    assert out["n"] == 4 and out["swaps"] == 3
    assert out["value"] == pytest.approx(75.0)


def test_rejected_keypoints_are_misses():
    rows = _rows(seed=2, n_pairs=6)
    for r in rows:
        r["distances"] = [0.0] * len(r["distances"])
    rows[0]["rejected"] = [True] + [False] * (len(rows[0]["distances"]) - 1)
    arrays = stats.PairArrays.from_rows(rows)
    total = sum(len(r["distances"]) for r in rows)
    assert stats.curve(arrays, "le")["bbox"]["point"][-1] == pytest.approx(100.0 * (total - 1) / total)


def _naive_paired(a_rows, b_rows, alpha, norm, average, resamples, seed):
    n = len(a_rows)

    def pair_score(r):
        hits = [_naive_correct(d, r[f"L_{norm}"], alpha) for d in r["distances"]]
        return sum(hits), len(hits)

    ka, na = zip(*(pair_score(r) for r in a_rows))
    kb, _ = zip(*(pair_score(r) for r in b_rows))
    if average == "point":
        diffs = [(ka[i] - kb[i]) * 100.0 / sum(na) for i in range(n)]
    else:
        diffs = [(ka[i] - kb[i]) / na[i] * 100.0 / n for i in range(n)]
    delta = sum(diffs)
    rng = np.random.Generator(np.random.PCG64(seed + 1))
    signs = rng.integers(0, 2, size=(resamples, n)) * 2 - 1
    extreme = sum(1 for b in range(resamples) if abs(sum(int(signs[b, i]) * diffs[i] for i in range(n))) >= abs(delta) - 1e-9)
    boot = []
    for d in _naive_draws(a_rows, resamples, seed):
        boot.append(_naive_pck([a_rows[i] for i in d], alpha, norm, average)
                    - _naive_pck([b_rows[i] for i in d], alpha, norm, average))
    return delta, _naive_interval(boot), (1 + extreme) / (1 + resamples)


@pytest.mark.parametrize("average", ["point", "image"])
def test_paired_difference_equals_naive(average):
    a = _rows(seed=4)
    b = [{**r, "distances": (np.asarray(r["distances"]) * 1.6).tolist()} for r in a]
    got = stats.paired_difference(a, b, alpha=0.1, norm="bbox", average=average, resamples=400, seed=5)
    delta, (lo, hi), p = _naive_paired(a, b, 0.1, "bbox", average, 400, 5)
    assert got["delta"] == pytest.approx(delta, abs=1e-9)
    assert got["ci95"] == pytest.approx([lo, hi], abs=1e-9)
    assert got["p"] == pytest.approx(p)
    assert got["delta"] > 0 and got["p"] < 0.05  # worse distances everywhere: A is clearly better


def test_paired_difference_of_identical_methods_is_zero_with_p_one():
    a = _rows(seed=6)
    got = stats.paired_difference(a, a, resamples=200)
    assert got["delta"] == 0 and got["ci95"] == [0, 0] and got["p"] == 1.0


def _run(tmp_path, *args, name="run"):
    out = tmp_path / name
    proc = subprocess.run([sys.executable, "-m", "corrbench", "run", "--out", str(out), "--cache-dir",
                           str(tmp_path / "cache"), "--data-root", str(tmp_path / "data"), *args],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def _load(out, method):
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return [r for r in rows if r["method"] == method]


def test_cli_intervals_and_paired_command_equal_naive(tmp_path):
    out, proc = _run(tmp_path, "--sample", "24", "--resamples", "200")
    assert "95% CI" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    summary = pd.read_csv(out / "summary.csv")
    for method in ("dsift", "colour-patch"):
        rows = _load(out, method)
        draws = _naive_draws(rows, 200, 0)
        for average in ("point", "image"):
            values = [_naive_pck([rows[i] for i in d], 0.1, "bbox", average) for d in draws]
            lo, hi = _naive_interval(values)
            stat = results["methods"][method]["statistics"]["ci95"][average]["pck@0.10_bbox"]
            assert stat == pytest.approx([lo, hi], abs=1e-9)
            cell = summary[(summary.method == method) & (summary.average == average) & (summary.norm == "bbox")
                           & (summary.alpha.sub(0.1).abs() < 1e-9)]
            assert float(cell.ci_low.iloc[0]) == pytest.approx(lo, abs=1e-4)
            assert float(cell.ci_high.iloc[0]) == pytest.approx(hi, abs=1e-4)
            assert float(cell.value.iloc[0]) == pytest.approx(_naive_pck(rows, 0.1, "bbox", average), abs=1e-4)
        # the synthetic data names left/right parts: a swap rate is reported
        assert results["methods"][method]["statistics"]["swap_rate"]["n"] > 0
        cat = summary[(summary.method == method) & (summary.average == "category") & (summary.norm == "img")
                      & (summary.alpha.sub(0.1).abs() < 1e-9)]
        cats = sorted({r["category"] for r in rows})
        mean = sum(_naive_pck([r for r in rows if r["category"] == c], 0.1, "img", "point") for c in cats) / len(cats)
        assert float(cat.value.iloc[0]) == pytest.approx(mean, abs=1e-4)
    proc = subprocess.run([sys.executable, "-m", "corrbench", "paired", str(out), "-a", "dsift", "-b", "colour-patch",
                           "--resamples", "300", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    delta, (lo, hi), p = _naive_paired(_load(out, "dsift"), _load(out, "colour-patch"), 0.1, "bbox", "point", 300, 0)
    assert got["delta"] == pytest.approx(delta, abs=1e-9)
    assert got["ci95"] == pytest.approx([lo, hi], abs=1e-9)
    assert got["p"] == pytest.approx(p)
    text = subprocess.run([sys.executable, "-m", "corrbench", "paired", str(out), "-a", "dsift", "-b", "colour-patch",
                           "--resamples", "300"], capture_output=True, text=True)
    assert text.returncode == 0 and "95 % CI" in text.stdout and f"{delta:+.2f}" in text.stdout


def test_paired_command_errors_are_one_line(tmp_path):
    out, _ = _run(tmp_path, "--limit", "4", "-m", "colour-patch")
    for args, needle in ((["-a", "colour-patch", "-b", "nope"], "no method 'nope'"),
                         (["-a", "colour-patch", "-b", "colour-patch"], "same method"),
                         (["-a", "colour-patch", "-b", "colour-patch", "--resamples", "5"], "at least 100")):
        proc = subprocess.run([sys.executable, "-m", "corrbench", "paired", str(out), *args],
                              capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert needle in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_interval_covers_the_truth_most_of_the_time():
    """A sanity check of the method itself: simulated pairs with a known 60 % hit rate."""
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(40):
        rows = []
        for i in range(60):
            k = 5
            hits = rng.random(k) < 0.6
            rows.append({"pair": f"p{i}", "category": "abc"[i % 3], "distances": np.where(hits, 0.0, 50.0).tolist(),
                         "L_bbox": 100.0, "L_img": 100.0})
        lo, hi = stats.method_statistics(rows, (0.1,), "le", resamples=300, seed=trial)["ci95"]["point"]["pck@0.10_bbox"]
        covered += lo <= 60.0 <= hi
    assert covered >= 32  # nominal 95 %: 38 of 40 expected; far fewer would mean a broken interval
    assert not math.isnan(lo)
