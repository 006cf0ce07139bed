"""The command line: the default run, files, errors, report, list, plugins."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from corrbench.testing import invoke_cli


_invoke = invoke_cli


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "corrbench", "run", "--methods", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown method 'nope'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    code, stdout, stderr = _invoke(["run", "--limit", "12", "--out", str(out)])
    assert code == 0, stderr
    return out, stdout


def test_default_run_prints_the_table_and_writes_files(default_run):
    out, stdout = default_run
    assert "dsift" in stdout and "colour-patch" in stdout and "PCK@0.1" in stdout
    for name in ("results.json", "summary.csv", "summary.md", "breakdown.csv", "predictions.jsonl"):
        assert (out / name).is_file(), name
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == ["method", "dataset", "split", "metric", "norm", "average", "alpha", "value", "n",
                                     "ci_low", "ci_high"]
    assert set(summary.norm) == {"bbox", "img"} and set(summary.average) == {"point", "image", "category"}
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["n_pairs"] == 12
    m = results["methods"]["dsift"]
    assert set(m["cost"]) >= {"extract_s_per_image", "readout_pairs_per_s", "peak_host_mb"}
    assert m["config"]["bin_size"] == 4 and results["protocol"]["compare"] == "le"
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 2 * 12
    # per-pair predictions agree with the summary: recompute PCK@0.1 bbox from them
    d = [(dist, p["L_bbox"]) for p in preds if p["method"] == "dsift" for dist in p["distances"]]
    recomputed = 100 * sum(x <= 0.1 * L for x, L in d) / len(d)
    row = summary[(summary.method == "dsift") & (summary.norm == "bbox") & (summary.average == "point") & (summary.alpha == 0.1)]
    assert row.value.iloc[0] == pytest.approx(recomputed, abs=1e-3)


def test_rerun_hits_the_cache(default_run, tmp_path):
    code, stdout, stderr = _invoke(["run", "--limit", "12", "--out", str(tmp_path / "again")])
    assert code == 0
    assert "0 images extracted" in stderr
    code, _, stderr = _invoke(["run", "--limit", "12", "--set", "dsift.bin_size=5", "--methods", "dsift",
                               "--out", str(tmp_path / "changed")])
    assert code == 0 and "0 images extracted" not in stderr


def test_report_formats(default_run):
    out, _ = default_run
    for fmt, marker in (("md", "|"), ("csv", ","), ("latex", "\\begin{tabular}")):
        code, stdout, stderr = _invoke(["report", str(out), "--format", fmt])
        assert code == 0, stderr
        assert marker in stdout and "dsift" in stdout


@pytest.mark.parametrize("args,needle", [
    (["run", "--methods", "nope"], "unknown method 'nope'; known methods: "),
    (["run", "--dataset", "nope"], "unknown dataset 'nope'"),
    (["run", "--methods", "dsift", "--set", "dsift.nope=1"], "valid keys: bin_size, load_size, stride"),
    (["run", "--methods", "dsift", "--set", "zzz.k=1"], "not a method, dataset or shared namespace"),
    (["run", "--methods", "dsift", "--set", "novalue"], "expected NAME.key=value"),
    (["run", "--split", "nope"], "has no split 'nope'"),
    (["report", "/nonexistent"], "not a finished corrbench run"),
])
def test_user_errors_are_one_line_with_exit_code_2(args, needle):
    code, stdout, stderr = _invoke(args)
    assert code == 2, (stdout, stderr)
    assert needle in stderr
    assert "Traceback" not in stderr


def test_missing_dataset_root_says_what_is_missing(tmp_path):
    code, _, stderr = _invoke(["run", "--dataset", "spair", "--data-root", str(tmp_path / "none"), "--methods", "dsift"])
    assert code != 0 and "Traceback" not in stderr
    assert str(tmp_path / "none") in stderr


def test_corrupt_image_is_named_and_skip_invalid_counts_it(tmp_path, synthetic_dataset):
    import shutil

    root = tmp_path / "synthetic"
    shutil.copytree(synthetic_dataset.root, root)
    layout = next(root.glob("v*-seed0"))
    victim = sorted((layout / "JPEGImages" / "bird").glob("*.jpg"))[-1]
    victim.write_bytes(victim.read_bytes()[:200])
    only_birds = ["--set", "synthetic.categories=bird"]
    code, _, stderr = _invoke(["run", "--methods", "colour-patch", "--data-root", str(root), *only_birds,
                               "--out", str(tmp_path / "o")])
    assert code == 1 and victim.name in stderr and "Traceback" not in stderr
    code, stdout, stderr = _invoke(["run", "--methods", "colour-patch", "--data-root", str(root), "--skip-invalid",
                                    *only_birds, "--out", str(tmp_path / "o2")])
    assert code == 0, stderr
    skipped = json.loads((tmp_path / "o2" / "results.json").read_text())["dataset"]["skipped"]
    assert skipped and all(victim.name in s for s in skipped) and "skipped" in stdout


def test_list_and_plugins():
    code, stdout, _ = _invoke(["list", "methods", "d*"])
    assert code == 0 and "dsift" in stdout and "colour-patch" not in stdout
    code, stdout, _ = _invoke(["plugins"])
    plugins = {p["name"]: p for p in json.loads(stdout)}
    assert "synthetic" in plugins["synthetic"]["datasets"] and "dsift" in plugins["classic"]["methods"]
    assert plugins["classic"]["distribution"] == "corrbench"


def test_debug_shows_the_traceback():
    code, _, stderr = _invoke(["--debug", "run", "--methods", "nope"])
    assert code != 0 and "Traceback" in stderr


def test_extract_writes_one_tensor_per_image(tmp_path, synthetic_dataset):
    from safetensors import safe_open

    images = sorted((synthetic_dataset.layout_root / "JPEGImages" / "car").glob("*.jpg"))[:3]
    out = tmp_path / "f.safetensors"
    code, stdout, stderr = _invoke(["extract", "--method", "dsift", "--images", *map(str, images), "--out", str(out)])
    assert code == 0, stderr
    with safe_open(str(out), framework="pt") as fh:
        assert sorted(fh.keys()) == sorted(p.stem for p in images)
        assert fh.get_tensor(images[0].stem).shape[0] == 128
        assert json.loads(fh.metadata()["config"])["bin_size"] == 4
    code, _, stderr = _invoke(["extract", "--method", "dsift", "--images", str(images[0]), "--raw", "--out", str(out)])
    assert code == 2 and "no raw feature export" in stderr
