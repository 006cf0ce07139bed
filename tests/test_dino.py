"""DINO / DINOv2 descriptors: grid arithmetic, facets, positional interpolation, binning, readout, weights.

Every model here has random weights (tiny timm ViTs from ``corrbench.testing.vit``, timm's registered
``test_vit``, or real architectures with ``pretrained=False``); nothing is downloaded.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import corrbench
from corrbench.api import FeatureGrid
from corrbench.errors import UsageError, WeightsError
from corrbench.testing.vit import save_state_dict, tiny_vit
from corrbench_dino import models
from corrbench_dino.binning import log_bin, num_bins
from corrbench_dino.descriptor import METHODS, DinoDescriptor
from corrbench_dino.readout import nearest_cell, patch_centre_transfer
from corrbench_dino.vit import ViTFacets, grid_size, interpolate_pos_dino


def _descriptor(model: torch.nn.Module, cls=DinoDescriptor, **config) -> DinoDescriptor:
    """A descriptor wired to an in-memory model (setup() would build it from timm)."""
    d = cls({"weights": "random", **config})
    d.vit = ViTFacets(model, d.config["stride"], d.config["pos_interp"])
    d._ready = True
    return d


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw, patch, stride, expected", [
    ((224, 224), 8, 4, (55, 55)),    # dino-vit-features default: 3,025 tokens
    ((224, 301), 8, 4, (55, 74)),    # short side 224, aspect kept: the extra column of pixels is dropped
    ((224, 224), 16, 8, (27, 27)),
    ((224, 224), 8, 8, (28, 28)),
    ((224, 298), 14, 14, (16, 21)),
])
def test_grid_size_arithmetic(hw, patch, stride, expected):
    assert grid_size(hw, patch, stride) == expected


def test_stride_layer_and_facet_errors_are_usage_errors():
    model = tiny_vit(patch=8)
    with pytest.raises(UsageError, match="divides the patch size 8"):
        ViTFacets(model, stride=3)
    vit = ViTFacets(model, stride=4)
    with pytest.raises(UsageError, match="out of range"):
        vit.block_index(3)
    assert vit.block_index(-1) == 2
    with pytest.raises(UsageError, match="facet"):
        DinoDescriptor({"facet": "attn"})
    with pytest.raises(UsageError, match="predict_mode"):
        DinoDescriptor({"predict_mode": "soft"})
    with pytest.raises(UsageError, match="smaller than one"):
        grid_size((6, 100), 8, 4)
    with pytest.raises(UsageError, match="neither a DINO"):
        models.resolve("no_such_vit")


def test_model_names_resolve_to_dino_tags_not_timm_defaults():
    assert models.resolve("dino_vits8").timm_name == "vit_small_patch8_224.dino"
    # timm's default tag for this architecture is supervised AugReg: the DINO tag must win
    assert models.resolve("vit_base_patch8_224").timm_name == "vit_base_patch8_224.dino"
    assert models.resolve("dinov2_vitb14_reg").timm_name == "vit_base_patch14_reg4_dinov2.lvd142m"
    assert models.resolve("test_vit").timm_name == "test_vit"
    for cls in METHODS.values():  # every registered default resolves
        models.resolve(cls.default_config["model"])


def test_real_vit_s8_architecture_gives_55x55_and_6528_binned():
    d = DinoDescriptor({"weights": "random", "layer": 0})  # block 0 keeps the test fast; shapes do not depend on it
    square = d.describe(torch.rand(1, 3, 224, 224))
    assert square.shape == (1, 384, 55, 55)
    assert d.descriptors(square[0]).shape == (6528, 55, 55)
    assert d.run_info()["descriptor_dim"] == 6528
    wide = d.describe(torch.rand(1, 3, 224, 301))
    assert wide.shape == (1, 384, 55, 74)
    grid = d.feature_grid((224, 301), (55, 74))
    assert (grid.stride_x, grid.offset_x) == (4.0, 3.5)  # patch centre: 4 j + (8 - 1) / 2
    # the preprocessing of the recipe: shorter side to 224 with LANCZOS, ImageNet statistics
    prep = d.preprocessing()
    assert (prep.resize, prep.resample, min(prep.load_hw((500, 375)))) == ("short_side", "lanczos", 224)
    assert DinoDescriptor({"resize_mode": "square"}).preprocessing().load_hw((500, 375)) == (224, 224)


# ----------------------------------------------------------------------------------------------
# Facets and the strided forward, against timm's own forward
# ----------------------------------------------------------------------------------------------
def _block_input(model, images, layer):
    """Tokens entering block ``layer`` in timm's own forward_features (native size, stride = patch)."""
    seen = {}

    def hook(module, args):
        seen["x"] = args[0].clone()  # returning None: a pre-hook's return value would replace the input

    handle = model.blocks[layer].register_forward_pre_hook(hook)
    try:
        model.forward_features(images)
    finally:
        handle.remove()
    return seen["x"]


