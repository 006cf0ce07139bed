"""corrbench reproduce dhf-table: the paper numbers, the dry-run plan, the missing-things stop, and a
full run of all nine rows on fixture datasets with tiny models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from corrbench.cli_reproduce import reproduce
from corrbench.errors import MissingDataError, UsageError, WeightsError
from corrbench.reproduce import default_baseline_path, paper_baseline
from corrbench.reproduce import make_plan as _make_plan
from corrbench_dhf.table import DHF_TABLE

#: the paper numbers as the user documentation states them (written independently of reproduce.py)
SPEC = Path(__file__).resolve().parents[1] / "docs" / "reproduce.md"
def make_plan(*args, **kwargs):
    """The DHF table's plan, looked up by its registered name as `corrbench reproduce dhf-table` does."""
    return _make_plan("dhf-table", *args, **kwargs)


NINE = ["dino", "dhpf", "sd-layer-4", "sd-concat-all", "dhf", "dhf-one-step", "sd-layer-pruned", "dhf-pruned",
        "dhf-sd21"]


# -- the paper numbers -----------------------------------------------------------------------------------------
def test_committed_paper_baseline_is_the_table_spec():
    committed = json.loads(default_baseline_path("dhf-paper").read_text(encoding="utf-8"))
    assert committed == paper_baseline(DHF_TABLE)
    assert [r["method"] for r in committed["rows"]] == NINE
    assert committed["datasets"]["spair"]["split"] == "dhf-test-360"


def test_paper_numbers_match_the_protocol_document():
    """Second source: parse the paper-numbers table of docs/reproduce.md and compare every number."""
    rows = {}
    for line in SPEC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\| [^|]+ \| `([a-z0-9-]+)` \| [^|]+ \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", line)
        if m:
            rows[m.group(1)] = [float(v) for v in m.groups()[1:]]
    assert list(rows) == NINE
    for row in DHF_TABLE.rows:
        assert [row.paper["spair"]["img"], row.paper["spair"]["bbox"], row.paper["cub"]["img"],
                row.paper["cub"]["bbox"]] == rows[row.method]


# -- plan / dry run -------------------------------------------------------------------------------------------
def test_dry_run_without_weights_or_data_prints_the_full_plan(tmp_path):
    res = CliRunner().invoke(reproduce, ["dhf-table", "--dry-run", "--device", "cuda",
                                         "--data-root", f"spair={tmp_path / 'no-spair'},cub={tmp_path / 'no-cub'}"])
    assert res.exit_code == 0, res.output
    out = res.output
    for row in DHF_TABLE.rows:
        assert f"{row.label} [{row.method}]" in out
    assert '"model": "stable-diffusion-v1-5/stable-diffusion-v1-5"' in out
    assert '"model": "stabilityai/stable-diffusion-2-1-base"' in out
    # weights named, not downloaded (tests run with HF_HUB_OFFLINE=1: missing, not "download")
    assert "[missing] weights: Stable Diffusion stable-diffusion-v1-5/stable-diffusion-v1-5" in out
    assert "hf://g-luo/diffusion-hyperfeatures/weights/aggregation_network.pt" in out
    assert "aggregation_network_one-step.pt" in out and "aggregation_network_sdv2-1.pt" in out
    assert "[missing] weights: DHPF learner checkpoint" in out and "drive.google.com" in out
    assert "vit_small_patch8_224.dino" in out
    assert f"[missing] data: spair dataset -- {tmp_path / 'no-spair'}" in out
    assert f"[missing] data: cub dataset -- {tmp_path / 'no-cub'}" in out
    assert "Estimated time: ~" in out and "GPU memory" in out
    assert "the run would stop before any work" in out
    assert not list(tmp_path.iterdir())  # nothing was created or downloaded


