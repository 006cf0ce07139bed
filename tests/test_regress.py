"""The CI regression lane: per-keypoint checking with recorded margins.

Both sides are proven: a fresh lane passes the committed baseline (in this process, and in
subprocesses under other ATEN_CPU_CAPABILITY values and thread counts), and one stable keypoint that
moves fails it, while a near-tie keypoint that moves does not.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from corrbench import regress
from corrbench.cli_reproduce import regress as regress_cmd

COMMITTED = regress.default_baseline()
ALPHAS = (0.01, 0.05, 0.1, 0.15)


# --------------------------------------------------------------------------------------------------
# A fake lane: a few pairs per method, distances well away from every threshold
# --------------------------------------------------------------------------------------------------
STABLE, NEAR_TIE = 0.05, 1e-6  # margins
FAKE_DIST = [0.0, 40.0, 7.0, 60.0]  # L_bbox 100: right at 0.10/0.15 (0, 7), wrong everywhere (40, 60)


def fake_predictions(method: str, pairs: int = 3) -> list[dict]:
    """Keypoint 3 of each pair is a near-tie, except for colour-patch (no near-tie at all)."""
    last = STABLE if method == "colour-patch" else NEAR_TIE
    preds = []
    for p in range(pairs):
        d = list(FAKE_DIST)
        preds.append({"method": method, "pair": f"p{p}", "distances": d, "L_bbox": 100.0, "L_img": 100.0,
                      "load_distances": [v / 2 for v in d], "L_load": 50.0, "pixel_step": 2.0 ** 1.5,
                      "margins": [STABLE, STABLE, STABLE, last], "local_margins": [STABLE] * 3 + [last]})
    return preds


def with_metrics(results: dict, predictions: list[dict]) -> regress.LaneRun:
    """Fill each method's metrics from its predictions (pooled PCK, as the runner computes it)."""
    for method, rec in regress.keypoint_records(results, predictions).items():
        n = sum(k for _p, k in rec["pairs"])
        results["methods"][method] = {"n_keypoints": n, "metrics": {
            metric: 100.0 * sum(s in regress.CORRECT_SYMBOLS for s in symbols) / n
            for metric, symbols in rec["cells"].items()}}
    return regress.LaneRun(results, predictions)


def fake_run(edit=None) -> regress.LaneRun:
    preds = [p for m in regress.METHODS for p in fake_predictions(m)]
    if edit:
        edit(preds)
    results = {"dataset": {"name": "synthetic", "split": "test", "n_pairs": 3, "n_images": 6},
               "env": {"torch": "x"}, "protocol": {"alphas": list(ALPHAS), "compare": "le"}, "methods": {}}
    return with_metrics(results, preds)


def move(method: str, pair: str, k: int, dist: float):
    def edit(preds):
        for p in preds:
            if p["method"] == method and p["pair"] == pair:
                p["distances"][k] = dist
                p["load_distances"][k] = dist / 2
    return edit


@pytest.fixture
def fake_lane(monkeypatch):
    """Replace the (minute-long) lane run by a fixed result; tests set ``state['run']``."""
    state = {"run": fake_run()}
    monkeypatch.setattr(regress, "run_lane", lambda **kw: state["run"])
    return state


def invoke(*args: str):
    return CliRunner().invoke(regress_cmd, list(args))


def test_update_writes_a_versioned_per_keypoint_baseline_that_passes(tmp_path, fake_lane):
    path = tmp_path / "ci.json"
    up = invoke("--update", "--baseline", str(path))
    assert up.exit_code == 0, up.output
    written = json.loads(path.read_text())
    assert written["format"] == "corrbench-baseline/2" and written["lane"]["limit"] == regress.LIMIT
    assert written["lane"]["eps"] == regress.EPS
    row = written["rows"][0]
    assert {r["method"] for r in written["rows"]} == set(regress.METHODS)
    assert row["per_keypoint"]["pairs"] == [["p0", 4], ["p1", 4], ["p2", 4]]
    assert row["per_keypoint"]["cells"]["pck@0.10_bbox"] == "1010" * 3
    assert row["per_keypoint"]["margin"] == [STABLE, STABLE, STABLE, NEAR_TIE] * 3
    res = invoke("--baseline", str(path))
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output and "near-ties" in res.output