@pytest.mark.parametrize("vit_kwargs", [
    {},  # DINO layout: class token with a positional embedding
    {"reg_tokens": 4, "no_embed_class": True, "layer_scale": 1e-1},  # DINOv2 reg4 layout
])
@pytest.mark.parametrize("facet", ["query", "key", "value"])
def test_qkv_facets_match_recomputation_from_block_weights(vit_kwargs, facet):
    torch.manual_seed(1)
    model = tiny_vit(patch=8, dim=32, heads=4, img_size=32, **vit_kwargs)
    images = torch.randn(2, 3, 32, 32)
    vit = ViTFacets(model, stride=8)
    ours = vit.facet(images, layer=1, facet=facet)

    x = _block_input(model, images, 1)
    blk = model.blocks[1]
    D, heads = 32, 4
    rows = slice({"query": 0, "key": 1, "value": 2}[facet] * D, ({"query": 0, "key": 1, "value": 2}[facet] + 1) * D)
    proj = F.linear(blk.norm1(x), blk.attn.qkv.weight[rows], blk.attn.qkv.bias[rows])  # B×T×D, head-major
    proj = proj[:, model.num_prefix_tokens:]
    hd = D // heads
    # dino-vit-features interleaves heads: channel c = d·heads + h
    expected = torch.empty_like(proj)
    for h in range(heads):
        for d in range(hd):
            expected[..., d * heads + h] = proj[..., h * hd + d]
    expected = expected.transpose(1, 2).reshape(2, D, 4, 4)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vit_kwargs", [{}, {"reg_tokens": 4, "no_embed_class": True, "layer_scale": 1e-1}])
def test_token_facet_of_last_block_equals_timm_forward_features_before_the_final_norm(vit_kwargs):
    model = tiny_vit(patch=8, dim=32, depth=3, heads=2, img_size=40, **vit_kwargs)
    images = torch.randn(1, 3, 40, 40)
    ours = ViTFacets(model, stride=8).facet(images, layer=-1, facet="token")
    seen = {}

    def hook(module, args):
        seen["x"] = args[0].clone()

    handle = model.norm.register_forward_pre_hook(hook)
    model.forward_features(images)
    handle.remove()
    expected = seen["x"][:, model.num_prefix_tokens:].transpose(1, 2).reshape(1, 32, 5, 5)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_forward_stops_after_the_requested_block():
    model = tiny_vit(depth=3)
    ran = []
    for i, blk in enumerate(model.blocks):
        blk.register_forward_pre_hook(lambda m, a, i=i: ran.append(i))
    ViTFacets(model, stride=4).facet(torch.randn(1, 3, 32, 32), layer=1, facet="key")
    assert ran == [0, 1]


# ----------------------------------------------------------------------------------------------
# Positional-embedding interpolation (DINO's formula)
# ----------------------------------------------------------------------------------------------
def _keys_cubic_1d(values: np.ndarray, n_out: int, scale: float, a: float = -0.75) -> np.ndarray:
    """Cubic convolution along the last axis, written from the textbook definition (clamped borders)."""
    def w(d):
        d = abs(d)
        if d <= 1:
            return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
        if d < 2:
            return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a
        return 0.0

    M = values.shape[-1]
    out = np.zeros(values.shape[:-1] + (n_out,))
    for j in range(n_out):
        src = (j + 0.5) / scale - 0.5  # align_corners=False, scale = output / input size as given
        i0 = math.floor(src)
        for i in range(i0 - 1, i0 + 3):
            out[..., j] += w(src - i) * values[..., min(max(i, 0), M - 1)]
    return out


