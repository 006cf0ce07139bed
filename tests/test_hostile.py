"""Hostile inputs, end to end: the installed ``corrbench`` gets one bad input of each kind.

Each must give one line on stderr naming the file or value (no traceback), the right exit status, and
leave nothing half-written: no results.json, no temporary files in the output folder or the cache.
Files corrbench writes take the user's umask, so a shared lab cache stays readable by the group.
The interrupted run (SIGINT, status 130) is in test_exit_codes.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from corrbench.errors import WeightsError
from test_exit_codes import CORRBENCH, assert_one_line_error, corrbench, error_lines
from test_exit_codes import home  # noqa: F401,F811  (a fixture)


def assert_nothing_half_written(*folders: Path) -> None:
    for folder in folders:
        if not folder.exists():
            continue
        assert not (folder / "results.json").exists(), folder
        leftovers = [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".part"))]
        assert not leftovers, leftovers


@pytest.fixture
def work(home, tmp_path):
    """A fresh output folder and feature cache per test (neither exists yet)."""
    return SimpleNamespace(out=tmp_path / "out", cache=tmp_path / "cache", tmp=tmp_path)


def run(home, work, *args):
    return corrbench(home, "run", *args, "--cache-dir", work.cache, "--out", work.out)


# ---------------------------------------------------------------------------------------------
# Names and values on the command line: usage errors (2), before any work
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,needles", [
    (["--methods", "nope"], ["unknown method 'nope'"]),
    (["--dataset", "nope", "--methods", "dsift"], ["unknown dataset 'nope'"]),
    (["--methods", "dsift", "--set", "dsift.stride=abc"], ["dsift.stride", "abc"]),
], ids=["method", "dataset", "setting-value"])
def test_bad_names_and_values_are_usage_errors(home, work, args, needles):
    assert_one_line_error(run(home, work, *args), 2, *needles)
    assert not work.out.exists() and not work.cache.exists()


# ---------------------------------------------------------------------------------------------
# Data: missing root, corrupt image (1)
# ---------------------------------------------------------------------------------------------
def test_missing_data_root_is_named(home, work):
    missing = work.tmp / "nonexistent"
    assert_one_line_error(run(home, work, "--dataset", "spair", "--data-root", missing, "--methods", "dsift"),
                          1, str(missing))
    assert not work.out.exists()


def test_truncated_image_in_an_spair_layout_is_named(home, work):
    from corrbench.testing.datasets import write_spair_fixture

    fx = write_spair_fixture(work.tmp / "SPair-71k", categories=("cat",))
    victim = next(fx.root / "JPEGImages" / r.category / r.name for r in fx.images.values() if r.split == "test")
    victim.write_bytes(victim.read_bytes()[:300])
    proc = run(home, work, "--dataset", "spair", "--data-root", fx.root, "--methods", "colour-patch")
    assert_one_line_error(proc, 1, str(victim))
    assert_nothing_half_written(work.out, work.cache)


# ---------------------------------------------------------------------------------------------
# A corrupt cache entry: one warning naming it, recomputed, same numbers (0)
# ---------------------------------------------------------------------------------------------
def test_corrupt_cache_entry_is_named_and_recomputed(home, work):
    args = ["--methods", "dsift", "--limit", "4", "--batch-size", "1"]
    first = corrbench(home, "run", *args, "--cache-dir", work.cache, "--out", work.tmp / "first")
    assert first.returncode == 0, first.stderr
    entries = sorted(work.cache.rglob("*.safetensors"))
    victim = entries[len(entries) // 2]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    for predictions in work.cache.glob("*/predictions"):  # else the rerun never needs the features again
        shutil.rmtree(predictions)
    again = corrbench(home, "run", *args, "--cache-dir", work.cache, "--out", work.tmp / "again")
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    warnings = [line for line in error_lines(again) if line.startswith("warning:")]
    assert len(warnings) == 1 and str(victim) in warnings[0], again.stderr
    assert (work.tmp / "first" / "summary.csv").read_bytes() == (work.tmp / "again" / "summary.csv").read_bytes()
    metrics = [{m: r["metrics"] for m, r in json.loads((work.tmp / d / "results.json").read_text())["methods"].items()}
               for d in ("first", "again")]
    assert metrics[0] == metrics[1]
    from safetensors.torch import load_file

    assert "features" in load_file(str(victim))  # rewritten whole
    assert_nothing_half_written(work.cache)


# ---------------------------------------------------------------------------------------------
# Weights files: truncated, foreign, not torch at all (1, naming the file and what is wrong)
# ---------------------------------------------------------------------------------------------
def _official_checkpoint(path: Path) -> Path:
    from corrbench_dhf.checkpoint import save_checkpoint
    from corrbench_dhf.network import AggregationNetwork

    net = AggregationNetwork([16, 32], 2, projection_dim=16, num_norm_groups=4)
    return save_checkpoint(path, net, config={"save_timestep": [1, 0]}, step=1)


def _bad_weights(folder: Path) -> dict[str, tuple[Path, str]]:
    """kind → (file, what the error must say)."""
    full = _official_checkpoint(folder / "full.pt").read_bytes()
    files = {}
    p = folder / "truncated.pt"
    p.write_bytes(full[: len(full) // 2])
    files["truncated"] = (p, "truncated")
    p = folder / "foreign.pt"
    torch.save(torch.nn.Conv2d(3, 5, 3).state_dict(), p)
    files["foreign"] = (p, "expected the official checkpoint dict")  # the DHF loader's words
    p = folder / "text.pt"
    p.write_text("import os\n")
    files["not-torch"] = (p, "not a PyTorch checkpoint")
    p = folder / "empty.pt"
    p.write_bytes(b"")
    files["empty"] = (p, "empty")
    return files


KINDS = ["truncated", "foreign", "not-torch", "empty"]


@pytest.mark.parametrize("kind", KINDS)
def test_dhf_checkpoint_loader_names_the_problem(tmp_path, kind):
    from corrbench_dhf.checkpoint import load_checkpoint

    path, needle = _bad_weights(tmp_path)[kind]
    with pytest.raises(WeightsError, match=needle) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kind", KINDS)
def test_dino_and_dhpf_loaders_name_the_problem(tmp_path, kind):
    from corrbench_dhpf.learner import load_checkpoint as dhpf_load
    from corrbench_dino.weights import load_checkpoint as dino_load

    path, needle = _bad_weights(tmp_path)[kind]
    model = torch.nn.Linear(4, 6)
    model.channels = [4]  # what the DHPF loader reads for its hint
    spec = SimpleNamespace(arch="tiny", hf_hub_id="x", release_url=None)
    for load, foreign in ((lambda: dino_load(model, path, spec), "does not fit the tiny architecture"),
                          (lambda: dhpf_load(model, path), "is not a DHPF learner")):
        with pytest.raises(WeightsError, match=foreign if kind == "foreign" else needle) as err:
            load()
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_dhpf_backbone_loader_names_a_truncated_file(tmp_path):
    from corrbench_dhpf.backbone import build_resnet

    path, _ = _bad_weights(tmp_path)["truncated"]
    with pytest.raises(WeightsError, match="truncated") as err:
        build_resnet("resnet50", str(path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("method,sets", [
    ("dhf", []),
    ("dino", ["dino.model=test_vit", "dino.load_size=64", "dino.stride=8"]),
], ids=["dhf", "dino"])
def test_a_truncated_weights_file_stops_the_run_with_status_1(home, work, method, sets):
    path, _ = _bad_weights(work.tmp)["truncated"]
    overrides = [a for s in [*sets, f"{method}.weights={path}"] for a in ("--set", s)]
    proc = run(home, work, "--methods", method, "--limit", "1", *overrides)
    assert_one_line_error(proc, 1, str(path), "truncated")
    assert_nothing_half_written(work.out, work.cache)


# ---------------------------------------------------------------------------------------------
# An output folder that cannot be written: refused before any work (2: the --out value is unusable)
# ---------------------------------------------------------------------------------------------
def test_out_under_a_regular_file_is_refused_before_any_work(home, work):
    blocker = work.tmp / "a-file"
    blocker.write_text("x")
    proc = corrbench(home, "run", "--methods", "dsift", "--limit", "2", "--cache-dir", work.cache,
                     "--out", blocker / "sub")
    assert_one_line_error(proc, 2, str(blocker), "--out")
    assert not work.cache.exists()  # nothing was extracted
    assert blocker.read_text() == "x"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes through chmod 555")
def test_out_in_a_read_only_folder_is_refused_before_any_work(home, work):
    locked = work.tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        proc = corrbench(home, "run", "--methods", "dsift", "--limit", "2", "--cache-dir", work.cache,
                         "--out", locked / "out")
    finally:
        locked.chmod(0o755)
    assert_one_line_error(proc, 2, str(locked), "not a writable folder")
    assert not work.cache.exists() and not (locked / "out").exists()


# ---------------------------------------------------------------------------------------------
# File modes follow the umask (mkstemp/mkdtemp alone would give 0600/0700)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask,file_mode,dir_mode", [("022", 0o644, 0o755), ("002", 0o664, 0o775)],
                         ids=["umask-022", "umask-002"])
def test_written_files_follow_the_umask(home, work, umask, file_mode, dir_mode):
    base, env = home
    data = work.tmp / "data"  # a fresh synthetic dataset, generated under this umask too
    proc = subprocess.run(["bash", "-c", f'umask {umask} && exec "$0" "$@"', str(CORRBENCH), "run",
                           "--methods", "dsift", "--limit", "2", "--data-root", str(data),
                           "--cache-dir", str(work.cache), "--out", str(work.out)],
                          cwd=base / "cwd", env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr

    def mode(p: Path) -> int:
        return p.stat().st_mode & 0o777

    written = [work.out / "results.json", work.out / "summary.csv", *work.cache.rglob("*.safetensors"),
               *work.cache.rglob("config.json"), *work.cache.rglob("*.npy")]
    assert len(written) > 4
    assert {str(p): mode(p) for p in written} == {str(p): file_mode for p in written}
    layout = next(data.glob("v*-seed*"))
    assert mode(layout) == dir_mode and mode(work.out) == dir_mode
