"""The SD weights identity of a hub id is the commit of the snapshot that is actually loaded.

Before, a hub id that was not yet in the local cache had the identity ``hub:<id>@not-in-local-cache``
and, once downloaded, ``hub:<id>@<commit>``: the second run's cache key differed from the first's and
every feature was computed again. Now the identity is resolved once, after the weights are, and
memoised on the descriptor; weights that cannot be resolved are the load's one-line WeightsError.

The hub cache here is a folder laid out as huggingface_hub lays it out (``models--org--name/refs/main``
and ``snapshots/<commit>/``) holding a tiny pipeline; the checks run in a subprocess so that
``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` are read by freshly imported libraries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from corrbench.errors import WeightsError  # noqa: E402
from corrbench.testing.sd import make_tiny_sd  # noqa: E402
from corrbench_dhf.methods import DHF  # noqa: E402
from corrbench_sd import extractor as sd_extractor  # noqa: E402
from corrbench_sd import loading  # noqa: E402
from corrbench_sd.methods import SDLayer4  # noqa: E402

HUB_ID = "corrbench-test/tiny-sd"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

SCRIPT = r"""
import json, sys
from corrbench.errors import WeightsError
from corrbench_sd.methods import SDLayer4, SDConcatAll
from corrbench_dhf.methods import DHF

hub_id = sys.argv[1]
out = {}
small = {"model": hub_id, "image_size": 64, "num_steps": 2, "raw_indices": [1, 0]}
try:
    d = SDLayer4(small)
    out["first"] = d.weights_identity()
    out["again"] = d.weights_identity()
    out["other_method"] = SDConcatAll(small).weights_identity()
    out["dhf"] = DHF({"model": hub_id, "weights": "random", "image_size": 64, "num_steps": 2}).weights_identity()
    d.ensure_ready()  # the snapshot really loads, and the identity stays what it was
    out["after_load"] = d.weights_identity()
    out["loaded_from"] = d.extractor.components.source.where
except WeightsError as exc:
    out["error"] = str(exc)
print("RESULT " + json.dumps(out))
"""


def run_identity(cache_dir, hub_id=HUB_ID) -> dict:
    env = {**os.environ, "HF_HUB_CACHE": str(cache_dir), "HF_HOME": str(cache_dir.parent / "hf-home"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, hub_id], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_hub_identity_is_the_cached_snapshot_commit_and_stable(tmp_path):
    repo = tmp_path / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    make_tiny_sd(repo / "snapshots" / COMMIT, seed=2)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    got = run_identity(tmp_path / "hub")
    assert "error" not in got, got.get("error")
    expected = f"hub:{HUB_ID}@{COMMIT}"
    assert got["first"] == got["again"] == got["other_method"] == got["after_load"] == expected
    assert got["dhf"] == f"aggregation=random:seed0|sd={expected}"
    assert got["loaded_from"] == HUB_ID


def test_hub_weights_missing_offline_is_one_clear_error(tmp_path):
    (tmp_path / "hub").mkdir()
    got = run_identity(tmp_path / "hub")
    message = got.get("error")
    assert message is not None, f"expected a WeightsError, got the identity {got}"
    assert "\n" not in message and "not-in-local-cache" not in message
    assert HUB_ID in message and "huggingface-cli download" in message


def test_identity_is_resolved_after_the_weights_and_memoised(monkeypatch):
    """Not in the cache: the descriptor loads (downloads) first, then reads the loaded snapshot's commit."""
    state = {"cached": False, "loads": 0, "lookups": 0}

    def hub_revision(hub_id):
        state["lookups"] += 1
        return COMMIT if state["cached"] else None

    def get_components(model, **kwargs):  # stands in for the download + load of a run's setup
        state["loads"] += 1
        state["cached"] = True
        return SimpleNamespace(unet=object())

    monkeypatch.setattr(loading, "_hub_revision", hub_revision)
    monkeypatch.setattr(sd_extractor, "get_components", get_components)
    for d in (SDLayer4({"model": HUB_ID}), DHF({"model": HUB_ID, "weights": "random"})):
        state.update(cached=False, loads=0, lookups=0)
        first = d.weights_identity()
        assert first.endswith(f"hub:{HUB_ID}@{COMMIT}") and state["loads"] == 1
        lookups = state["lookups"]
        assert d.weights_identity() == first and state["lookups"] == lookups  # memoised: resolved once

    # weights that cannot be resolved: the load's error, never a placeholder identity
    def failing_load(model, **kwargs):
        raise WeightsError(f"Stable Diffusion weights {model!r} (unet) are not available offline")

    monkeypatch.setattr(sd_extractor, "get_components", failing_load)
    state["cached"] = False
    with pytest.raises(WeightsError, match="not available offline"):
        SDLayer4({"model": HUB_ID}).weights_identity()
    with pytest.raises(WeightsError, match="not in the local Hugging Face cache"):
        loading.weights_identity(loading.resolve_source(HUB_ID))  # no loader given: no identity either
