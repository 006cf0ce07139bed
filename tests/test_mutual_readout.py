"""The mutual-nn readout against a naive dense float64 computation written here, and through the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from corrbench.api import Descriptor, FeatureGrid
from corrbench.readout import mutual_nn_transfer, nn_transfer
from corrbench.readouts import MutualNearestNeighbour, NearestNeighbour, ReadoutInput, make_readout

#: two cosines closer than this are a tie (clamped border pixels repeat one descriptor exactly)
TIE = 1e-9


class _Plain(Descriptor):
    name = "plain"
    weight_free = True


def _upsample(fmap, grid, hw):
    """The FeatureGrid's bilinear upsampling, one load pixel at a time: pixel x reads cell position
    (x - offset) / stride, clamped to the map, mixing the two nearest cells per axis."""
    C, h, w = fmap.shape
    H, W = hw
    f = fmap.double()
    out = torch.zeros(C, H, W, dtype=torch.float64)

    def split(pos, n):
        u = min(max(pos, 0.0), n - 1.0)
        i0 = min(int(math.floor(u)), n - 1)
        return i0, min(i0 + 1, n - 1), u - i0

    for y in range(H):
        i0, i1, b = split((y - grid.offset_y) / grid.stride_y, h)
        for x in range(W):
            j0, j1, a = split((x - grid.offset_x) / grid.stride_x, w)
            out[:, y, x] = ((1 - b) * (1 - a) * f[:, i0, j0] + (1 - b) * a * f[:, i0, j1]
                            + b * (1 - a) * f[:, i1, j0] + b * a * f[:, i1, j1])
    return out


def _best(vec, up):
    """Every (x, y) pixel of ``up`` whose cosine with ``vec`` ties the maximum, by a loop over pixels."""
    _, H, W = up.shape
    cos = {}
    for y in range(H):
        for x in range(W):
            v = up[:, y, x]
            cos[(x, y)] = float(vec @ v) / (float(vec.norm()) * float(v.norm()))
    top = max(cos.values())
    return [p for p, c in cos.items() if c >= top - TIE]


def _pixel(p, hw):
    H, W = hw
    x, y = float(p[0]), float(p[1])
    return min(max(int(math.floor(x + 0.5)), 0), W - 1), min(max(int(math.floor(y + 0.5)), 0), H - 1)


def _check_against_naive(src, tgt, sg, tg, s_hw, t_hw, points, radius, points_out, rejected):
    """Compare with the naive cycle: returns how many keypoints had an unambiguous decision."""
    s_up, t_up = _upsample(src, sg, s_hw), _upsample(tgt, tg, t_hw)
    decided = 0
    for n, p in enumerate(points):
        sx, sy = _pixel(p, s_hw)
        forward = _best(s_up[:, sy, sx], t_up)
        px, py = int(points_out[n, 0]), int(points_out[n, 1])
        assert (px, py) in forward, (n, (px, py), forward)
        backward = _best(t_up[:, py, px], s_up)
        inside = {math.hypot(bx - sx, by - sy) <= radius for bx, by in backward}
        if len(inside) == 1:  # every tied backward match agrees on the verdict
            decided += 1
            assert bool(rejected[n]) == (not inside.pop()), n
    return decided


CASES = [
    # source map, target map (C, h, w), source / target load (H, W), grids (non-spanning), target ≈ source
    ((5, 7, 9), (5, 6, 5), (20, 24), (22, 18), FeatureGrid(3.0, 2.5, 1.0, 0.5), FeatureGrid(3.5, 3.0, 2.0, 1.5), False),
    ((5, 7, 9), (5, 7, 9), (20, 24), (20, 24), FeatureGrid(3.0, 2.5, 1.0, 0.5), FeatureGrid(3.0, 2.5, 1.0, 0.5), True),
    ((4, 6, 6), (4, 6, 6), (24, 24), (24, 24), FeatureGrid.patches(4, 8), FeatureGrid.patches(4, 8), True),
]


def _case(seed, shapes):
    (cs, hs, ws), (ct, ht, wt), s_hw, t_hw, sg, tg, similar = shapes
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(cs, hs, ws, generator=g)
    tgt = src + 0.3 * torch.randn(cs, hs, ws, generator=g) if similar else torch.randn(ct, ht, wt, generator=g)
    H, W = s_hw
    pts = torch.rand(12, 2, generator=g).double() * torch.tensor([W + 2.0, H + 2.0], dtype=torch.float64) - 1
    return src, tgt, sg, tg, s_hw, t_hw, pts


@pytest.mark.parametrize("radius", [0.0, 2.0, 5.0])
@pytest.mark.parametrize("k", range(len(CASES)))
def test_mutual_nn_equals_a_naive_dense_cycle(k, radius):
    src, tgt, sg, tg, s_hw, t_hw, pts = _case(k, CASES[k])
    points, margins, back, rejected = mutual_nn_transfer(src, tgt, sg, tg, s_hw, t_hw, pts, radius)
    assert rejected.dtype == torch.bool and rejected.shape == (len(pts),)
    # the forward half is nn's, margins included
    nn_points, nn_margins = nn_transfer(src, tgt, sg, tg, s_hw, t_hw, pts, return_margin=True)
    assert torch.equal(points, nn_points) and torch.equal(margins, nn_margins)
    decided = _check_against_naive(src, tgt, sg, tg, s_hw, t_hw, pts, radius, points, rejected)
    assert decided >= len(pts) - 2


def test_both_verdicts_occur_and_a_huge_radius_keeps_everything():
    verdicts = set()
    for k, shapes in enumerate(CASES):
        src, tgt, sg, tg, s_hw, t_hw, pts = _case(k, shapes)
        verdicts |= set(mutual_nn_transfer(src, tgt, sg, tg, s_hw, t_hw, pts, 2.0)[3].tolist())
        assert not mutual_nn_transfer(src, tgt, sg, tg, s_hw, t_hw, pts, 1e6)[3].any()
    assert verdicts == {True, False}


def test_a_map_matched_with_itself_keeps_every_keypoint_at_radius_zero():
    h = w = 10  # one-hot descriptors at full resolution: every pixel is its own unique nearest neighbour
    fmap = torch.eye(h * w).reshape(h * w, h, w)
    g = FeatureGrid.spanning((h, w), (h, w))
    pts = torch.tensor([[0.0, 0.0], [9.0, 9.0], [3.2, 7.7], [-4.0, 12.0]], dtype=torch.float64)
    points, _, back, rejected = mutual_nn_transfer(fmap, fmap, g, g, (h, w), (h, w), pts, 0.0)
    assert not rejected.any() and torch.equal(back, points)


def test_the_readout_keeps_nn_points_caches_source_norms_by_identity_and_defaults_to_one_stride():
    src, tgt, sg, tg, s_hw, t_hw, pts = _case(0, CASES[0])
    d = _Plain()
    readout = MutualNearestNeighbour()
    assert readout.radius(sg) == 3.0  # one source cell stride (the larger of x and y)
    prepared = readout.prepare_target(d, tgt, tg, t_hw)
    out = readout.transfer(ReadoutInput(d, src, tgt, sg, tg, s_hw, t_hw, pts, prepared))
    nn = NearestNeighbour().transfer(ReadoutInput(d, src, tgt, sg, tg, s_hw, t_hw, pts, prepared))
    assert torch.equal(out.points, nn.points) and torch.equal(out.margins, nn.margins)
    assert torch.equal(out.rejected, mutual_nn_transfer(src, tgt, sg, tg, s_hw, t_hw, pts, 3.0)[3])
    # another source map of the same shape must not reuse the first one's norms
    other = torch.randn(src.shape, generator=torch.Generator().manual_seed(9))
    again = readout.transfer(ReadoutInput(d, other, tgt, sg, tg, s_hw, t_hw, pts, prepared))
    fresh = MutualNearestNeighbour().transfer(ReadoutInput(d, other, tgt, sg, tg, s_hw, t_hw, pts, prepared))
    assert torch.equal(again.rejected, fresh.rejected) and torch.equal(again.points, fresh.points)
    assert MutualNearestNeighbour({"radius": 0.5}).radius(sg) == 0.5


def test_settings_are_typed():
    assert make_readout("mutual-nn", {"radius": "2.5"}).config == {"radius": 2.5}
    with pytest.raises(Exception, match="readout.radius"):
        make_readout("mutual-nn", {"radius": -1})


def _check_cli_rejections(path):
    """Each pair's ``rejected`` flags against a dense float64 cycle on dsift maps computed here: both maps
    upsampled by torch's own resampling, every pixel's cosine forward and backward (ties: any verdict)."""
    import torch.nn.functional as F

    from corrbench.images import load_rgb, to_batch
    from corrbench.plugins import get_host
    from corrbench.readout import upsample_reference

    d = get_host().methods.get("dsift")()
    prep = d.preprocessing()
    maps = {}

    def dense(image):
        if image not in maps:
            batch = to_batch([load_rgb(image)], prep)
            fmap = d.describe(batch)[0]
            hw = tuple(batch.shape[-2:])
            grid = d.feature_grid(hw, tuple(fmap.shape[-2:]))
            up = upsample_reference(fmap, grid, hw)
            maps[image] = (F.normalize(up.reshape(up.shape[0], -1), dim=0), hw, grid, load_rgb(image).size)
        return maps[image]

    def ties(cos):
        return (cos >= cos.max() - TIE).nonzero()[:, 0]

    decided = kept = 0
    for pred in map(json.loads, path.read_text().splitlines()):
        assert len(pred["rejected"]) == len(pred["source_points"])
        s, s_hw, s_grid, (sw, sh) = dense(pred["source"])
        t, t_hw, _, (tw, th) = dense(pred["target"])
        radius = max(s_grid.stride_x, s_grid.stride_y)  # the default: one source cell stride
        for (x, y), (px, py), rejected in zip(pred["source_points"], pred["predicted_points"], pred["rejected"]):
            sx = min(max(round(x * s_hw[1] / sw), 0), s_hw[1] - 1)
            sy = min(max(round(y * s_hw[0] / sh), 0), s_hw[0] - 1)
            tx, ty = round(px * t_hw[1] / tw), round(py * t_hw[0] / th)
            assert ty * t_hw[1] + tx in ties(s[:, sy * s_hw[1] + sx] @ t).tolist()
            back = ties(t[:, ty * t_hw[1] + tx] @ s)
            inside = {math.hypot(int(b) % s_hw[1] - sx, int(b) // s_hw[1] - sy) <= radius for b in back}
            if len(inside) == 1:
                decided += 1
                kept += int(not rejected)
                assert rejected == (not inside.pop())
    assert decided >= 20 and kept > 0


def _run(tmp_path, out, *extra):
    env = {**os.environ, "CORRBENCH_CACHE": str(tmp_path / "cache"), "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "corrbench", "run", "-q", "-m", "dsift", "--limit", "6",
                           "--out", str(tmp_path / out), *extra], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_cli_records_mutual_nn_and_keeps_nn_points(tmp_path, synthetic_dataset):
    mutual = _run(tmp_path, "m", "--readout", "mutual-nn")
    plain = _run(tmp_path, "n", "--readout", "nn")
    assert mutual.returncode == 0 and plain.returncode == 0, mutual.stderr + plain.stderr
    entry = json.loads((tmp_path / "m" / "results.json").read_text())["methods"]["dsift"]
    assert entry["readout"] == "mutual-nn" and entry["readout_config"] == {"radius": None}
    assert entry["cache_key"]["readout"] == {"readout": "mutual-nn", "version": "1", "config": {"radius": None}}

    def predicted(folder):
        lines = (tmp_path / folder / "predictions.jsonl").read_text().splitlines()
        return {p["pair"]: p["predicted_points"] for p in map(json.loads, lines)}

    m = predicted("m")
    assert len(m) == 6 and m == predicted("n")  # the cycle check rejects, it never moves a point
    _check_cli_rejections(tmp_path / "m" / "predictions.jsonl")
    bad = _run(tmp_path, "x", "--readout", "mutual-nn", "--set", "readout.radius=-2")
    assert bad.returncode == 2 and "readout.radius" in bad.stderr and "Traceback" not in bad.stderr


def test_the_readout_declares_that_it_may_reject():
    assert MutualNearestNeighbour.may_reject and not NearestNeighbour.may_reject