def test_run_with_missing_things_stops_before_any_work_with_one_message(tmp_path):
    plan = make_plan(data_roots={"spair": str(tmp_path / "none")}, datasets="spair", device="cpu",
                     cache_dir=tmp_path / "cache")
    from corrbench.reproduce import run_table

    with pytest.raises(MissingDataError) as info:
        run_table(plan, data_roots={"spair": str(tmp_path / "none")}, out_dir=tmp_path / "out")
    msg = str(info.value)
    assert "nothing was run" in msg
    assert "DHPF learner checkpoint" in msg and "spair dataset" in msg and "stable-diffusion-v1-5" in msg
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_unknown_names_and_keys_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="--datasets"):
        make_plan(datasets="pfpascal")
    with pytest.raises(UsageError, match="--rows"):
        make_plan(rows="dino,sd-dino")
    with pytest.raises(UsageError, match="spiar"):
        make_plan(data_roots=["spiar=/x"])
    with pytest.raises(UsageError, match="no key 'wieghts'|has no key"):
        make_plan(overrides=["dino.wieghts=random"])
    with pytest.raises(UsageError, match="expected DATASET=VALUE"):
        make_plan(splits=["spair"])


def test_overrides_reach_the_rows_that_take_them_and_mark_the_plan():
    plan = make_plan(overrides=["sd.seed=3", "dino.weights=random", "cub.num_pairs=10"], device="cpu")
    rows = {rp.row.method: rp for rp in plan.rows}
    assert rows["sd-layer-4"].config["seed"] == 3 and rows["dhf"].config["seed"] == 3
    assert rows["dino"].config["weights"] == "random" and "seed" not in rows["dino"].overridden
    assert rows["dhpf"].overridden == {}
    assert {dp.spec.name: dp.config for dp in plan.datasets} == {"spair": {}, "cub": {"num_pairs": 10}}
    assert not plan.paper_protocol()
    assert make_plan(device="cpu").paper_protocol()


def test_rows_sharing_one_inversion_count_it_once_in_the_estimate():
    from corrbench.reproduce import estimate_seconds

    plan = make_plan(datasets="spair", device="cuda")
    rows = {rp.row.method: rp for rp in plan.rows}
    images, pairs = plan.datasets[0].images, plan.datasets[0].pairs
    sd15 = ["sd-layer-4", "sd-concat-all", "dhf", "dhf-one-step", "sd-layer-pruned", "dhf-pruned"]
    # the most expensive member carries the inversion; the others only their readout
    assert rows["dhf"].seconds["spair"] == estimate_seconds("dhf", images, pairs, "cuda")
    for name in set(sd15) - {"dhf"}:
        assert rows[name].seconds["spair"] == estimate_seconds(name, 0, pairs, "cuda"), name
    # another model or method family is its own pass
    for name in ("dhf-sd21", "dino", "dhpf"):
        assert rows[name].seconds["spair"] == estimate_seconds(name, images, pairs, "cuda"), name
    # a row whose SD settings differ is not in the shared pass
    seeded = {rp.row.method: rp for rp in make_plan(datasets="spair", device="cuda",
                                                    overrides=["sd-layer-4.seed=5"]).rows}
    assert seeded["sd-layer-4"].seconds["spair"] == estimate_seconds("sd-layer-4", images, pairs, "cuda")


def test_a_row_whose_plugin_is_missing_is_reported(monkeypatch):
    from corrbench import plugins

    monkeypatch.setenv("CORRBENCH_DISABLE_PLUGINS", "dhpf")
    host = plugins.PluginHost()
    host.load_entry_points()
    plugins.reset_host(host)
    try:
        plan = make_plan(device="cpu")
        rp = next(r for r in plan.rows if r.row.method == "dhpf")
        assert not rp.available and "dhpf" in rp.problem
        assert "DHPF [dhpf] 34 layers, trained: yes (by its authors) -- MISSING PLUGIN" in plan.render()
        assert "Rows without a plugin (reported as missing in the table): dhpf" in plan.render()
    finally:
        plugins.reset_host(None)


