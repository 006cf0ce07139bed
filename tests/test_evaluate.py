"""``corrbench.evaluate``: names, Descriptors, nn.Modules and callables, with the CLI's numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import corrbench


class Grey(torch.nn.Module):
    """A one-layer module; its weights decide the features."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, images):
        return self.conv(images)


def colour(images):
    return images  # raw RGB per pixel: a plain callable, no weights


def test_a_registered_name_gives_the_cli_numbers(tmp_path, synthetic_dataset):
    res = corrbench.evaluate("dsift", "synthetic", limit=8, cache_dir=tmp_path / "cache")
    out = tmp_path / "cli"
    env = {**os.environ, "CORRBENCH_CACHE": str(tmp_path / "cache2")}
    proc = subprocess.run([sys.executable, "-m", "corrbench", "run", "-m", "dsift", "--limit", "8", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cli = json.loads((out / "results.json").read_text())["methods"]["dsift"]["metrics"]
    assert res.results["methods"]["dsift"]["metrics"] == cli
    assert set(res.summary["method"]) == {"dsift"}
    assert len(res.predictions) == res.results["dataset"]["n_pairs"]
    assert "| dsift" in res.to_markdown()


def test_modules_and_callables_run_and_score_like_a_hand_computed_readout(tmp_path, synthetic_dataset):
    res = corrbench.evaluate([Grey(0), colour, corrbench.get_method("dsift", stride=4)], limit=6,
                             cache_dir=tmp_path / "cache")
    assert set(res.results["methods"]) == {"grey", "colour", "dsift"}
    assert res.results["methods"]["dsift"]["config"]["stride"] == 4
    # PCK is the share of keypoints within alpha * L of the truth: recompute it from the predictions
    preds = res.predictions[res.predictions["method"] == "grey"]
    dist = np.concatenate([np.hypot(*(np.asarray(p, dtype=np.float64) - np.asarray(t, dtype=np.float64)).T)
                           for p, t in zip(preds["predicted_points"], preds["target_points"])])
    lengths = np.concatenate([np.full(len(t), l) for t, l in zip(preds["target_points"], preds["L_bbox"])])
    expected = 100.0 * float(np.mean(dist <= 0.1 * lengths))
    assert res.metric("grey", "pck@0.10_bbox") == pytest.approx(expected, abs=1e-9)


def test_a_retrained_module_is_not_served_from_the_cache(tmp_path, synthetic_dataset):
    cache = tmp_path / "cache"
    first = corrbench.evaluate(Grey(0), limit=4, cache_dir=cache)
    again = corrbench.evaluate(Grey(0), limit=4, cache_dir=cache)
    other = corrbench.evaluate(Grey(1), limit=4, cache_dir=cache)
    cost = lambda r: r.results["methods"]["grey"]["cost"]  # noqa: E731
    assert cost(first)["images_extracted"] > 0
    assert cost(again)["images_extracted"] == 0
    assert cost(other)["images_extracted"] == cost(first)["images_extracted"]


def test_a_plain_callable_is_recomputed_and_says_so(tmp_path, synthetic_dataset):
    with pytest.warns(UserWarning, match="colour: no weights identity"):
        res = corrbench.evaluate(colour, limit=4, cache_dir=tmp_path / "cache")
    assert res.results["methods"]["colour"]["weights"] is None
    flagged = corrbench.as_descriptor(colour, weight_free=True)
    corrbench.evaluate(flagged, limit=4, cache_dir=tmp_path / "cache")
    assert corrbench.evaluate(corrbench.as_descriptor(colour, weight_free=True), limit=4,
                              cache_dir=tmp_path / "cache").results["methods"]["colour"]["cost"]["images_extracted"] == 0


def test_bad_methods_are_one_line_usage_errors():
    with pytest.raises(corrbench.UsageError, match="registered name"):
        corrbench.evaluate([42])
    with pytest.raises(corrbench.UsageError, match="listed twice"):
        corrbench.evaluate([colour, colour])
