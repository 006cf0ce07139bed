"""One CLI grammar: --device auto, --quiet, --sample/--seed, --alpha, split-named output folders,
``corrbench cache info|clear`` and a streaming, recursive ``extract`` — through the installed script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from corrbench.sampling import stratified_sample

SCRIPT = Path(sys.executable).parent / "corrbench"


def _cli(tmp: Path, *args: str, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    env = {**os.environ, "CORRBENCH_CACHE": str(tmp / "cache"), "TQDM_DISABLE": "1"}
    return subprocess.run([str(SCRIPT), *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=600,
                          stdin=stdin)


def test_run_sample_alpha_quiet_device_and_the_default_folder(tmp_path, synthetic_dataset):
    proc = _cli(tmp_path, "run", "-m", "dsift", "-q", "--sample", "12", "--seed", "3", "--alpha", "0.05,0.2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --quiet: no status lines, no progress
    runs = list((tmp_path / "corrbench-results").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("synthetic-test-")  # the resolved split, not "default"
    results = json.loads((runs[0] / "results.json").read_text())
    assert results["dataset"]["sample"] == {"n": 12, "of": 120, "seed": 3, "stratified_by": "category"}
    assert results["dataset"]["n_pairs"] == 12
    assert results["env"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # auto
    summary = pd.read_csv(runs[0] / "summary.csv")
    assert sorted(summary["alpha"].unique()) == [0.05, 0.1, 0.2]  # 0.1, the headline, is always there
    # the same sample is drawn again for the same seed, another one for another seed
    pairs = {p["pair"] for p in map(json.loads, (runs[0] / "predictions.jsonl").read_text().splitlines())}
    again = _cli(tmp_path, "run", "-m", "dsift", "-q", "--sample", "12", "--seed", "3", "--out", "again")
    other = _cli(tmp_path, "run", "-m", "dsift", "-q", "--sample", "12", "--seed", "4", "--out", "other")
    read = lambda d: {p["pair"] for p in map(json.loads, (tmp_path / d / "predictions.jsonl").read_text().splitlines())}  # noqa: E731
    assert again.returncode == other.returncode == 0
    assert read("again") == pairs and read("other") != pairs


@pytest.mark.parametrize("args, needle", [
    (("--alpha", "0"), "--alpha"), (("--alpha", "x"), "--alpha"), (("--sample", "0"), "--sample"),
    (("--device", "tpu"), "--device"),
])
def test_bad_grammar_values_are_usage_errors(tmp_path, args, needle):
    proc = _cli(tmp_path, "run", "-m", "dsift", *args)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr


def test_stratified_sample_keeps_category_shares():
    class P:
        def __init__(self, i, c):
            self.id, self.category = i, c

    pairs = [P(i, c) for i, c in enumerate(["a"] * 50 + ["b"] * 30 + ["c"] * 15 + ["d"] * 5)]
    got = stratified_sample(pairs, 20, seed=0)
    counts = Counter(p.category for p in got)
    assert counts == {"a": 10, "b": 6, "c": 3, "d": 1}  # 20 × (50, 30, 15, 5) / 100 exactly
    assert [p.id for p in got] == sorted(p.id for p in got)  # the split's order is kept
    assert [p.id for p in stratified_sample(pairs, 20, seed=0)] == [p.id for p in got]
    assert [p.id for p in stratified_sample(pairs, 20, seed=1)] != [p.id for p in got]
    few = Counter(p.category for p in stratified_sample(pairs, 4, seed=0))
    assert few == {"a": 1, "b": 1, "c": 1, "d": 1}  # every category, when there are draws enough
    assert len(stratified_sample(pairs, 7, seed=5)) == 7


def test_cache_info_and_clear(tmp_path, synthetic_dataset):
    assert _cli(tmp_path, "run", "-q", "--limit", "3", "--out", "r").returncode == 0
    info = _cli(tmp_path, "cache", "info")
    assert info.returncode == 0 and "dsift-" in info.stdout and "colour-patch-" in info.stdout
    refused = _cli(tmp_path, "cache", "clear", "-m", "dsift")  # no terminal, no --yes: refuse, delete nothing
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert any(p.name.startswith("dsift-") for p in (tmp_path / "cache").iterdir())
    cleared = _cli(tmp_path, "cache", "clear", "-m", "dsift", "--yes")
    assert cleared.returncode == 0 and "deleted 1" in cleared.stdout
    left = {p.name.rsplit("-", 1)[0] for p in (tmp_path / "cache").iterdir()}
    assert left == {"colour-patch"}


def test_extract_recurses_streams_and_matches_describe(tmp_path):
    rng = np.random.default_rng(0)
    for rel in ("cat/a.png", "cat/b.png", "dog/a.png"):
        path = tmp_path / "imgs" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(path)
    proc = _cli(tmp_path, "extract", "-m", "colour-patch", "--images", "imgs", "--out", "f.safetensors",
                "--set", "colour-patch.load_size=32", "-q")
    assert proc.returncode == 0, proc.stderr
    with safe_open(str(tmp_path / "f.safetensors"), framework="pt") as fh:
        assert sorted(fh.keys()) == ["cat/a", "cat/b", "dog/a"]
        meta = fh.metadata()
        got = fh.get_tensor("dog/a")
    assert meta["method"] == "colour-patch" and json.loads(meta["config"])["load_size"] == 32
    # colour-patch at stride 2 with a 7 × 7 patch: the centre value of each cell is the pixel itself
    img = np.asarray(Image.open(tmp_path / "imgs/dog/a.png").convert("RGB").resize((32, 32), Image.BILINEAR),
                     dtype=np.float64) / 255.0
    centre = got.view(3, 49, 16, 16)[:, 24].double().numpy()  # channel-major patch, middle element
    np.testing.assert_allclose(centre, img[::2, ::2].transpose(2, 0, 1), atol=1e-6)
    assert not list(tmp_path.glob(".f.safetensors.*"))  # no temporary file left behind


def test_quiet_compare_prints_the_verdict_only_and_data_takes_data_root(tmp_path):
    baseline = Path(__file__).resolve().parents[1] / "benchmarks" / "baselines" / "dhf-paper.json"
    proc = _cli(tmp_path, "compare", str(baseline), str(baseline), "-q")
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.strip()][-1].startswith("PASS")
    assert "|" not in proc.stdout  # no table
    verify = _cli(tmp_path, "data", "verify", "spair", "--data-root", str(tmp_path / "missing"))
    assert verify.returncode == 1 and str(tmp_path / "missing") in verify.stdout + verify.stderr
