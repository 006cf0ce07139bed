"""Readouts are registered objects: listed, chosen per method or per run, configured, recorded, keyed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import corrbench
from corrbench.options import Option
from corrbench.plugins import get_host
from corrbench.readouts import Readout, ReadoutOutput

SCRIPT = Path(sys.executable).parent / "corrbench"


def _cli(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CORRBENCH_CACHE": str(tmp / "cache"), "TQDM_DISABLE": "1"}
    return subprocess.run([str(SCRIPT), *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=600)


class Offset(Readout):
    """A third-party readout: the nn readout's prediction moved by a fixed offset (a test of the plumbing)."""

    name = "offset-nn"
    default_config = {"dx": Option(0, int, "pixels added to x", min=0)}

    def prepare_target(self, descriptor, target_map, target_grid, target_load_hw):
        from corrbench.readouts import NearestNeighbour

        return NearestNeighbour().prepare_target(descriptor, target_map, target_grid, target_load_hw)

    def transfer(self, x):
        from corrbench.readouts import NearestNeighbour

        out = NearestNeighbour().transfer(x)
        return ReadoutOutput(out.points + torch.tensor([float(self.config["dx"]), 0.0], dtype=torch.float64))


class _Plugin:
    @corrbench.hookimpl
    def register_readouts(self, register):
        register(Offset)


@pytest.fixture
def with_offset_readout():
    host = get_host()
    host.register_plugin(_Plugin(), "offset-test")
    yield
    host.readouts.remove_plugin("offset-test")
    host.pm.unregister(name="offset-test")


def test_the_core_and_the_dino_plugin_register_their_readouts(tmp_path):
    proc = _cli(tmp_path, "list", "readouts")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert lines["nn"].endswith("[corrbench]") and lines["pair-conditioned"].endswith("[corrbench]")
    assert lines["patch-centre"].endswith("[dino]")


def test_a_third_party_readout_is_chosen_configured_recorded_and_keyed(tmp_path, synthetic_dataset,
                                                                        with_offset_readout):
    cache = tmp_path / "cache"
    base = corrbench.evaluate("dsift", limit=4, cache_dir=cache)
    moved = corrbench.evaluate("dsift", limit=4, cache_dir=cache, readout="offset-nn",
                               overrides=["readout.dx=3"])
    entry = moved.results["methods"]["dsift"]
    assert entry["readout"] == "offset-nn" and entry["readout_config"] == {"dx": 3}
    assert entry["cache_key"]["readout"] == {"readout": "offset-nn", "version": "1", "config": {"dx": 3}}
    # the features came from the cache, the predictions did not: they are keyed by the readout
    assert entry["cost"]["images_extracted"] == 0
    a = base.predictions.sort_values("pair")["predicted_points"].tolist()
    b = moved.predictions.sort_values("pair")["predicted_points"].tolist()
    assert a != b
    with pytest.raises(corrbench.UsageError, match="readout.dx"):
        corrbench.evaluate("dsift", limit=4, cache_dir=cache, readout="offset-nn", overrides=["readout.dx=-1"])


def test_dino_reads_out_by_patch_centre_and_nn_on_request(tmp_path, synthetic_dataset):
    tiny = ["--set", "dino.model=test_vit", "--set", "dino.weights=random", "--set", "dino.load_size=64",
            "--set", "dino.layer=4"]
    default = _cli(tmp_path, "run", "-q", "-m", "dino", "--limit", "4", "--out", "a", *tiny)
    by_nn = _cli(tmp_path, "run", "-q", "-m", "dino", "--limit", "4", "--out", "b", "--readout", "nn", *tiny)
    by_mode = _cli(tmp_path, "run", "-q", "-m", "dino", "--limit", "4", "--out", "c", *tiny,
                   "--set", "dino.predict_mode=upsample_nn")
    assert default.returncode == by_nn.returncode == by_mode.returncode == 0, default.stderr + by_nn.stderr
    res = {d: json.loads((tmp_path / d / "results.json").read_text())["methods"]["dino"] for d in "abc"}
    assert res["a"]["readout"] == "patch-centre" and res["b"]["readout"] == "nn" and res["c"]["readout"] == "nn"
    assert res["b"]["metrics"] == res["c"]["metrics"]  # --readout nn is the old predict_mode=upsample_nn


def test_a_pair_conditioned_readout_refuses_a_method_without_a_transfer(tmp_path, synthetic_dataset):
    proc = _cli(tmp_path, "run", "-m", "dsift", "--limit", "2", "--readout", "pair-conditioned")
    assert proc.returncode == 2 and "has none" in proc.stderr and "Traceback" not in proc.stderr
    unknown = _cli(tmp_path, "run", "-m", "dsift", "--limit", "2", "--readout", "nope")
    assert unknown.returncode == 2 and "unknown readout 'nope'" in unknown.stderr


def test_info_describes_a_readout_and_a_methods_default(tmp_path):
    nn = _cli(tmp_path, "info", "nn")
    assert nn.returncode == 0 and nn.stdout.startswith("nn: readout from plugin corrbench")
    dhpf = _cli(tmp_path, "info", "dhpf")
    assert dhpf.returncode == 0 and "default readout: pair-conditioned" in dhpf.stdout
