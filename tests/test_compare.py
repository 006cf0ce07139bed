"""corrbench compare: cells from baseline files and run folders, drop/rise/missing rules, exit status."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from corrbench.cli_reproduce import compare
from corrbench.compare import BASELINE_FORMAT, compare_cells, compare_paths, load_cells
from corrbench.errors import CorrbenchError, UsageError


def baseline_file(path: Path, values: dict[str, dict[str, float]], dataset: str = "synthetic",
                  split: str = "test") -> Path:
    obj = {"format": BASELINE_FORMAT, "datasets": {dataset: {"split": split}},
           "rows": [{"method": m, "metrics": {dataset: metrics}} for m, metrics in values.items()]}
    path.write_text(json.dumps(obj))
    return path


def fake_run(folder: Path, values: dict[str, dict[str, float]], dataset: str = "synthetic", split: str = "test") -> Path:
    """A run folder in the layout the runner writes (results.json + summary.csv)."""
    folder.mkdir(parents=True)
    results = {"dataset": {"name": dataset, "split": split},
               "methods": {m: {"metrics": metrics} for m, metrics in values.items()}}
    (folder / "results.json").write_text(json.dumps(results))
    rows = [{"method": m, "dataset": dataset, "split": split, "metric": "pck", "norm": k.split("_")[-1],
             "average": "point", "alpha": float(k.split("@")[1].split("_")[0]), "value": v, "n": 10}
            for m, metrics in values.items() for k, v in metrics.items()]
    pd.DataFrame(rows).to_csv(folder / "summary.csv", index=False)
    return folder


BASE = {"dsift": {"pck@0.10_img": 50.0, "pck@0.10_bbox": 40.0}, "dino": {"pck@0.10_img": 60.0, "pck@0.10_bbox": 45.0}}


def test_identical_results_pass_and_every_cell_is_listed(tmp_path):
    cmp = compare_paths(baseline_file(tmp_path / "b.json", BASE), fake_run(tmp_path / "run", BASE))
    assert cmp.ok and len(cmp.table) == 4 and set(cmp.table["status"]) == {"ok"}
    assert (cmp.table["delta"] == 0).all()


def test_drop_beyond_tolerance_fails_and_names_the_cell(tmp_path):
    ours = {"dsift": {"pck@0.10_img": 48.9, "pck@0.10_bbox": 40.0}, "dino": {"pck@0.10_img": 59.5, "pck@0.10_bbox": 45.0}}
    cmp = compare_paths(baseline_file(tmp_path / "b.json", BASE), fake_run(tmp_path / "run", ours), tolerance=1.0)
    assert not cmp.ok
    bad = cmp.failures
    assert list(zip(bad["method"], bad["metric"])) == [("dsift", "pck@0.10_img")]
    assert bad["delta"].iloc[0] == pytest.approx(-1.1)
    # within tolerance (−0.5) is ok; exactly at the tolerance is ok too
    row = cmp.table[(cmp.table["method"] == "dino") & (cmp.table["metric"] == "pck@0.10_img")]
    assert row["status"].iloc[0] == "ok"
    at_tol = compare_paths(baseline_file(tmp_path / "b.json", BASE), tmp_path / "run", tolerance=1.1)
    assert at_tol.ok


def test_rises_pass_one_sided_and_fail_two_sided(tmp_path):
    ours = {m: {k: v + 3.0 for k, v in metrics.items()} for m, metrics in BASE.items()}
    b, r = baseline_file(tmp_path / "b.json", BASE), fake_run(tmp_path / "run", ours)
    assert compare_paths(b, r).ok
    two = compare_paths(b, r, two_sided=True)
    assert not two.ok and set(two.failures["status"]) == {"rise"}


def test_missing_cells_fail_unless_allowed_and_new_cells_never_fail(tmp_path):
    ours = {"dsift": BASE["dsift"], "hpf": {"pck@0.10_img": 1.0}}
    b, r = baseline_file(tmp_path / "b.json", BASE), fake_run(tmp_path / "run", ours)
    cmp = compare_paths(b, r)
    assert not cmp.ok and set(cmp.failures["method"]) == {"dino"}
    assert set(cmp.table[cmp.table["status"] == "new"]["method"]) == {"hpf"}
    assert compare_paths(b, r, allow_missing=True).ok


def test_metric_filter_accepts_short_names_and_wildcards(tmp_path):
    ours = {"dsift": {"pck@0.10_img": 10.0, "pck@0.10_bbox": 40.0}, "dino": BASE["dino"]}
    b, r = baseline_file(tmp_path / "b.json", BASE), fake_run(tmp_path / "run", ours)
    assert compare_paths(b, r, metrics=["bbox"]).ok
    assert not compare_paths(b, r, metrics=["pck@0.10_*"]).ok
    with pytest.raises(UsageError, match="matches no cell"):
        compare_paths(b, r, metrics=["pck@0.50_img"])


def test_two_run_folders_and_a_folder_of_runs(tmp_path):
    a = fake_run(tmp_path / "a", BASE)
    both = tmp_path / "table"
    fake_run(both / "spair", {"dino": {"pck@0.10_img": 1.0}}, dataset="spair")
    fake_run(both / "cub", {"dino": {"pck@0.10_img": 2.0}}, dataset="cub")
    cells = load_cells(both)
    assert cells.values == {("dino", "spair", "pck@0.10_img"): 1.0, ("dino", "cub", "pck@0.10_img"): 2.0}
    assert compare_paths(a, a).ok


def test_split_mismatch_is_noted(tmp_path):
    cmp = compare_paths(baseline_file(tmp_path / "b.json", BASE, split="dhf-test-360"),
                        fake_run(tmp_path / "run", BASE, split="test"))
    assert cmp.ok and any("dhf-test-360" in n and "'test'" in n for n in cmp.notes)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"rows": []}), "not a corrbench baseline"),
    (json.dumps({"format": BASELINE_FORMAT, "rows": [{"metrics": {}}]}), "no \"method\""),
    (json.dumps({"format": BASELINE_FORMAT, "rows": [{"method": "x", "metrics": {"d": {"m": "high"}}}]}),
     "not a finite number"),
])
def test_bad_baseline_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CorrbenchError, match=message) as info:
        load_cells(path)
    assert "bad.json" in str(info.value)


def test_not_a_run_folder_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="neither a corrbench run folder"):
        load_cells(tmp_path / "empty")
    with pytest.raises(UsageError, match="does not exist"):
        load_cells(tmp_path / "nope")
    with pytest.raises(UsageError, match="tolerance"):
        compare_cells(load_cells(baseline_file(tmp_path / "b.json", BASE)), load_cells(tmp_path / "b.json"),
                      tolerance=-1)


def test_cli_exit_status_and_diff_table_either_way(tmp_path):
    b = baseline_file(tmp_path / "b.json", BASE)
    same = fake_run(tmp_path / "same", BASE)
    worse = fake_run(tmp_path / "worse", {"dsift": {"pck@0.10_img": 45.0, "pck@0.10_bbox": 40.0}, "dino": BASE["dino"]})
    ok = CliRunner().invoke(compare, [str(b), str(same)])
    assert ok.exit_code == 0, ok.output
    assert "| dsift" in ok.output and "PASS" in ok.output
    bad = CliRunner().invoke(compare, [str(b), str(worse), "--tolerance", "1.0"])
    assert bad.exit_code == 1
    assert "DROP" in bad.output and "-5.00" in bad.output and "FAIL" in bad.output
    loose = CliRunner().invoke(compare, [str(b), str(worse), "--tolerance", "5"])
    assert loose.exit_code == 0
    csv = CliRunner().invoke(compare, [str(b), str(worse), "--format", "csv", "--changes-only"])
    assert csv.exit_code == 1 and "dsift,synthetic,pck@0.10_img,50.0000,45.0000,-5.0000,DROP" in csv.output


def test_paper_baseline_file_loads_as_cells():
    from corrbench.reproduce import default_baseline_path

    cells = load_cells(default_baseline_path("dhf-paper"))
    assert len(cells.values) == 9 * 4
    assert cells.values[("dhf", "spair", "pck@0.10_img")] == 72.56
    assert cells.splits == {"spair": "dhf-test-360", "cub": "test"}