def test_dino_positional_interpolation_uses_the_n_plus_0_1_scale():
    M, D = 4, 3
    torch.manual_seed(0)
    table = torch.randn(1, M * M, D, dtype=torch.float64)
    nH, nW = 6, 9
    ours = interpolate_pos_dino(table, (nH, nW), (30, 45)).reshape(nH, nW, D).numpy()
    grid = table.reshape(M, M, D).permute(2, 0, 1).numpy()  # D×M×M
    cols = _keys_cubic_1d(grid, nW, (nW + 0.1) / M)  # D×M×nW
    ref = _keys_cubic_1d(cols.transpose(0, 2, 1), nH, (nH + 0.1) / M).transpose(0, 2, 1)  # D×nH×nW
    np.testing.assert_allclose(ours, ref.transpose(1, 2, 0), rtol=1e-6, atol=1e-9)
    # a grid of M×M cells on a square image keeps the table as it is
    assert torch.equal(interpolate_pos_dino(table, (M, M), (32, 32)), table)


def test_timm_positional_interpolation_is_the_alternative_and_differs():
    model = tiny_vit(patch=8, img_size=32)
    images = torch.randn(1, 3, 48, 64)
    dino = ViTFacets(model, stride=4, pos_interp="dino").facet(images, 0, "key")
    timm_ = ViTFacets(model, stride=4, pos_interp="timm").facet(images, 0, "key")
    assert dino.shape == timm_.shape == (1, 32, 11, 15)
    assert not torch.allclose(dino, timm_, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Log-binning
# ----------------------------------------------------------------------------------------------
def _log_bin_loop(x: torch.Tensor, hierarchy: int) -> torch.Tensor:
    """The per-pixel procedure of upstream log-binning (docs/methods.md#dino-and-dinov2), written literally."""
    B, D, h, w = x.shape
    pools = []
    for k in range(hierarchy):
        s = 3 ** k
        pooled = torch.zeros_like(x)
        for y in range(h):
            for xx in range(w):
                ys = [v for v in range(y - s // 2, y + s // 2 + 1) if 0 <= v < h]
                xs = [v for v in range(xx - s // 2, xx + s // 2 + 1) if 0 <= v < w]
                pooled[:, :, y, xx] = x[:, :, ys][:, :, :, xs].mean(dim=(2, 3))
        pools.append(pooled)
    out = torch.zeros(B, D * num_bins(hierarchy), h, w, dtype=x.dtype)
    for y in range(h):
        for xx in range(w):
            part = 0
            for k in range(hierarchy):
                s = 3 ** k
                for i in range(y - s, y + s + 1, s):
                    for j in range(xx - s, xx + s + 1, s):
                        if i == y and j == xx and k != 0:
                            continue
                        ci, cj = min(max(i, 0), h - 1), min(max(j, 0), w - 1)
                        out[:, part * D:(part + 1) * D, y, xx] = pools[k][:, :, ci, cj]
                        part += 1
    return out


@pytest.mark.parametrize("hierarchy, hw", [(1, (4, 5)), (2, (6, 7)), (3, (5, 11))])
def test_log_bin_matches_the_per_pixel_loop(hierarchy, hw):
    torch.manual_seed(hierarchy)
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    torch.testing.assert_close(log_bin(x, hierarchy), _log_bin_loop(x, hierarchy))


def test_log_bin_hand_computed_3x3():
    x = torch.arange(9, dtype=torch.float64).view(1, 1, 3, 3)  # [[0,1,2],[3,4,5],[6,7,8]]
    out = log_bin(x, 2)[0, :, 0, 0]  # top-left cell, 17 bins of one channel
    # level 0: offsets (dy, dx) ∈ {-1,0,1}², clamped: rows/cols -1 → 0
    level0 = [0, 0, 1, 0, 0, 1, 3, 3, 4]
    # level 1: 3×3 means over in-image cells; offsets ±3 clamp to the border cells 0 or 2
    p = [[2.0, 2.5, 3.0], [3.5, 4.0, 4.5], [5.0, 5.5, 6.0]]
    level1 = [p[0][0], p[0][0], p[0][2], p[0][0], p[0][2], p[2][0], p[2][0], p[2][2]]
    assert out.tolist() == level0 + level1


# ----------------------------------------------------------------------------------------------
# Readout and FeatureGrid alignment
# ----------------------------------------------------------------------------------------------
def _pattern_images(size_hw, src_xy, tgt_xy, patch=8):
    """Grey images with the same random patch-sized texture at src_xy (source) and tgt_xy (target)."""
    g = torch.Generator().manual_seed(3)
    texture = torch.rand(3, patch, patch, generator=g)
    src = torch.full((3, *size_hw), 0.5)
    tgt = torch.full((3, *size_hw), 0.5)
    src[:, src_xy[1]:src_xy[1] + patch, src_xy[0]:src_xy[0] + patch] = texture
    tgt[:, tgt_xy[1]:tgt_xy[1] + patch, tgt_xy[0]:tgt_xy[0] + patch] = texture
    return src, tgt


@pytest.mark.parametrize("bin_", [False, True])
def test_keypoint_sized_pattern_is_transferred_to_its_exact_patch_centre(bin_):
    model = tiny_vit(patch=8, dim=32, heads=2)
    with torch.no_grad():
        model.pos_embed.zero_()  # block-0 keys then depend on the patch content only
    d = _descriptor(model, layer=0, facet="key", bin=bin_)
    src_xy, tgt_xy = (24, 32), (56, 40)
    src, tgt = _pattern_images((96, 112), src_xy, tgt_xy)
    maps = d.describe(torch.stack([src, tgt]))
    grid = d.feature_grid((96, 112), tuple(maps.shape[-2:]))
    # keypoint = centre of the textured patch, in pixel-index coordinates
    kp = torch.tensor([[src_xy[0] + 3.5, src_xy[1] + 3.5]])
    pred = _transfer(d, maps[0], maps[1], grid, (96, 112), (96, 112), kp)
    assert pred.tolist() == [[tgt_xy[0] + 3.5, tgt_xy[1] + 3.5]]


def test_nearest_cell_and_centre_round_trip():
    grid = FeatureGrid.patches(4, 8)
    iy, ix = torch.arange(55).repeat_interleave(2), torch.arange(55).repeat(2)
    centres = torch.stack([grid.offset_x + ix * 4.0, grid.offset_y + iy * 4.0], 1)
    back_y, back_x = nearest_cell(centres, grid, (55, 55))
    assert torch.equal(back_y, iy) and torch.equal(back_x, ix)
    # points up to half a stride away still map to the same cell; far outside clips to the border
    jitter = centres + torch.tensor([1.9, -1.9])
    assert torch.equal(nearest_cell(jitter, grid, (55, 55))[1], ix)
    assert nearest_cell(torch.tensor([[-50.0, 500.0]]), grid, (55, 55)) == (torch.tensor([54]), torch.tensor([0]))


def test_patch_centre_transfer_matches_brute_force_cosine():
    torch.manual_seed(0)
    src, tgt = torch.randn(16, 5, 6), torch.randn(16, 7, 4)
    grid = FeatureGrid.patches(4, 8)
    pts = torch.tensor([[3.5, 3.5], [10.0, 12.2], [23.0, 19.0]])
    pred = patch_centre_transfer(src, tgt, grid, grid, pts)
    for p, q in zip(pts, pred):
        iy, ix = int(round((p[1].item() - 3.5) / 4)), int(round((p[0].item() - 3.5) / 4))
        cos = F.cosine_similarity(src[:, iy, ix][:, None, None], tgt, dim=0)
        by, bx = divmod(int(cos.argmax()), 4)
        assert q.tolist() == [3.5 + 4 * bx, 3.5 + 4 * by]


@pytest.mark.parametrize("hierarchy", [1, 2, 3])
def test_factorised_binned_readout_equals_the_materialised_one(hierarchy):
    from corrbench_dino.readout import binned_patch_centre_transfer

    torch.manual_seed(hierarchy)
    src, tgt = torch.randn(24, 9, 11), torch.randn(24, 13, 8)
    grid = FeatureGrid.patches(4, 8)
    pts = torch.rand(30, 2) * torch.tensor([11 * 4.0, 9 * 4.0])
    materialised = patch_centre_transfer(log_bin(src[None], hierarchy)[0], log_bin(tgt[None], hierarchy)[0],
                                         grid, grid, pts)
    assert torch.equal(binned_patch_centre_transfer(src, tgt, grid, grid, pts, hierarchy), materialised)


def _transfer(d, source_map, target_map, grid, s_hw, t_hw, points):
    """The method's default readout, as the runner calls it."""
    from corrbench.readouts import ReadoutInput, make_readout

    readout = make_readout(d.default_readout)
    prepared = readout.prepare_target(d, target_map, grid, t_hw)
    return readout.transfer(ReadoutInput(d, source_map, target_map, grid, grid, s_hw, t_hw, points, prepared)).points


def test_upsample_nn_mode_hands_binned_maps_to_the_core_readout():
    from corrbench.readout import nn_transfer

    model = tiny_vit(patch=8)
    d = _descriptor(model, layer=1, predict_mode="upsample_nn")
    maps = d.describe(torch.rand(2, 3, 48, 56))
    grid = d.feature_grid((48, 56), tuple(maps.shape[-2:]))
    pts = torch.tensor([[10.0, 20.0], [40.0, 5.0]])
    ours = _transfer(d, maps[0], maps[1], grid, (48, 56), (48, 56), pts)
    assert d.default_readout == "nn"
    binned = log_bin(maps, 2)
    expected = nn_transfer(binned[0], binned[1], grid, grid, (48, 56), (48, 56), pts)
    assert torch.equal(ours, expected)


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------
def _timm_test_vit():
    import timm

    torch.manual_seed(5)
    return timm.create_model("test_vit", pretrained=False, num_classes=0).eval()


@pytest.mark.parametrize("layout", ["plain", "teacher", "legacy"])
def test_local_checkpoint_loads_strictly_and_reproduces_the_model(tmp_path, layout):
    src = _timm_test_vit()
    path = tmp_path / "ckpt.pth"
    if layout == "teacher":  # a DINO full training checkpoint: teacher backbone plus projection head
        save_state_dict(src, path, wrap="teacher", prefix="backbone.", extra={"head.mlp.0.weight": torch.zeros(2, 2)})
    else:
        save_state_dict(src, path, legacy=layout == "legacy")
    d = DinoDescriptor({"model": "test_vit", "weights": str(path), "layer": 2, "load_size": 64})
    images = torch.rand(1, 3, 64, 64)
    ours = d.describe(images)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    expected = ViTFacets(src, 4).facet((images - mean) / std, 2, "key")
    torch.testing.assert_close(ours, expected)
    assert d.weights_identity().startswith("file:") and len(d.weights_identity()) == 5 + 64


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    sd = _timm_test_vit().state_dict()
    del sd["blocks.0.attn.qkv.bias"]
    sd["pos_embed"] = torch.zeros(1, 5, 64)
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    d = DinoDescriptor({"model": "test_vit", "weights": str(tmp_path / "bad.pth")})
    with pytest.raises(WeightsError) as err:
        d.ensure_ready()
    msg = str(err.value)
    assert "bad.pth" in msg and "blocks.0.attn.qkv.bias" in msg and "extra.weight" in msg
    assert "pos_embed (1, 5, 64)" in msg
    with pytest.raises(WeightsError, match="no such file"):
        DinoDescriptor({"weights": str(tmp_path / "missing.pth")}).ensure_ready()


def test_pretrained_weights_offline_are_one_clear_error(tmp_path):
    code = textwrap.dedent("""
        from corrbench.errors import WeightsError
        from corrbench_dino.descriptor import DinoDescriptor
        try:
            DinoDescriptor({}).ensure_ready()
        except WeightsError as exc:
            print("WEIGHTS-ERROR:", exc)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "t")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "WEIGHTS-ERROR:" in out.stdout, out.stderr[-2000:]
    assert "vit_small_patch8_224.dino" in out.stdout and "dino_deitsmall8_pretrain.pth" in out.stdout
    assert "--set dino.weights=PATH" in out.stdout


# ----------------------------------------------------------------------------------------------
# Plugin registration and a run through the core runner
# ----------------------------------------------------------------------------------------------
def test_plugin_registers_every_method_lazily():
    import corrbench_dino
    from corrbench.plugins import PluginHost

    host = PluginHost()
    host.register_plugin(corrbench_dino, "dino")
    assert set(host.methods.names()) == set(METHODS)
    entry = host.methods.entry("dinov2-b")
    assert entry.lazy and entry.extras == ("dino",)
    assert entry.load().default_config["model"] == "dinov2_vitb14"


class _PatternPairs(corrbench.Dataset):
    """Two pairs of generated images where a textured square moves; keypoints at its corners."""

    name = "pattern-pairs"
    root_dirname = "pattern-pairs"

    def prepare(self):
        from PIL import Image

        self.root.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        texture = (rng.random((24, 24, 3)) * 255).astype(np.uint8)
        self._pairs = []
        layouts = [((20, 16), (60, 30), (120, 90)), ((50, 40), (10, 12), (96, 96))]
        for i, ((sx, sy), (tx, ty), size) in enumerate(layouts):
            paths = []
            for side, (x, y) in (("s", (sx, sy)), ("t", (tx, ty))):
                img = np.full((size[1], size[0], 3), 128, np.uint8)
                img[y:y + 24, x:x + 24] = texture
                paths.append(self.root / f"{i}{side}.png")
                Image.fromarray(img).save(paths[-1])
            corners = np.array([[0, 0], [23, 0], [0, 23], [12, 12]], float)
            self._pairs.append(corrbench.Pair(f"p{i}", paths[0], paths[1], corners + (sx, sy), corners + (tx, ty),
                                              (sx, sy, sx + 24, sy + 24), (tx, ty, tx + 24, ty + 24), "square"))

    def iter_pairs(self):
        yield from self._pairs


@pytest.fixture
def pattern_host():
    import corrbench_dino
    from corrbench.plugins import PluginHost, reset_host

    class _Data:
        @corrbench.hookimpl
        def register_datasets(self, register):
            register(_PatternPairs)

    host = PluginHost()
    host.register_plugin(corrbench_dino, "dino")
    host.register_plugin(_Data(), "pattern-data")
    reset_host(host)
    yield host
    reset_host(None)


def test_runner_end_to_end_with_random_weights(pattern_host, tmp_path):
    from corrbench.runner import run_benchmark

    res = run_benchmark(
        ["dino", "dinov2"], "pattern-pairs", data_root=tmp_path / "data", out_dir=tmp_path / "out",
        cache_dir=tmp_path / "cache", progress=False,
        overrides={"dino.model": "test_vit", "dino.weights": "random", "dino.load_size": 64, "dino.layer": 4,
                   "dinov2.model": "test_vit", "dinov2.weights": "random", "dinov2.stride": 8, "dinov2.load_size": 64})
    for name, d in (("dino", 64 * 17), ("dinov2", 64)):
        info = res.results["methods"][name]
        assert info["n_keypoints"] == 8 and info["readout"] == "patch-centre"
        assert info["info"]["descriptor_dim"] == d
        assert 0.0 <= info["metrics"]["pck@0.10_bbox"] <= 1.0
    assert (tmp_path / "out" / "results.json").exists()
    # patch_center readout: every prediction is a patch centre of the target load frame
    # (x = 4 j + 7.5 for test_vit's 16-pixel patches at stride 4); pair p1 is 96×96, loaded at 64×64
    import json

    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    pred = np.array(next(r for r in rows if r["method"] == "dino" and r["pair"] == "p1")["predicted_points"])
    cells = (pred * 64 / 96 - 7.5) / 4
    np.testing.assert_allclose(cells, np.round(cells), atol=1e-9)