def test_one_stable_keypoint_that_moves_fails_and_is_named(tmp_path, fake_lane):
    path = tmp_path / "ci.json"
    invoke("--update", "--baseline", str(path))
    # keypoint 2 of pair p1 (margin 0.05) moves from 7 px to 12 px: wrong at α = 0.10, still right at 0.15
    fake_lane["run"] = fake_run(move("dino", "p1", 2, 12.0))
    res = invoke("--baseline", str(path))
    assert res.exit_code == 1, res.output
    assert "| dino | p1 | 2 | pck@0.10_bbox | right | wrong |" in res.output
    assert "pck@0.15_bbox" not in res.output.split("whose correctness changed")[1]
    cmp = regress.check(fake_lane["run"], path)
    assert not cmp.ok and {(c.method, c.pair, c.index) for c in cmp.changes} == {("dino", "p1", 2)}
    # its cell moved by one keypoint (8.3 points of 12), within the cell's tolerance (3 near-ties):
    # the per-keypoint check is what catches it
    cell = cmp.table[(cmp.table["method"] == "dino") & (cmp.table["metric"] == "pck@0.10_bbox")].iloc[0]
    assert cell["status"] == "ok" and cell["near-ties"] == "3"


def test_a_near_tie_keypoint_that_moves_passes(tmp_path, fake_lane):
    path = tmp_path / "ci.json"
    invoke("--update", "--baseline", str(path))
    fake_lane["run"] = fake_run(move("dsift", "p0", 3, 3.0))  # the near-tie: wrong → right at 0.05..0.15
    res = invoke("--baseline", str(path))
    assert res.exit_code == 0, res.output
    cmp = regress.check(fake_lane["run"], path)
    cell = cmp.table[(cmp.table["method"] == "dsift") & (cmp.table["metric"] == "pck@0.10_bbox")].iloc[0]
    assert cell["delta"] == pytest.approx(100 / 12, abs=1e-3) and cell["tolerance"] == pytest.approx(0.1 + 3 * 100 / 12)
    # the same move of a stable keypoint fails
    fake_lane["run"] = fake_run(move("dsift", "p0", 1, 3.0))
    assert invoke("--baseline", str(path)).exit_code == 1


def test_a_moved_number_without_a_moved_keypoint_fails_either_way(tmp_path, fake_lane):
    path = tmp_path / "ci.json"
    invoke("--update", "--baseline", str(path))
    for bump in (0.5, -0.5):  # e.g. a PCK computation that changed while the matches did not
        run = fake_run()
        run.results["methods"]["colour-patch"]["metrics"]["pck@0.01_img"] += bump  # colour-patch: no near-tie
        fake_lane["run"] = run
        res = invoke("--baseline", str(path))
        assert res.exit_code == 1 and "colour-patch" in res.output
        assert ("rise" if bump > 0 else "DROP") in res.output
    # a looser tolerance accepts it
    assert invoke("--baseline", str(path), "--tolerance", "1").exit_code == 0


def test_perturbing_one_value_of_a_baseline_copy_fails_the_lane(tmp_path, fake_lane):
    path = tmp_path / "ci.json"
    invoke("--update", "--baseline", str(path))
    obj = json.loads(path.read_text())
    row = next(r for r in obj["rows"] if r["method"] == "colour-patch")  # no near-tie: tolerance 0.1
    row["metrics"]["synthetic"]["pck@0.05_img"] += 0.25
    path.write_text(json.dumps(obj))
    res = invoke("--baseline", str(path))
    assert res.exit_code == 1
    assert "colour-patch" in res.output and "pck@0.05_img" in res.output


def test_a_method_missing_from_the_run_fails(tmp_path, fake_lane):
    path = tmp_path / "ci.json"
    invoke("--update", "--baseline", str(path))
    run = fake_run()
    run.results["methods"].pop("dino")
    run.predictions[:] = [p for p in run.predictions if p["method"] != "dino"]
    fake_lane["run"] = run
    res = invoke("--baseline", str(path))
    assert res.exit_code == 1 and "MISSING" in res.output


def test_other_pairs_than_the_baseline_fail(tmp_path, fake_lane):
    path = tmp_path / "ci.json"
    invoke("--update", "--baseline", str(path))
    run = fake_run(lambda preds: [p.update(pair="other") for p in preds if p["pair"] == "p2"])
    fake_lane["run"] = run
    res = invoke("--baseline", str(path))
    assert res.exit_code == 1 and "pairs or keypoint counts differ" in res.output


def test_a_baseline_without_keypoint_records_is_compared_cell_by_cell(tmp_path, fake_lane):
    obj = regress.baseline_from_run(fake_lane["run"].results)  # no predictions: no records
    obj["format"] = "corrbench-baseline/1"
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(obj))
    assert regress.check(fake_lane["run"], path).ok
    fake_lane["run"] = fake_run(move("dino", "p1", 2, 12.0))
    res = invoke("--baseline", str(path))
    assert res.exit_code == 1 and "DROP" in res.output  # 8.3 points > 0.1, no near-tie allowance


def test_no_baseline_file_is_a_clear_error(tmp_path, fake_lane):
    res = invoke("--baseline", str(tmp_path / "none.json"))
    assert res.exit_code != 0 and "--update" in str(res.exception)


