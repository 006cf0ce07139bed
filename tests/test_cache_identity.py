"""The feature cache never serves numbers that other weights or other code computed.

Each test installs a small third-party plugin the way pip would (a package plus a ``.dist-info``
folder with its entry point) on ``PYTHONPATH`` and drives the installed CLI in subprocesses, so the
cache key is exercised exactly as a user meets it: a re-seeded ``nn.Module``, an edited editable
plugin, a method that cannot name its weights.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = '''
import os
import torch
import corrbench

SCALE = 1.0  # edited by the tests: a code change that no version bump announces

class Adhoc(corrbench.Descriptor):
    """A plain nn.Module descriptor: its weights come from a seed the config does not show."""
    name = "adhoc"
    default_config = {"load_size": 48}

    def setup(self):
        torch.manual_seed(int(os.environ.get("ADHOC_SEED", "0")))
        self.net = torch.nn.Conv2d(3, 8, 3, padding=1)

    def extract(self, images):
        return self.net(images) * SCALE

_GLOBAL = {}

class Hidden(corrbench.Descriptor):
    """Keeps its weights where the core cannot see them: its features cannot be keyed."""
    name = "hidden"
    default_config = {"load_size": 48}

    def extract(self, images):
        if "w" not in _GLOBAL:
            _GLOBAL["w"] = torch.randn(8, 3, 1, 1, generator=torch.Generator().manual_seed(0))
        return torch.nn.functional.conv2d(images, _GLOBAL["w"])

@corrbench.hookimpl
def register_methods(register):
    register(Adhoc)
    register(Hidden)
'''


def _install(site: Path, *, editable: bool) -> Path:
    """The plugin as pip lays it out: ``adhoc_plugin/`` and ``adhoc_plugin-0.1.dist-info/``."""
    pkg = site / "adhoc_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(PLUGIN)
    info = site / "adhoc_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: adhoc-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[corrbench]\nadhoc = adhoc_plugin\n")
    (info / "top_level.txt").write_text("adhoc_plugin\n")
    if editable:  # PEP 610, as `pip install -e` records it
        (info / "direct_url.json").write_text(json.dumps({"url": f"file://{site}", "dir_info": {"editable": True}}))
    return pkg / "__init__.py"


def _run(tmp: Path, site: Path, method: str, out: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(site), "CORRBENCH_CACHE": str(tmp / "cache"),
                "CORRBENCH_DATA": str(tmp / "data"), "TQDM_DISABLE": "1", **env}
    return subprocess.run([sys.executable, "-m", "corrbench", "run", "-m", method, "--limit", "6",
                           "--out", str(tmp / out)], cwd=tmp, env=full_env, capture_output=True, text=True,
                          timeout=300)


def _extracted(proc: subprocess.CompletedProcess, method: str) -> int:
    assert proc.returncode == 0, proc.stderr
    m = re.search(rf"^{re.escape(method)}: (\d+) images extracted", proc.stderr, flags=re.M)
    assert m, proc.stderr
    return int(m.group(1))


def _features_key(tmp: Path, out: str, method: str) -> dict:
    return json.loads((tmp / out / "results.json").read_text())["methods"][method]["cache_key"]


def test_a_reseeded_module_is_recomputed_and_the_same_one_is_reused(tmp_path):
    site = tmp_path / "site"
    _install(site, editable=False)
    first = _run(tmp_path, site, "adhoc", "r1")
    n = _extracted(first, "adhoc")
    assert n > 0
    assert _extracted(_run(tmp_path, site, "adhoc", "r2"), "adhoc") == 0  # same weights: all from cache
    reseeded = _run(tmp_path, site, "adhoc", "r3", ADHOC_SEED="1")
    assert _extracted(reseeded, "adhoc") == n  # other weights, same config: nothing reused
    w1 = _features_key(tmp_path, "r1", "adhoc")["weights"]
    w3 = _features_key(tmp_path, "r3", "adhoc")["weights"]
    assert w1.startswith("state-dict:") and w3.startswith("state-dict:") and w1 != w3


def test_editing_an_editable_plugin_without_a_version_bump_is_not_served_from_the_cache(tmp_path):
    site = tmp_path / "site"
    source = _install(site, editable=True)
    n = _extracted(_run(tmp_path, site, "adhoc", "r1"), "adhoc")
    assert _extracted(_run(tmp_path, site, "adhoc", "r2"), "adhoc") == 0
    source.write_text(source.read_text().replace("SCALE = 1.0", "SCALE = 2.0"))
    assert _extracted(_run(tmp_path, site, "adhoc", "r3"), "adhoc") == n
    before = _features_key(tmp_path, "r1", "adhoc")["plugin_version"]
    after = _features_key(tmp_path, "r3", "adhoc")["plugin_version"]
    assert before.startswith("0.1+src.") and after.startswith("0.1+src.") and before != after


def test_a_released_plugin_is_keyed_by_its_version(tmp_path):
    site = tmp_path / "site"
    _install(site, editable=False)
    _extracted(_run(tmp_path, site, "adhoc", "r1"), "adhoc")
    assert _features_key(tmp_path, "r1", "adhoc")["plugin_version"] == "0.1"


def test_a_method_without_a_weights_identity_says_so_and_is_never_reused(tmp_path):
    site = tmp_path / "site"
    _install(site, editable=False)
    first = _run(tmp_path, site, "hidden", "r1")
    n = _extracted(first, "hidden")
    assert "hidden: no weights identity" in first.stderr
    assert len([l for l in first.stderr.splitlines() if "no weights identity" in l]) == 1
    second = _run(tmp_path, site, "hidden", "r2")
    assert _extracted(second, "hidden") == n  # recomputed, not served
    results = json.loads((tmp_path / "r2" / "results.json").read_text())["methods"]["hidden"]
    assert results["weights"] is None and results["cache"] is None
    # and nothing of it was left in the shared cache
    assert not any(p.name.startswith("hidden-") for p in (tmp_path / "cache").glob("*"))


def test_prediction_cache_key_covers_the_readout(tmp_path, monkeypatch):
    """Predictions are keyed by the readout's identity too: a new readout version recomputes them."""
    import torch

    from corrbench.cache import FeatureCache
    from corrbench.images import ImageRecord
    from corrbench.readouts import NearestNeighbour
    from corrbench.runner import _FeatureStore
    from corrbench_classic.descriptors import DenseSIFT

    rec = ImageRecord(Path("a.png"), "ab" * 32, (10, 10))
    points = torch.zeros(3, 2, dtype=torch.float64)
    cache = FeatureCache(tmp_path, "dsift", {"x": 1})
    before = _FeatureStore(DenseSIFT({}), cache, "cpu")._prediction_path(rec, rec, points)
    monkeypatch.setattr(NearestNeighbour, "version", "test-next")
    after = _FeatureStore(DenseSIFT({}), cache, "cpu")._prediction_path(rec, rec, points)
    assert before != after and before.parent.parent == after.parent.parent


@pytest.mark.parametrize("weights_dtype", ["float32", "float64"])
def test_state_dict_digest_changes_with_any_weight_or_buffer(weights_dtype):
    import torch

    from corrbench.hashing import state_dict_digest

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).to(getattr(torch, weights_dtype))
    base = state_dict_digest({"net": net})
    assert state_dict_digest({"net": net}) == base
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] += 1e-3  # any retrain, however small, moves the digest
    assert state_dict_digest({"net": net}) != base
    moved = state_dict_digest({"net": net})
    net[1].running_mean += 1  # buffers count too
    assert state_dict_digest({"net": net}) not in (base, moved)
