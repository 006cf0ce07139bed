"""The CI regression lane: the committed baseline matches a fresh run, and the lane fails when a number moves."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from corrbench import regress
from corrbench.cli_reproduce import regress as regress_cmd

COMMITTED = regress.default_baseline()


def fake_results(**bump: float) -> dict:
    """A results.json-like dict; ``bump`` adds points to one method's pck@0.10_img."""
    methods = {}
    for i, m in enumerate(regress.METHODS):
        base = {"pck@0.10_img": 10.0 + i, "pck@0.10_bbox": 5.0 + i, "pck@0.05_img": 3.0 + i / 3}
        base["pck@0.10_img"] += bump.get(m.replace("-", "_"), 0.0)
        methods[m] = {"metrics": base, "n_keypoints": 270}
    return {"dataset": {"name": "synthetic", "split": "test", "n_pairs": 30, "n_images": 6},
            "env": {"torch": "x"}, "methods": methods}


@pytest.fixture
def fake_lane(monkeypatch):
    """Replace the (minute-long) lane run by a fixed result; tests set ``state['results']``."""
    state = {"results": fake_results()}
    monkeypatch.setattr(regress, "run_lane", lambda **kw: SimpleNamespace(results=state["results"]))
    return state


def test_update_then_check_passes_and_a_moved_number_fails(tmp_path, fake_lane):
    path = tmp_path / "ci.json"
    up = CliRunner().invoke(regress_cmd, ["--update", "--baseline", str(path)])
    assert up.exit_code == 0, up.output
    written = json.loads(path.read_text())
    assert written["format"] == "corrbench-baseline/1" and written["lane"]["limit"] == regress.LIMIT
    assert {r["method"] for r in written["rows"]} == set(regress.METHODS)
    assert CliRunner().invoke(regress_cmd, ["--baseline", str(path)]).exit_code == 0
    # the run moves by half a point in one cell: up or down, the lane fails and names the cell
    for bump in (0.5, -0.5):
        fake_lane["results"] = fake_results(dsift=bump)
        res = CliRunner().invoke(regress_cmd, ["--baseline", str(path)])
        assert res.exit_code == 1, res.output
        assert "FAIL" in res.output and "dsift" in res.output
        assert ("rise" if bump > 0 else "DROP") in res.output
    # a looser tolerance accepts it
    assert CliRunner().invoke(regress_cmd, ["--baseline", str(path), "--tolerance", "1"]).exit_code == 0


def test_perturbing_one_value_of_a_baseline_copy_fails_the_lane(tmp_path, fake_lane):
    path = tmp_path / "ci.json"
    CliRunner().invoke(regress_cmd, ["--update", "--baseline", str(path)])
    obj = json.loads(path.read_text())
    obj["rows"][3]["metrics"]["synthetic"]["pck@0.05_img"] += 0.25
    path.write_text(json.dumps(obj))
    res = CliRunner().invoke(regress_cmd, ["--baseline", str(path)])
    assert res.exit_code == 1
    assert regress.METHODS[3] in res.output and "pck@0.05_img" in res.output


def test_a_method_missing_from_the_run_fails(tmp_path, fake_lane):
    path = tmp_path / "ci.json"
    CliRunner().invoke(regress_cmd, ["--update", "--baseline", str(path)])
    fake_lane["results"]["methods"].pop("dino")
    res = CliRunner().invoke(regress_cmd, ["--baseline", str(path)])
    assert res.exit_code == 1 and "MISSING" in res.output


def test_no_baseline_file_is_a_clear_error(tmp_path, fake_lane):
    res = CliRunner().invoke(regress_cmd, ["--baseline", str(tmp_path / "none.json")])
    assert res.exit_code != 0 and "--update" in str(res.exception)


def test_committed_baseline_covers_the_lane():
    obj = json.loads(COMMITTED.read_text())
    assert obj["lane"]["methods"] == list(regress.METHODS)
    assert obj["lane"]["limit"] == regress.LIMIT and obj["lane"]["tolerance"] == regress.TOLERANCE
    for row in obj["rows"]:
        metrics = row["metrics"]["synthetic"]
        assert {"pck@0.10_img", "pck@0.10_bbox"} <= set(metrics)
        # every number is a count of correct keypoints over the row's keypoints, in percent
        for v in metrics.values():
            assert abs(v * row["keypoints"] / 100 - round(v * row["keypoints"] / 100)) < 1e-2


@pytest.mark.slow
def test_fresh_lane_matches_the_committed_baseline_and_fails_on_a_perturbed_copy(tmp_path):
    result = regress.run_lane(out_dir=tmp_path / "run")
    cmp = regress.check(result, COMMITTED)
    assert cmp.ok, cmp.render("md", "changes") + cmp.summary_line()
    # the run folder on disk gives the same verdict (what `corrbench compare --two-sided` reads)
    assert regress.check(tmp_path / "run", COMMITTED).ok
    obj = json.loads(COMMITTED.read_text())
    obj["rows"][0]["metrics"]["synthetic"]["pck@0.10_bbox"] -= 1.0
    perturbed = tmp_path / "perturbed.json"
    perturbed.write_text(json.dumps(obj))
    bad = regress.check(result, perturbed)
    assert not bad.ok and list(bad.failures["method"]) == [obj["rows"][0]["method"]]
    from corrbench.cli_reproduce import compare

    res = CliRunner().invoke(compare, [str(perturbed), str(tmp_path / "run"), "--two-sided", "--tolerance", "0.1"])
    assert res.exit_code == 1