def test_committed_baseline_covers_the_lane():
    obj = json.loads(COMMITTED.read_text())
    assert obj["format"] == "corrbench-baseline/2"
    assert obj["lane"]["methods"] == list(regress.METHODS)
    assert obj["lane"]["limit"] == regress.LIMIT and obj["lane"]["tolerance"] == regress.TOLERANCE
    assert obj["lane"]["eps"] == regress.EPS
    for row in obj["rows"]:
        metrics = row["metrics"]["synthetic"]
        assert {"pck@0.10_img", "pck@0.10_bbox"} <= set(metrics)
        records = row["per_keypoint"]
        n = row["keypoints"]
        assert sum(k for _p, k in records["pairs"]) == n == len(records["margin"]) == len(records["local_margin"])
        # every number is the count of right keypoints in its record, in percent
        assert set(records["cells"]) == set(metrics)
        for metric, symbols in records["cells"].items():
            assert len(symbols) == n
            assert metrics[metric] == pytest.approx(100 * sum(s in "1+" for s in symbols) / n, abs=1e-4)


# --------------------------------------------------------------------------------------------------
# The real lane
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lane(tmp_path_factory):
    out = tmp_path_factory.mktemp("lane") / "run"
    return regress.run_lane(out_dir=out)


def stable_keypoint(run: regress.LaneRun, metric: str, correct: bool) -> tuple[int, int]:
    """(prediction row, keypoint) of a keypoint far from every tie, right (or wrong) in ``metric``."""
    alpha = float(metric.split("@")[1].split("_")[0])
    for i, p in enumerate(run.predictions):
        for k, d in enumerate(p["distances"]):
            m, lm = p["margins"][k], p["local_margins"][k]
            if m is None or m < 10 * regress.EPS or lm is None or lm < 10 * regress.EPS:
                continue
            thr = alpha * p["L_" + metric.split("_")[1]]
            if (d <= thr) == correct and abs(d - thr) > 3 * p["pixel_step"]:
                return i, k
    raise AssertionError(f"no stable keypoint in {metric}")


def moved(run: regress.LaneRun, i: int, k: int, dist: float, metric: str) -> regress.LaneRun:
    """A copy of the run whose prediction ``i`` keypoint ``k`` lies ``dist`` from the truth (PCK updated)."""
    out = copy.deepcopy(run)
    p = out.predictions[i]
    before = p["distances"][k]
    alpha = float(metric.split("@")[1].split("_")[0])
    thr = alpha * p["L_" + metric.split("_")[1]]
    p["distances"][k] = dist
    n = out.results["methods"][p["method"]]["n_keypoints"]
    out.results["methods"][p["method"]]["metrics"][metric] += 100 / n * ((dist <= thr) - (before <= thr))
    return out


@pytest.mark.slow
def test_fresh_lane_matches_the_committed_baseline(lane, tmp_path):
    cmp = regress.check(lane, COMMITTED)
    assert cmp.ok, cmp.render("md", "changes") + cmp.summary_line()
    # the run folder on disk gives the same verdict
    assert regress.check(lane.out_dir, COMMITTED).ok
    # the per-keypoint records count exactly what the runner's PCK counts
    records = regress.keypoint_records(lane.results, lane.predictions)
    for method, entry in lane.results["methods"].items():
        n = entry["n_keypoints"]
        for metric, value in entry["metrics"].items():
            symbols = records[method]["cells"][metric]
            assert value == pytest.approx(100 * sum(s in "1+" for s in symbols) / n, abs=1e-9), (method, metric)
    # every nn-readout keypoint has its margins (dino's patch-centre readout is pair-conditioned: none);
    # `corrbench compare` still reads the run and the baseline
    for p in lane.predictions:
        if p["method"] == "dino":
            assert p["margins"] is None
        else:
            assert len(p["margins"]) == len(p["local_margins"]) == len(p["distances"]), p["method"]
    from corrbench.cli_reproduce import compare

    res = CliRunner().invoke(compare, [str(COMMITTED), str(lane.out_dir), "--two-sided", "--tolerance", "2"])
    assert res.exit_code == 0, res.output


@pytest.mark.slow
def test_one_stable_keypoint_moved_by_a_few_pixels_fails_the_real_lane(lane):
    metric = "pck@0.10_bbox"
    i, k = stable_keypoint(lane, metric, correct=True)
    p = lane.predictions[i]
    bad = moved(lane, i, k, 0.1 * p["L_bbox"] + 2 * p["pixel_step"], metric)  # just past the threshold
    cmp = regress.check(bad, COMMITTED)
    assert not cmp.ok
    # that keypoint, and only it, is listed: in this cell and in the others it crossed (smaller α, img)
    assert {(c.method, c.pair, c.index) for c in cmp.changes} == {(p["method"], str(p["pair"]), k)}
    assert (metric, "right", "wrong") in {(c.metric, c.before, c.after) for c in cmp.changes}
    assert f"| {p['method']} | {p['pair']} | {k} | {metric} | right | wrong |" in cmp.render()


