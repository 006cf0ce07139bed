"""Flip test-time augmentation against a naive reference: PIL mirrors, index loops, float64 averages."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from corrbench.api import Descriptor, FeatureGrid, SharedPass
from corrbench.plugins import get_host
from corrbench.tta import describe_flip_averaged, flip_symmetric, mirror_back

LOAD_HW = (36, 40)  # an even width: colour-patch's cells (centred on pixels 0, 2, …) are then not centred


def _images(n: int) -> list[Image.Image]:
    """Smooth random RGB images at the load size, not mirror-symmetric."""
    rng = np.random.default_rng(5)
    out = []
    for _ in range(n):
        coarse = rng.random((3, 6, 7))
        up = F.interpolate(torch.from_numpy(coarse)[None], size=LOAD_HW, mode="bilinear", align_corners=False)[0]
        ramp = torch.linspace(0, 0.3, LOAD_HW[1], dtype=torch.float64)  # a left-right gradient
        arr = ((0.7 * up + ramp).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        out.append(Image.fromarray(np.ascontiguousarray(arr), "RGB"))
    return out


def _tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0).contiguous()


def _mirror_naive(fmap: torch.Tensor, grid: FeatureGrid, W: int) -> torch.Tensor:
    """The mirrored image's map on the original cells, column by column: cell j sits at x = o + j·s,
    its mirror point is W - 1 - x, read from the mirrored map at cell position (W - 1 - x - o) / s by
    linear interpolation between its two neighbouring columns (clamped to the map)."""
    C, h, w = fmap.shape
    f = fmap.double()
    out = torch.zeros(C, h, w, dtype=torch.float64)
    for j in range(w):
        x = grid.offset_x + j * grid.stride_x
        u = min(max((W - 1 - x - grid.offset_x) / grid.stride_x, 0.0), w - 1.0)
        j0 = min(int(math.floor(u)), w - 1)
        j1 = min(j0 + 1, w - 1)
        a = u - j0
        for i in range(h):
            out[:, i, j] = (1 - a) * f[:, i, j0] + a * f[:, i, j1]
    return out


def _reference(d: Descriptor, images: list[Image.Image]) -> torch.Tensor:
    maps = []
    for im in images:
        plain = d.describe(_tensor(im)[None])[0]
        mirrored = d.describe(_tensor(ImageOps.mirror(im))[None])[0]
        grid = d.feature_grid(LOAD_HW, tuple(plain.shape[-2:]))
        maps.append((plain.double() + _mirror_naive(mirrored, grid, LOAD_HW[1])) / 2)
    return torch.stack(maps)


@pytest.mark.parametrize("method, symmetric", [("dsift", True), ("colour-patch", False)])
def test_flip_averaged_features_equal_a_naive_reference(method, symmetric):
    d = get_host().methods.get(method)({"stride": 2} if method == "colour-patch" else None)
    images = _images(2)
    batch = torch.stack([_tensor(im) for im in images])
    got = describe_flip_averaged([d], batch)
    assert len(got) == 1 and got[0].dtype == torch.float32
    feat_hw = tuple(got[0].shape[-2:])
    assert flip_symmetric(d.feature_grid(LOAD_HW, feat_hw), LOAD_HW[1], feat_hw[1]) is symmetric
    expected = _reference(d, images)
    torch.testing.assert_close(got[0].double(), expected, rtol=1e-5, atol=1e-6)
    # the augmentation changes the features (neither descriptor is mirror-invariant on these images)
    assert not torch.allclose(got[0], d.describe(batch), atol=1e-3)


@pytest.mark.parametrize("load_w, feat_w", [(224, 64), (224, 28), (40, 7), (33, 5), (1, 1)])
def test_cells_that_tile_the_frame_are_mirror_symmetric(load_w, feat_w):
    assert flip_symmetric(FeatureGrid.spanning((8, load_w), (2, feat_w)), load_w, feat_w)


def test_sliding_windows_are_symmetric_when_they_cover_the_width():
    assert flip_symmetric(FeatureGrid.patches(8, 8), 224, 28)  # a ViT-S/8 at 224
    assert flip_symmetric(FeatureGrid.patches(4, 8), 224, 55)  # stride 4, patch 8: 54·4 + 8 = 224
    assert not flip_symmetric(FeatureGrid.patches(8, 8), 225, 28)  # one pixel column left over
    # colour-patch at stride 2: cells on pixels 0, 2, …, centred only for an odd width
    assert flip_symmetric(FeatureGrid(2.0, 2.0, 0.0, 0.0), 223, 112)
    assert not flip_symmetric(FeatureGrid(2.0, 2.0, 0.0, 0.0), 224, 112)


def test_mirror_back_is_an_index_reversal_on_a_symmetric_grid_and_interpolates_otherwise():
    m = torch.randn(2, 3, 4, 7, generator=torch.Generator().manual_seed(0))
    sym = FeatureGrid.spanning((4, 21), (4, 7))
    assert torch.equal(mirror_back(m, sym, 21), m.flip(-1))
    skew = FeatureGrid(3.0, 3.0, 0.0, 0.0)  # cells at 0, 3, …, 18 of a 21-pixel width: mirrors at 20, 17, …, 2
    got = mirror_back(m, skew, 21)
    for b in range(2):
        torch.testing.assert_close(got[b].double(), _mirror_naive(m[b], skew, 21), rtol=0, atol=1e-6)
    # cell 0's mirror point (pixel 20) lies beyond the last cell (pixel 18): the border cell is repeated
    assert torch.equal(got[..., 0], m[..., 6])


class _Scaled(Descriptor):
    """Grey level times a factor, 2×2 average-pooled: two of them share one pass."""

    name = "scaled"
    weight_free = True

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def extract(self, images):
        return F.avg_pool2d(images.mean(1, keepdim=True) * self.factor, 2)

    def shared_pass(self):
        return _Pass()


@dataclass(frozen=True)
class _Pass(SharedPass):
    def run(self, descriptors, images):
        pooled = F.avg_pool2d(images.mean(1, keepdim=True), 2)
        return [pooled * d.factor for d in descriptors]


def test_several_descriptors_of_one_shared_pass_are_augmented_together():
    images = _images(2)
    batch = torch.stack([_tensor(im) for im in images])
    a, b = _Scaled(1.0), _Scaled(3.0)
    together = describe_flip_averaged([a, b], batch)
    assert len(together) == 2
    for d, got in zip((a, b), together):
        torch.testing.assert_close(got.double(), _reference(d, images), rtol=1e-5, atol=1e-6)
    assert describe_flip_averaged([], batch) == []


class _Prompted(Descriptor):
    """Features that depend on the image's category (as a text-prompted method's do)."""

    name = "prompted"
    weight_free = True
    uses_category = True

    def extract(self, images, categories):
        scale = torch.tensor([len(c or "") + 1.0 for c in categories]).view(-1, 1, 1, 1)
        return F.avg_pool2d(images.mean(1, keepdim=True), 2) * scale


def test_categories_reach_both_the_batch_and_its_mirror():
    images = _images(2)
    batch = torch.stack([_tensor(im) for im in images])
    d = _Prompted()
    got = describe_flip_averaged([d], batch, categories=["cat", "aeroplane"])[0]
    plain = describe_flip_averaged([d], batch)[0]  # no categories: the method sees None
    torch.testing.assert_close(got[0], 4 * plain[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[1], 10 * plain[1], rtol=1e-6, atol=1e-6)


def test_the_cli_reads_out_flip_averaged_features(tmp_path, synthetic_dataset):
    """``corrbench run --flip`` in a subprocess; each prediction must be a cosine argmax over the upsampled
    naive flip-averaged map computed here (PIL mirror, column loops, float64), and not all of them one of the
    plain map's."""
    from corrbench.images import load_rgb, to_input
    from corrbench.readout import upsample_reference

    env = {**os.environ, "CORRBENCH_CACHE": str(tmp_path / "cache"), "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "corrbench", "run", "-q", "-m", "dsift", "--limit", "3", "--flip",
                           "--out", str(tmp_path / "f")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "f" / "results.json").read_text())["methods"]["dsift"]["flip"] is True
    d = get_host().methods.get("dsift")()
    prep = d.preprocessing()
    maps = {}

    def dense(image):
        if image not in maps:
            arr = to_input(load_rgb(image), prep)  # the load-size image, as 8-bit values
            im = Image.fromarray(np.ascontiguousarray((arr * 255).round().astype(np.uint8).transpose(1, 2, 0)), "RGB")
            plain = d.describe(_tensor(im)[None])[0].double()
            mirrored = d.describe(_tensor(ImageOps.mirror(im))[None])[0]
            hw = tuple(arr.shape[-2:])
            grid = d.feature_grid(hw, tuple(plain.shape[-2:]))
            averaged = (plain + _mirror_naive(mirrored, grid, hw[1])) / 2
            maps[image] = [F.normalize(upsample_reference(m, grid, hw).reshape(m.shape[0], -1), dim=0)
                           for m in (averaged, plain)] + [hw, load_rgb(image).size]
        return maps[image]

    def in_ties(cos, k):
        return bool(cos[k] >= cos.max() - 1e-5)  # the run's features are float32, the reference float64

    checked = moved = 0
    for pred in map(json.loads, (tmp_path / "f" / "predictions.jsonl").read_text().splitlines()):
        s_avg, s_plain, s_hw, (sw, sh) = dense(pred["source"])
        t_avg, t_plain, t_hw, (tw, th) = dense(pred["target"])
        for (x, y), (px, py) in zip(pred["source_points"], pred["predicted_points"]):
            sx = min(max(round(x * s_hw[1] / sw), 0), s_hw[1] - 1)
            sy = min(max(round(y * s_hw[0] / sh), 0), s_hw[0] - 1)
            k = round(py * t_hw[0] / th) * t_hw[1] + round(px * t_hw[1] / tw)
            i = sy * s_hw[1] + sx
            assert in_ties(s_avg[:, i] @ t_avg, k)
            moved += not in_ties(s_plain[:, i] @ t_plain, k)
            checked += 1
    assert checked >= 10 and moved > 0