# -- the whole command on fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory):
    from corrbench.regress import tiny_models
    from corrbench.testing.datasets import write_cub_fixture, write_spair_fixture

    work = tmp_path_factory.mktemp("reproduce")
    write_spair_fixture(work / "SPair-71k")
    write_cub_fixture(work / "CUB_200_2011")
    sets = []
    from corrbench_dhf.table import DHF_TABLE

    for key, value in tiny_models(work / "models", methods={r.method for r in DHF_TABLE.rows}).items():
        sets += ["--set", f"{key}={json.dumps(value) if isinstance(value, list) else value}"]
    args = ["dhf-table", "--data-root", f"spair={work / 'SPair-71k'},cub={work / 'CUB_200_2011'}",
            "--split", "spair=test", "--device", "cpu", "--limit", "4", "--out", str(work / "out"),
            "--cache-dir", str(work / "cache"), "--quiet", *sets]
    res = CliRunner().invoke(reproduce, args)
    return work, args, res


@pytest.mark.slow
def test_all_nine_rows_run_end_to_end_on_fixtures(fixture_run):
    work, _, res = fixture_run
    assert res.exit_code == 0, (res.output, res.exception)
    out = work / "out"
    for name in ("table.md", "table.csv", "table.tex", "reproduce.json", "spair/results.json", "cub/results.json"):
        assert (out / name).is_file(), name
    rep = json.loads((out / "reproduce.json").read_text())
    assert [r["method"] for r in rep["rows"]] == NINE
    for ds in ("spair", "cub"):
        results = json.loads((out / ds / "results.json").read_text())
        assert set(results["methods"]) == set(NINE)  # one run per dataset with every row
        assert results["dataset"]["split"] == ("test" if ds == "spair" else "test")
        preds = [json.loads(line) for line in (out / ds / "predictions.jsonl").read_text().splitlines()]
        for row in rep["rows"]:
            for norm in ("img", "bbox"):
                # reference: pooled PCK recomputed from the per-keypoint distances the run wrote
                dist = np.concatenate([p["distances"] for p in preds if p["method"] == row["method"]])
                L = np.concatenate([[p[f"L_{norm}"]] * len(p["distances"]) for p in preds
                                    if p["method"] == row["method"]])
                expected = 100.0 * float(np.mean(dist <= 0.1 * L))
                assert row[f"{ds}_{norm}_ours"] == pytest.approx(expected)
                paper = next(r for r in DHF_TABLE.rows if r.method == row["method"]).paper[ds][norm]
                assert row[f"{ds}_{norm}_paper"] == paper
                assert row[f"{ds}_{norm}_delta"] == pytest.approx(expected - paper)
        assert len({p["pair"] for p in preds}) == 4  # --limit 4
    # tiny random models are far below the paper: every verdict says so, none is "missing"
    assert {r["verdict"] for r in rep["rows"]} == {"below paper"}
    md = (out / "table.md").read_text()
    assert md.count("| ") >= 11 and "WARNING: not the paper protocol" in md and "NOT the paper's dhf-test-360" in md
    assert "Known deviations" in md
    tex = (out / "table.tex").read_text()
    assert tex.count("\\\\") == 3 + 9 and "\\begin{tabular}" in tex
    csv = (out / "table.csv").read_text().splitlines()
    assert csv[0].startswith("row,method,layers_x_timesteps,spair_img_paper,spair_img_ours,spair_img_delta")
    assert len(csv) == 10


@pytest.mark.slow
def test_compare_reads_the_reproduce_output_against_the_paper_file(fixture_run):
    from corrbench.cli_reproduce import compare

    work, _, res = fixture_run
    assert res.exit_code == 0
    cmp = CliRunner().invoke(compare, [str(default_baseline_path("dhf-paper")), str(work / "out"),
                                       "--metrics", "pck@0.10_img,pck@0.10_bbox"])
    assert cmp.exit_code == 1  # tiny models drop far below the paper
    assert "36 cells compared" in cmp.output and "DROP" in cmp.output
    assert "measured on split 'dhf-test-360', the results on 'test'" in cmp.output


