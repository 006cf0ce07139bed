"""Core engine speed: readout, PCK engine, feature cache, and ``corrbench run`` cold vs warm.

Every optimised path is measured beside its naive reference in the same run (the ``ratio``
fixture): the readout against full upsampled maps and one dense similarity
(``nn_transfer_naive``), the PCK engine against a per-keypoint Python loop, a warm run against a
cold one. Each benchmark also checks that the two sides agree, so a fast wrong path cannot pass.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from corrbench.api import FeatureGrid
from corrbench.cache import FeatureCache
from corrbench.metrics import ALPHAS, correct, pck_table
from corrbench.readout import nn_transfer, nn_transfer_naive, target_norms

LOAD = (224, 224)
DEFAULT_METHODS = ["dsift", "colour-patch"]  # the embedded default of `corrbench run`


# ------------------------------------------------------------------------------------------------
# Readout
# ------------------------------------------------------------------------------------------------
def _maps(C: int, h: int, w: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(C, h, w, generator=gen), torch.randn(C, h, w, generator=gen)


READOUT_CASES = {
    # dense SIFT on the 224² load image (stride 2): the default run's biggest map
    "dsift-like C128 110x110": (128, 110, 110, FeatureGrid(2.0, 2.0, 7.5, 7.5)),
    # SD / DHF: 64 × 64 maps upsampled to 224 (DHF's 384 channels)
    "dhf-like C384 64x64": (384, 64, 64, FeatureGrid.spanning(LOAD, (64, 64))),
    # DINO ViT-S/8 at 224: 27 × 27 patches (stride 8 in the paper config), 384 channels
    "dino-like C384 27x27": (384, 27, 27, FeatureGrid.patches(8, 8)),
}


@pytest.mark.benchmark(group="readout")
@pytest.mark.parametrize("case", list(READOUT_CASES))
def test_readout_pair(benchmark, ratio, case):
    """One pair, 10 keypoints, target norms already computed (the runner computes them once per target)."""
    C, h, w, grid = READOUT_CASES[case]
    src, tgt = _maps(C, h, w)
    points = torch.rand(10, 2, generator=torch.Generator().manual_seed(1)) * 223
    norms = target_norms(tgt, grid, LOAD)
    args = (src, tgt, grid, grid, LOAD, LOAD, points)
    fast = benchmark(lambda: nn_transfer(*args, target_norm=norms))
    assert torch.equal(fast, nn_transfer_naive(*args))
    r = ratio(benchmark, lambda: nn_transfer_naive(*args), rounds=3, per=1, unit="pair")
    if r is not None:
        benchmark.extra_info["pairs_per_s"] = 1 / benchmark.stats.stats.min


@pytest.mark.benchmark(group="readout")
@pytest.mark.parametrize("case", list(READOUT_CASES))
def test_readout_target_norms(benchmark, case):
    """Per-target cost paid once per target image (cached by the runner)."""
    C, h, w, grid = READOUT_CASES[case]
    _, tgt = _maps(C, h, w)
    out = benchmark(lambda: target_norms(tgt, grid, LOAD))
    assert out.shape == LOAD


# ------------------------------------------------------------------------------------------------
# PCK engine
# ------------------------------------------------------------------------------------------------
def _keypoints(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pairs = np.repeat(np.arange(n // 10), 10)[:n]
    return pd.DataFrame({
        "pair_id": pairs.astype(str), "category": np.array(["bird", "car", "fish", "robot"])[pairs % 4],
        "viewpoint_variation": pairs % 3, "scale_variation": (pairs // 3) % 3,
        "dist": rng.exponential(20.0, n).round(), "L_bbox": rng.uniform(50, 200, n).round(),
        "L_img": rng.uniform(200, 500, n).round(),
    })


def pck_loop(kp: pd.DataFrame, groups, alphas=ALPHAS) -> dict[tuple, float]:
    """The reference: one pass per keypoint in plain Python, accumulating hits per (group, level, norm, α)."""
    point_hits, point_n = defaultdict(int), defaultdict(int)
    pair_hits, pair_n = defaultdict(int), defaultdict(int)
    records = kp.to_dict("records")
    for row in records:
        for group in ("all", *groups):
            level = "all" if group == "all" else row[group]
            for norm, col in (("bbox", "L_bbox"), ("img", "L_img")):
                for a in alphas:
                    hit = bool(correct(np.array([row["dist"]]), np.array([a * row[col]]))[0])
                    key = (group, level, norm, a)
                    point_hits[key] += hit
                    point_n[key] += 1
                    pair_hits[key + (row["pair_id"],)] += hit
                    pair_n[key + (row["pair_id"],)] += 1
    out = {}
    for key in point_n:
        out[key + ("point",)] = 100.0 * point_hits[key] / point_n[key]
        per_pair = [pair_hits[k] / pair_n[k] for k in pair_n if k[:4] == key]
        out[key + ("image",)] = 100.0 * float(np.mean(per_pair))
    return out


@pytest.mark.benchmark(group="pck")
def test_pck_engine(benchmark, ratio):
    n = 20_000
    groups = ("category", "viewpoint_variation", "scale_variation")
    kp = _keypoints(n)
    table = benchmark(lambda: pck_table(kp, groups=groups))
    # agreement with the loop on a slice (the loop is slow: compare where it is cheap)
    small = kp.iloc[:2_000]
    ref = pck_loop(small, groups)
    got = pck_table(small, groups=groups)
    for r in got.itertuples():
        assert r.value == pytest.approx(ref[(r.group, r.level, r.norm, r.alpha, r.average)], abs=1e-9)
    fast_small = min(_timed(lambda: pck_table(small, groups=groups)) for _ in range(3))
    ratio(benchmark, lambda: pck_loop(small, groups), rounds=1, per=len(small), unit="keypoint",
          fast_s=fast_small, label="test_pck_engine[2k keypoints]")
    if not benchmark.disabled:
        benchmark.extra_info["keypoints_per_s"] = n / benchmark.stats.stats.min
    assert len(table) > 0


def _timed(fn) -> float:
    from conftest import best_time

    return best_time(fn, 1)


# ------------------------------------------------------------------------------------------------
# Feature cache
# ------------------------------------------------------------------------------------------------
CACHE_CASES = {"dsift float32 128x110x110": (128, 110, 110, torch.float32),
               "sd-layer-4 float16 1280x64x64": (1280, 64, 64, torch.float16)}


@pytest.mark.benchmark(group="cache")
@pytest.mark.parametrize("case", list(CACHE_CASES))
def test_cache_write(benchmark, tmp_path, case):
    C, h, w, dtype = CACHE_CASES[case]
    feats = torch.randn(C, h, w).to(dtype)
    cache = FeatureCache(tmp_path, "bench", {"method": "bench", "case": case})
    counter = iter(range(10**9))
    benchmark(lambda: cache.put(f"{next(counter):064x}", feats, {"grid": "1,1,0,0", "load_hw": "224,224"}))
    if not benchmark.disabled:
        benchmark.extra_info["MB_per_s"] = feats.numel() * feats.element_size() / 2**20 / benchmark.stats.stats.min


@pytest.mark.benchmark(group="cache")
@pytest.mark.parametrize("case", list(CACHE_CASES))
def test_cache_read(benchmark, tmp_path, case):
    C, h, w, dtype = CACHE_CASES[case]
    feats = torch.randn(C, h, w).to(dtype)
    cache = FeatureCache(tmp_path, "bench", {"method": "bench", "case": case})
    cache.put("ab" * 32, feats, {"grid": "1,1,0,0", "load_hw": "224,224"})
    got, _ = benchmark(lambda: cache.get("ab" * 32))
    assert torch.equal(got, feats)  # read back bit-exact, checksum verified on every read
    if not benchmark.disabled:
        benchmark.extra_info["MB_per_s"] = feats.numel() * feats.element_size() / 2**20 / benchmark.stats.stats.min


# ------------------------------------------------------------------------------------------------
# End to end: the embedded default, cold against warm feature cache
# ------------------------------------------------------------------------------------------------
def _breakdown(result) -> dict:
    methods = result.results["methods"]
    return {"total_s": result.results["total_seconds"],
            "extract_s": sum(m["cost"]["extract_seconds"] for m in methods.values()),
            "readout_s": sum(m["cost"]["readout_seconds"] for m in methods.values()),
            "images_extracted": sum(m["cost"]["images_extracted"] for m in methods.values()),
            "images_cached": sum(m["cost"]["images_cached"] for m in methods.values())}


@pytest.mark.benchmark(group="run")
def test_run_cold_vs_warm(benchmark, ratio, synthetic_dataset, tmp_path):
    """``run_benchmark`` (what ``corrbench run`` calls) on synthetic/test with dsift and colour-patch.

    Warm: every feature map is read from the cache. Cold: a fresh cache directory each round. The
    dataset is generated beforehand, so neither side includes generating it; interpreter start-up
    and imports (about 5 s of the CLI) are not included either.
    """
    from corrbench.runner import run_benchmark

    warm_cache = tmp_path / "warm"
    kwargs = dict(methods=DEFAULT_METHODS, dataset="synthetic", progress=False)
    first = run_benchmark(cache_dir=warm_cache, **kwargs)  # fills the warm cache (a cold run)
    last = {}

    def warm():
        last["warm"] = run_benchmark(cache_dir=warm_cache, **kwargs)

    def cold():
        folder = Path(tempfile.mkdtemp(dir=tmp_path, prefix="cold-"))
        try:
            last["cold"] = run_benchmark(cache_dir=folder, **kwargs)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    benchmark.pedantic(warm, rounds=2, iterations=1)
    # identical numbers from the cache
    pd.testing.assert_frame_equal(first.summary, last["warm"].summary)
    assert _breakdown(last["warm"])["images_extracted"] == 0
    r = ratio(benchmark, cold, rounds=2, per=1, unit="run", label="test_run_cold_vs_warm (cold/warm)")
    pd.testing.assert_frame_equal(first.summary, last["cold"].summary)
    if r is not None:
        for side in ("warm", "cold"):
            for key, value in _breakdown(last[side]).items():
                benchmark.extra_info[f"{side}_{key}"] = value
        benchmark.extra_info["target_ratio"] = 10.0