@pytest.mark.slow
def test_a_near_tie_keypoint_that_moves_passes_the_real_lane(lane):
    metric = "pck@0.10_bbox"
    for i, p in enumerate(lane.predictions):  # a near-tie (far margin < EPS) that is right: make it wrong
        hits = [k for k, (m, d) in enumerate(zip(p["margins"], p["distances"]))
                if m is not None and m < regress.EPS and d <= 0.1 * p["L_bbox"]]
        if hits:
            break
    else:
        pytest.skip("the lane has no right near-tie keypoint at pck@0.10_bbox")
    cmp = regress.check(moved(lane, i, hits[0], 5 * p["L_bbox"], metric), COMMITTED)
    assert cmp.ok, cmp.render("md", "changes") + cmp.summary_line()


@pytest.mark.slow
def test_python_m_regress_exits_1_on_a_failing_baseline_and_0_on_a_passing_one(lane, tmp_path):
    # a copy of the committed baseline with one stable keypoint's correctness flipped
    i, k = stable_keypoint(lane, "pck@0.05_img", correct=False)
    p = lane.predictions[i]
    obj = json.loads(COMMITTED.read_text())
    row = next(r for r in obj["rows"] if r["method"] == p["method"])
    pos = sum(n for _pair, n in row["per_keypoint"]["pairs"][:[q for q in lane.predictions
                                                                if q["method"] == p["method"]].index(p)]) + k
    cells = row["per_keypoint"]["cells"]
    assert cells["pck@0.05_img"][pos] == "0"
    cells["pck@0.05_img"] = cells["pck@0.05_img"][:pos] + "1" + cells["pck@0.05_img"][pos + 1:]
    failing = tmp_path / "failing.json"
    failing.write_text(json.dumps(obj))
    # `python -m corrbench.regress` with the lane run replaced by the finished run folder
    script = textwrap.dedent(f"""
        import runpy, sys
        from corrbench import regress
        regress.run_lane = lambda **kw: regress.load_lane_run({str(lane.out_dir)!r})
        sys.argv = ["python -m corrbench.regress"] + sys.argv[1:]
        runpy.run_module("corrbench.regress", run_name="__main__", alter_sys=True)
    """)
    env = {**os.environ, "TQDM_DISABLE": "1"}
    ok = subprocess.run([sys.executable, "-c", script, "--baseline", str(COMMITTED)], capture_output=True,
                        text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS" in ok.stdout
    bad = subprocess.run([sys.executable, "-c", script, "--baseline", str(failing)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL" in bad.stdout and f"| {p['method']} | {p['pair']} | {k} | pck@0.05_img | right | wrong |" in bad.stdout


# --------------------------------------------------------------------------------------------------
# Other CPUs: the committed baseline holds under every ATEN_CPU_CAPABILITY and 1 or 2 threads
# --------------------------------------------------------------------------------------------------
#: the methods run per capability: the SD rows (features cached in float16, many exact ties), DHF (its
#: aggregation network once amplified rounding noise, see corrbench_dhf.tiny.CONSTANT_LAYERS) and dsift; all 30 pairs,
#: so the committed baseline's rows apply unchanged
CROSS_METHODS = ("dsift", "sd-layer-4", "dhf")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


@pytest.mark.slow
@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_the_committed_baseline_holds_under_other_kernels_and_thread_counts(capability, tmp_path):
    needs = {"avx2": {"avx2"}, "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"}}.get(capability, set())
    if not needs <= _cpu_flags():
        pytest.skip(f"this CPU has no {capability}")
    script = textwrap.dedent(f"""
        import sys, torch
        from corrbench import regress
        assert torch.backends.cpu.get_cpu_capability().lower() == {capability!r}, torch.backends.cpu.get_cpu_capability()
        for threads in (1, 2):
            torch.set_num_threads(threads)
            regress.run_lane(out_dir=sys.argv[1] + f"/t{{threads}}", methods={CROSS_METHODS!r})
    """)
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
           "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    obj = json.loads(COMMITTED.read_text())
    obj["rows"] = [r for r in obj["rows"] if r["method"] in CROSS_METHODS]
    for threads in (1, 2):
        cmp = regress.check(tmp_path / f"t{threads}", obj)
        assert cmp.ok, f"{capability}, {threads} thread(s):\n" + cmp.render("md", "changes") + cmp.summary_line()
