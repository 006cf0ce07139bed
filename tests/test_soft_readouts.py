"""The soft readouts against a naive dense float64 computation written here, and through the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from corrbench.api import Descriptor, FeatureGrid
from corrbench.readouts import KernelSoftArgmax, ReadoutInput, SoftArgmax, WindowSoftArgmax

LOAD_S, LOAD_T = (20, 24), (22, 18)  # (H, W) load frames of source and target


class _Plain(Descriptor):
    name = "plain"
    weight_free = True


def _case(seed: int):
    g = torch.Generator().manual_seed(seed)
    src, tgt = torch.randn(5, 10, 12, generator=g), torch.randn(5, 11, 9, generator=g)
    points = torch.tensor([[3.2, 4.7], [20.0, 1.0], [11.6, 15.4]], dtype=torch.float64)
    return src, tgt, points


def _naive_cosines(src, tgt, points):
    """Upsample both maps to their load frames (bilinear, half-pixel centres), take each keypoint's
    feature at its rounded pixel, and its cosine with every target pixel — in float64, one pixel at a time."""
    s_up = F.interpolate(src[None].double(), size=LOAD_S, mode="bilinear", align_corners=False)[0]
    t_up = F.interpolate(tgt[None].double(), size=LOAD_T, mode="bilinear", align_corners=False)[0]
    out = torch.zeros(len(points), *LOAD_T, dtype=torch.float64)
    for n, (x, y) in enumerate(points.tolist()):
        px = min(max(int(math.floor(x + 0.5)), 0), LOAD_S[1] - 1)
        py = min(max(int(math.floor(y + 0.5)), 0), LOAD_S[0] - 1)
        f = s_up[:, py, px]
        for i in range(LOAD_T[0]):
            for j in range(LOAD_T[1]):
                v = t_up[:, i, j]
                out[n, i, j] = float(f @ v) / (float(f.norm()) * float(v.norm()))
    return out


def _naive_expectation(weights):
    """Σ w · (x, y) over the pixels, normalised, with plain loops."""
    pts = []
    for w in weights:
        total = sum(float(w[i, j]) for i in range(w.shape[0]) for j in range(w.shape[1]))
        x = sum(float(w[i, j]) * j for i in range(w.shape[0]) for j in range(w.shape[1])) / total
        y = sum(float(w[i, j]) * i for i in range(w.shape[0]) for j in range(w.shape[1])) / total
        pts.append([x, y])
    return torch.tensor(pts, dtype=torch.float64)


def _naive(kind: str, cos, temperature, radius=None, sigma=None):
    weights = []
    for c in cos:
        flat = c.flatten()
        k = int(flat.argmax())
        ay, ax = divmod(k, c.shape[1])
        w = torch.zeros_like(c)
        for i in range(c.shape[0]):
            for j in range(c.shape[1]):
                if kind == "window" and (abs(i - ay) > radius or abs(j - ax) > radius):
                    continue
                w[i, j] = math.exp((float(c[i, j]) - float(flat.max())) / temperature)
                if kind == "kernel":
                    w[i, j] *= math.exp(-((i - ay) ** 2 + (j - ax) ** 2) / (2 * sigma ** 2))
        weights.append(w)
    return _naive_expectation(weights)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("readout, kind, extra", [
    (SoftArgmax({"temperature": 0.05}), "soft", {}),
    (WindowSoftArgmax({"temperature": 0.05, "radius": 3}), "window", {"radius": 3}),
    (KernelSoftArgmax({"temperature": 0.05, "sigma": 2.0}), "kernel", {"sigma": 2.0}),
])
def test_soft_readouts_equal_a_naive_dense_computation(readout, kind, extra, seed):
    src, tgt, points = _case(seed)
    d = _Plain()
    sg = FeatureGrid.spanning(LOAD_S, tuple(src.shape[-2:]))
    tg = FeatureGrid.spanning(LOAD_T, tuple(tgt.shape[-2:]))
    prepared = readout.prepare_target(d, tgt, tg, LOAD_T)
    got = readout.transfer(ReadoutInput(d, src, tgt, sg, tg, LOAD_S, LOAD_T, points, prepared)).points
    expected = _naive(kind, _naive_cosines(src, tgt, points), 0.05, **extra)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


def test_a_tiny_temperature_tends_to_the_nn_readout():
    from corrbench.readout import nn_transfer

    src, tgt, points = _case(2)
    d = _Plain()
    sg = FeatureGrid.spanning(LOAD_S, tuple(src.shape[-2:]))
    tg = FeatureGrid.spanning(LOAD_T, tuple(tgt.shape[-2:]))
    soft = WindowSoftArgmax({"temperature": 1e-6, "radius": 2}).transfer(
        ReadoutInput(d, src, tgt, sg, tg, LOAD_S, LOAD_T, points)).points
    hard = nn_transfer(src, tgt, sg, tg, LOAD_S, LOAD_T, points)
    torch.testing.assert_close(soft, hard, rtol=0, atol=1e-6)


def test_settings_are_checked_and_recorded_through_the_cli(tmp_path, synthetic_dataset):
    env = {**os.environ, "CORRBENCH_CACHE": str(tmp_path / "cache"), "TQDM_DISABLE": "1"}
    script = Path(sys.executable).parent / "corrbench"
    bad = subprocess.run([str(script), "run", "-m", "dsift", "--limit", "2", "--readout", "window-soft-argmax",
                          "--set", "readout.radius=-1"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "readout.radius" in bad.stderr and "Traceback" not in bad.stderr
    ok = subprocess.run([str(script), "run", "-q", "-m", "dsift", "--limit", "4", "--readout", "kernel-soft-argmax",
                         "--set", "readout.sigma=3", "--out", "r"], cwd=tmp_path, env=env, capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stderr
    entry = json.loads((tmp_path / "r" / "results.json").read_text())["methods"]["dsift"]
    assert entry["readout"] == "kernel-soft-argmax"
    assert entry["readout_config"] == {"temperature": 0.02, "sigma": 3.0}