@pytest.mark.slow
def test_a_bad_weights_file_stops_before_any_work(fixture_run, tmp_path):
    """dhf-sd21 pointed at a file that is not a checkpoint: one WeightsError naming it, nothing run."""
    work, args, _ = fixture_run
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    args = [a if not a.startswith("dhf-sd21.weights=") else f"dhf-sd21.weights={bad}" for a in args]
    args[args.index("--out") + 1] = str(tmp_path / "out")
    res = CliRunner().invoke(reproduce, args + ["--rows", "sd-layer-4,dhf-sd21", "--datasets", "spair"])
    # a bad weights file is a user error: it stops the run before any work, naming the file
    assert isinstance(res.exception, WeightsError) and str(bad) in str(res.exception)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_row_failing_at_run_time_is_isolated_and_reported(fixture_run, tmp_path, monkeypatch):
    from corrbench_sd.methods import SDConcatAll

    def boom(self, images):
        raise RuntimeError("boom in sd-concat-all")

    # its plan is what both paths run: alone (extract) and sharing the inversion with sd-layer-4
    monkeypatch.setattr(SDConcatAll, "inversion_plan", boom)
    work, args, _ = fixture_run
    args = list(args)
    args[args.index("--out") + 1] = str(tmp_path / "out")
    args[args.index("--cache-dir") + 1] = str(tmp_path / "cache")  # fresh cache: extract must run
    res = CliRunner().invoke(reproduce, args + ["--rows", "sd-layer-4,sd-concat-all", "--datasets", "spair"])
    assert res.exit_code == 0, (res.output, res.exception)
    rep = json.loads((tmp_path / "out" / "reproduce.json").read_text())
    rows = {r["method"]: r for r in rep["rows"]}
    assert rows["sd-concat-all"]["verdict"] == "failed" and "boom in sd-concat-all" in rows["sd-concat-all"]["note"]
    assert rows["sd-concat-all"]["spair_img_ours"] is None
    assert rows["sd-layer-4"]["verdict"] == "below paper" and rows["sd-layer-4"]["spair_img_ours"] is not None
    results = json.loads((tmp_path / "out" / "spair" / "results.json").read_text())
    assert set(results["methods"]) == {"sd-layer-4"}
    assert "| SD-Concat-All (`sd-concat-all`) | 12 × 1 | 52.12 / – |" in (tmp_path / "out" / "table.md").read_text()


@pytest.mark.slow
def test_two_processes_write_the_same_table_as_one(fixture_run, tmp_path):
    """Under torchrun every row shares one process group; rank 0 alone writes the same table.

    torchrun gives each worker one intra-op thread and each rank batches a different share of the
    images; the reference runs with one thread and batch size 1 too, because the tiny random models
    have near-ties that a different float summation order (threads, batch shapes) can flip.
    """
    import os
    import socket
    import subprocess
    import sys

    work, args, res = fixture_run
    assert res.exit_code == 0

    def args_for(name):
        out = list(args)
        out[out.index("--out") + 1] = str(tmp_path / name)
        out[out.index("--cache-dir") + 1] = str(tmp_path / f"cache-{name}")
        return [*out, "--batch-size", "1"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "corrbench", "reproduce", *args_for("one")],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(port),
                          "-m", "corrbench", "reproduce", *args_for("two")], capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    a = (tmp_path / "one" / "table.csv").read_text().splitlines()
    b = (tmp_path / "two" / "table.csv").read_text().splitlines()
    assert b == a, "\n".join(f"1: {x}\n2: {y}" for x, y in zip(a, b) if x != y)
    assert two.stdout.count("tables:") == 1  # only rank 0 reports
