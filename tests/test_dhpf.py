"""HPF / DHPF: candidate layers, learner checkpoint layout, correlation, Hough matching, transfer, gates.

Backbones and learners have random weights (torchvision ``weights=None``); small load sizes keep
ResNet forwards fast. Nothing is downloaded.
"""

from __future__ import annotations

import math
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from corrbench.api import FeatureGrid
from corrbench.errors import DataError, UsageError, WeightsError
from corrbench_dhpf import backbone as bb
from corrbench_dhpf import learner as ln
from corrbench_dhpf import rhm
from corrbench_dhpf.descriptor import DHPFDescriptor, HPFDescriptor
from corrbench_dhpf.packing import pack, unpack


@pytest.fixture(scope="module")
def resnet50():
    return bb.build_resnet("resnet50", "random")


@pytest.fixture(scope="module")
def learner50():
    return ln.build(bb.candidate_channels("resnet50"), "random")


# ----------------------------------------------------------------------------------------------
# Backbone taps
# ----------------------------------------------------------------------------------------------
def test_resnet101_candidate_layers_at_240():
    import torchvision

    with torch.device("meta"):  # shapes only: no weight initialisation, no arithmetic
        net = torchvision.models.resnet101()
        maps = bb.candidate_maps(net, torch.empty(1, 3, 240, 240), list(range(34)))
    shapes = [tuple(maps[i].shape[1:]) for i in range(34)]
    expected = [(64, 60, 60)] + [(256, 60, 60)] * 3 + [(512, 30, 30)] * 4 + [(1024, 15, 15)] * 23 + [(2048, 8, 8)] * 3
    assert shapes == expected
    assert bb.layer_shapes("resnet101", (240, 240)) == expected  # the cache layout's arithmetic
    assert sum(c // 8 for c in bb.candidate_channels("resnet101")) == 4072
    assert sum(c // 8 for c in bb.candidate_channels("resnet50")) == 1896
    with torch.device("meta"):  # odd, non-square sizes round up at every stride-2 step
        maps = bb.candidate_maps(torchvision.models.resnet50(), torch.empty(1, 3, 225, 300), list(range(17)))
    assert [tuple(maps[i].shape[1:]) for i in range(17)] == bb.layer_shapes("resnet50", (225, 300))


def test_taps_are_the_pre_relu_block_sums_of_torchvision_forward(resnet50):
    images = torch.randn(1, 3, 64, 80)
    captured: dict[str, torch.Tensor] = {}

    def keep(key, which=2):
        def hook(*args):  # forward hooks get (module, inputs, output), pre-hooks (module, inputs)
            value = args[which] if which == 2 else args[1][0]
            captured.setdefault(key, value.clone())  # returns None: a hook's return value would replace the output
        return hook

    handles = [resnet50.maxpool.register_forward_hook(keep("stem"))]
    k = 0
    for stage in (resnet50.layer1, resnet50.layer2, resnet50.layer3, resnet50.layer4):
        for block in stage:
            k += 1
            # bn3's output is cloned before torchvision adds the shortcut to it in place
            handles.append(block.bn3.register_forward_hook(keep(f"bn3-{k}")))
            handles.append(block.register_forward_pre_hook(keep(f"in-{k}", which=1)))
            handles.append(block.register_forward_hook(keep(f"out-{k}")))
            if block.downsample is not None:
                handles.append(block.downsample.register_forward_hook(keep(f"ds-{k}")))
    resnet50(images)
    for h in handles:
        h.remove()
    ours = bb.candidate_maps(resnet50, images, list(range(17)))
    torch.testing.assert_close(ours[0], captured["stem"])
    for k in range(1, 17):
        shortcut = captured.get(f"ds-{k}", captured[f"in-{k}"])
        torch.testing.assert_close(ours[k], captured[f"bn3-{k}"] + shortcut)
        torch.testing.assert_close(F.relu(ours[k]), captured[f"out-{k}"])
        assert (ours[k] < 0).any()  # really before the ReLU
    # the forward stops after the deepest requested id
    assert sorted(bb.candidate_maps(resnet50, images, [2, 5])) == [2, 5]


def test_pretrained_backbone_offline_is_one_weights_error(monkeypatch):
    import torchvision.models._api as api

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match="resnet50-0676ba61.pth") as err:
        bb.build_resnet("resnet50", "pretrained")
    assert "ImageNet-V1" in str(err.value)


# ----------------------------------------------------------------------------------------------
# Learner and its checkpoint
# ----------------------------------------------------------------------------------------------
def test_learner_has_the_released_state_dict_layout():
    learner = ln.Learner(bb.candidate_channels("resnet101"))
    sd = learner.state_dict()
    assert len(sd) == 442
    assert sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked")) == 5_808_928
    assert sd["reduction_ffns.33.0.weight"].shape == (256, 2048, 1, 1)
    assert sd["gumbel_ffns.8.0.weight"].shape == (32, 1024, 1, 1)
    assert sd["gumbel_ffns.8.3.weight"].shape == (2, 32, 1, 1)
    assert {k.split(".", 2)[2] for k in sd if k.startswith("reduction_ffns.0.")} == {
        "0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert len(ln.Learner(bb.candidate_channels("resnet50")).state_dict()) == 221


def _trained_like_learner(backbone: str = "resnet50", seed: int = 7) -> ln.Learner:
    torch.manual_seed(seed)
    learner = ln.Learner(bb.candidate_channels(backbone))
    with torch.no_grad():
        for name, buf in learner.named_buffers():
            if "running" in name:
                buf.uniform_(0.5, 1.5)
    return learner


@pytest.mark.parametrize("legacy", [True, False])
def test_learner_checkpoint_round_trip(tmp_path, legacy):
    src = _trained_like_learner()
    path = tmp_path / "best_model.pt"
    torch.save(src.state_dict(), path, _use_new_zipfile_serialization=not legacy)  # PyTorch 1.0 wrote legacy files
    loaded = ln.build(bb.candidate_channels("resnet50"), str(path))
    for (k, a), (_, b) in zip(src.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert not loaded.training


def test_learner_checkpoint_mismatches_are_named(tmp_path):
    sd = _trained_like_learner().state_dict()
    del sd["gumbel_ffns.3.3.weight"]
    sd["reduction_ffns.2.0.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(WeightsError) as err:
        ln.build(bb.candidate_channels("resnet50"), str(tmp_path / "bad.pt"))
    msg = str(err.value)
    assert "bad.pt" in msg and "gumbel_ffns.3.3.weight" in msg and "reduction_ffns.2.0.weight (1, 1, 1, 1)" in msg
    # a ResNet-50 learner given to the ResNet-101 model says so
    torch.save(_trained_like_learner().state_dict(), tmp_path / "res50.pt")
    with pytest.raises(WeightsError, match="holds 17 layers; dhpf.backbone=resnet101 needs 34"):
        ln.build(bb.candidate_channels("resnet101"), str(tmp_path / "res50.pt"))
    with pytest.raises(WeightsError, match="drive.google.com"):
        DHPFDescriptor({}).ensure_ready()  # no checkpoint given: says where to get it
    assert DHPFDescriptor({}).weights_identity().startswith("learner=missing")


# ----------------------------------------------------------------------------------------------
# Correlation, Hough matching and transfer
# ----------------------------------------------------------------------------------------------
def test_appearance_equals_dhpf_per_layer_sum_form():
    torch.manual_seed(0)
    layers_s = [torch.rand(50, c) for c in (8, 32, 64)]  # CFT outputs are non-negative
    layers_t = [torch.rand(40, c) for c in (8, 32, 64)]
    ours = rhm.appearance(torch.cat(layers_s, 1), torch.cat(layers_t, 1), exponent=2, eps=1e-3)
    dots = sum(s @ t.T for s, t in zip(layers_s, layers_t))
    n_s = sum((s * s).sum(1) for s in layers_s).sqrt()
    n_t = sum((t * t).sum(1) for t in layers_t).sqrt()
    expected = F.relu(dots / (n_s[:, None] * n_t[None, :] + 1e-3)) ** 2
    torch.testing.assert_close(ours, expected)
    cos = F.cosine_similarity(torch.cat(layers_s, 1)[:, None], torch.cat(layers_t, 1)[None], dim=-1)
    # the epsilon's whole effect: cos² (1 - (n / (n + eps))²) ≤ 2 eps / n with n = ‖s‖‖t‖
    assert ((ours - cos.clamp_min(0) ** 2).abs() <= 2e-3 / (n_s[:, None] * n_t[None, :]) + 1e-6).all()


def test_hough_space_and_hyperpixel_geometry_at_240():
    nx, ny, side = rhm.hough_space((240, 240), (240, 240), 8192)
    assert (nx, ny) == (91, 91) and math.isclose(side, 480 / math.sqrt(8192))
    centres = rhm.cell_centres((60, 60), 4)
    assert centres[0].tolist() == [0, 0] and centres[1].tolist() == [4, 0] and centres[60].tolist() == [0, 4]
    assert rhm.boxes(centres[61:62], 11).tolist() == [[-1.0, -1.0, 9.0, 9.0]]  # [4x-5, 4y-5, 4x+5, 4y+5]
    g = rhm.gaussian2d(7)
    sigma = 7 / 2 / 2.354
    assert math.isclose(float(g.sum()), 1.0) and math.isclose(float(g[3, 4] / g[3, 3]), math.exp(-1 / (2 * sigma ** 2)))


def test_geometric_score_matches_a_hand_loop():
    torch.manual_seed(1)
    src_c = torch.tensor([[0.0, 0.0], [8.0, 0.0], [4.0, 12.0]], dtype=torch.float64)
    tgt_c = torch.tensor([[4.0, 4.0], [12.0, 4.0]], dtype=torch.float64)
    votes = torch.rand(3, 2, dtype=torch.float64)
    src_wh, tgt_wh, ncells = (16, 16), (16, 20), 64
    ids, nx, ny = rhm.bin_ids(src_c, tgt_c, src_wh, tgt_wh, ncells)
    ours = rhm.geometric_score(votes, ids, nx, ny, 7)

    side = math.sqrt(32 * 36 / ncells)
    width_bins, height_bins = int(32 / side) + 1, int(36 / side) + 1
    space = np.zeros((height_bins, width_bins))
    where = {}
    for i, (sx, sy) in enumerate(src_c.tolist()):
        for j, (tx, ty) in enumerate(tgt_c.tolist()):
            bx, by = int((16 - sx + tx) // side), int((16 - sy + ty) // side)
            where[i, j] = (by, bx)
            space[by, bx] += votes[i, j].item()
    sigma = 7 / 2 / 2.354
    kern = np.array([[math.exp(-(dx * dx + dy * dy) / (2 * sigma ** 2)) for dx in range(-3, 4)] for dy in range(-3, 4)])
    kern /= kern.sum()
    smooth = np.zeros_like(space)
    for y in range(height_bins):
        for x in range(width_bins):
            for dy in range(-3, 4):
                for dx in range(-3, 4):
                    if 0 <= y + dy < height_bins and 0 <= x + dx < width_bins:
                        smooth[y, x] += kern[dy + 3, dx + 3] * space[y + dy, x + dx]
    expected = torch.tensor([[smooth[where[i, j]] for j in range(2)] for i in range(3)], dtype=torch.float64)
    torch.testing.assert_close(ours, expected)


def test_mutual_nn_and_keypoint_transfer_hand_case():
    corr = torch.tensor([[0.9, 0.3], [0.6, 0.2], [0.0, 0.0]])
    m = rhm.mutual_nn(corr)
    # C ⊙ (C / row max) ⊙ (C / col max); the all-zero row stays zero (no NaN)
    expected = torch.tensor([[0.9 * 1 * 1, 0.3 * (0.3 / 0.9) * 1],
                             [0.6 * 1 * (0.6 / 0.9), 0.2 * (0.2 / 0.6) * (0.2 / 0.3)],
                             [0.0, 0.0]])
    torch.testing.assert_close(m, expected)

    src_c = torch.tensor([[0.0, 0.0], [4.0, 0.0], [8.0, 0.0]], dtype=torch.float64)
    tgt_c = torch.tensor([[10.0, 2.0], [20.0, 2.0], [30.0, 2.0]], dtype=torch.float64)
    corr = torch.tensor([[0.1, 0.9, 0.0], [0.0, 0.0, 1.0], [0.8, 0.1, 0.1]])  # j* = 1, 2, 0
    pts = torch.tensor([[4.0, 1.0], [9.0, 0.0], [50.0, 50.0]])
    pred = rhm.transfer_keypoints(corr, src_c, tgt_c, rf=11, points=pts)
    # (4,1): boxes of all three cells contain it (|dx| ≤ 5): mean of (20,2)-(0,0), (30,2)-(4,0), (10,2)-(8,0)
    d = ((20 + 26 + 2) / 3, 2.0)
    # (9,0): cells at x=4 and x=8; (50,50) lies in no box: its nearest cell (x=8) alone
    expected = torch.tensor([[4 + d[0], 1 + d[1]], [9 + (26 + 2) / 2, 2.0], [52.0, 52.0]], dtype=torch.float64)
    torch.testing.assert_close(pred, expected)


def test_rhm_prefers_the_translation_most_matches_agree_on():
    # 1-D row of 8 source and 8 target cells; appearance favours a shift of +2 cells for every cell,
    # except cell 3 whose best appearance match is a distractor (cell 7) slightly ahead of its +2 match
    src_c = rhm.cell_centres((1, 8), 4)
    corr = torch.full((8, 8), 0.1, dtype=torch.float64)
    for i in range(6):
        corr[i, i + 2] = 0.9
    corr[3, 7] = 0.95
    plain = corr.argmax(1)
    ids, nx, ny = rhm.bin_ids(src_c, src_c, (32, 4), (32, 4), 64)
    geo = corr * rhm.geometric_score(corr, ids, nx, ny)
    assert plain[3] == 7 and geo.argmax(1)[3] == 5


def _shift_pair(size_hw, shift, seed=0):
    """A random texture and a copy moved ``shift`` pixels right (content at x appears at x + shift)."""
    g = torch.Generator().manual_seed(seed)
    H, W = size_hw
    big = F.interpolate(torch.rand(1, 3, H // 2, (W + shift) // 2, generator=g), scale_factor=2, mode="nearest")[0]
    return big[:, :, shift:shift + W], big[:, :, :W]


def _calibrate_batchnorm(d, images: torch.Tensor) -> None:
    """Give a random network BatchNorm statistics of real activations (torchvision's init leaves mean 0 /
    var 1, which lets activations grow block after block until every feature points the same way)."""
    d.ensure_ready()
    mods = [m for m in d.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    learner = getattr(d, "learner", None)
    if learner is not None:
        mods += [m for m in learner.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in mods:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration pass
        m.train()
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    with torch.no_grad():
        maps = bb.candidate_maps(d.net, (images - mean) / std, d.ids)
        if learner is not None:
            for i in d.ids:
                learner.cft(i, maps[i])
    for m in mods:
        m.eval()


@pytest.fixture
def make_dhpf(resnet50, learner50):
    """DHPF descriptors on ResNet-50 sharing one random backbone and learner (private copies: tests edit them)."""
    import copy

    def make(**config) -> DHPFDescriptor:
        d = DHPFDescriptor({"weights": "random", "backbone": "resnet50", **config})
        d.net, d.learner, d._ready = copy.deepcopy(resnet50), copy.deepcopy(learner50), True
        return d

    return make


def test_shifted_copy_returns_the_shift_with_rhm(make_dhpf):
    d = make_dhpf(load_size=128, selection="all")
    src, tgt = _shift_pair((128, 128), 32)
    _calibrate_batchnorm(d, torch.stack([src, tgt]))
    maps = d.describe(torch.stack([src, tgt]))
    grid = d.feature_grid((128, 128), tuple(maps.shape[-2:]))
    pts = torch.tensor([[float(x), float(y)] for x in (40, 52, 64, 77) for y in (30, 60, 90)])
    pred = d.transfer(maps[0], maps[1], grid, grid, (128, 128), (128, 128), pts)
    expected = pts.double() + torch.tensor([32.0, 0.0], dtype=torch.float64)
    assert torch.equal(pred, expected)


def test_hpf_shifted_copy_on_a_non_square_frame(resnet50):
    import copy

    assert HPFDescriptor({"backbone": "resnet50"}).ids == [0, 9, 10, 11, 12, 13]  # published SPair list
    # the stride-4 layers only: the stride-16 ones of the published list are too coarse at 96×128
    d = HPFDescriptor({"weights": "random", "backbone": "resnet50", "load_size": 128, "layers": [0, 1, 2, 3]})
    d.net, d._ready = copy.deepcopy(resnet50), True
    assert (d.jump, d.rf) == (4, 11)
    src, tgt = _shift_pair((96, 128), 32)
    _calibrate_batchnorm(d, torch.stack([src, tgt]))
    maps = d.describe(torch.stack([src, tgt]))
    pts = torch.tensor([[float(x), float(y)] for x in (40, 60, 80) for y in (30, 60)])
    pred = d.transfer(maps[0], maps[1], None, None, (96, 128), (96, 128), pts)
    assert torch.equal(pred, pts.double() + torch.tensor([32.0, 0.0], dtype=torch.float64))
    assert HPFDescriptor({"layers": "pfpascal"}).ids == [2, 17, 21, 22, 25, 26, 28]
    assert (HPFDescriptor({"layers": [4, 20]}).jump, HPFDescriptor({"layers": [4, 20]}).rf) == (8, 43)
    with pytest.raises(UsageError, match="at most 9"):
        HPFDescriptor({"layers": [12, 13]})


# ----------------------------------------------------------------------------------------------
# Per-image cache and pair-conditioned gates
# ----------------------------------------------------------------------------------------------
def test_cached_map_holds_native_cft_maps_and_pools(make_dhpf):
    d = make_dhpf(load_size=64)
    images = torch.rand(2, 3, 64, 64)
    packed = d.describe(images)
    n = 17
    parts = unpack(packed[1], d._layout((64, 64)))
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    maps = bb.candidate_maps(d.net, (images - mean) / std, list(range(n)))
    for i in (0, 5, 16):
        torch.testing.assert_close(parts[i], d.learner.reduction_ffns[i](maps[i])[1])
        torch.testing.assert_close(parts[n + i], maps[i][1].mean(dim=(1, 2)))
    with pytest.raises(DataError, match="--no-cache"):
        unpack(packed[0, ..., :-1], d._layout((64, 64)))
    assert torch.equal(unpack(pack([torch.ones(2, 3), torch.zeros(2, 2, 2)])[1], [(3,), (2, 2)])[1], torch.zeros(2, 2))


def _gate_on_channel0(learner: ln.Learner, layer: int, threshold: float) -> None:
    """Make gate ``layer`` fire iff v[0] > threshold (v = the pooled-feature vector it sees)."""
    seq = learner.gumbel_ffns[layer]
    with torch.no_grad():
        seq[0].weight.zero_()
        seq[0].weight[0, 0] = 1.0  # hidden 0 = v[0]
        seq[1].running_mean.zero_(), seq[1].running_var.fill_(1.0 - seq[1].eps)
        seq[1].weight.fill_(1.0), seq[1].bias.zero_()
        seq[1].bias[1] = threshold  # hidden 1 = threshold
        seq[3].weight.zero_()
        seq[3].weight[1, 0] = 1.0  # logit 1 = relu(v[0])
        seq[3].weight[0, 1] = 1.0  # logit 0 = threshold


def test_gates_see_the_sum_of_both_images_pools_and_fall_back_to_layer_0(make_dhpf):
    d = make_dhpf(load_size=64)
    for i in range(17):
        _gate_on_channel0(d.learner, i, 1.5)
    pools = [torch.zeros(c) for c in d.channels]
    src, tgt = [p.clone() for p in pools], [p.clone() for p in pools]
    src[4][0], tgt[4][0] = 1.0, 1.0  # neither image alone passes 1.5; their sum does
    src[9][0] = 2.0  # one image alone passes
    src[12][0], tgt[12][0] = 0.7, 0.7  # the sum stays below
    assert d.select(src, tgt) == [4, 9]
    assert d.select(pools, pools) == [0]  # every gate off: DHPF's base map (layer 0)


def _force_gate(learner: ln.Learner, layer: int, on: bool) -> None:
    seq = learner.gumbel_ffns[layer]
    with torch.no_grad():
        seq[0].weight.zero_()
        seq[1].bias.zero_()
        seq[1].bias[0 if on else 1] = 1.0  # hidden = (1, 0) or (0, 1) whatever the input
        seq[3].weight.zero_()
        seq[3].weight[1, 0] = seq[3].weight[0, 1] = 1.0  # logit 1 = hidden 0, logit 0 = hidden 1


def test_pair_hyperimage_uses_the_gated_layers_upsampled_align_corners(make_dhpf):
    d = make_dhpf(load_size=64)
    for i in range(17):
        _force_gate(d.learner, i, i in (1, 6))
    maps = d.describe(torch.rand(2, 3, 64, 64))
    hs, ht, used = d.hyperimages(maps[0], maps[1], (64, 64))
    assert used == [1, 6] and hs.shape == (32 + 64, 16, 16)
    part6 = unpack(maps[0], d._layout((64, 64)))[6]  # 8×8 native map of layer 6
    upsampled = F.interpolate(part6[None], size=(16, 16), mode="bilinear", align_corners=True)[0]
    torch.testing.assert_close(hs[32:], upsampled)
    grid = d.feature_grid((64, 64), tuple(maps.shape[-2:]))
    d.transfer(maps[0], maps[1], grid, grid, (64, 64), (64, 64), torch.tensor([[10.0, 10.0]]))
    assert d.run_info()["layers_per_pair"]["mean"] == 2 and d.run_info()["layer_selection_rate"] == {"1": 1.0, "6": 1.0}


def test_nn_readout_is_the_core_readout_on_normalised_hyperimages(make_dhpf):
    from corrbench.readout import nn_transfer

    d = make_dhpf(load_size=64, readout="nn", selection=[0, 3, 7])
    maps = d.describe(torch.rand(2, 3, 64, 64))
    assert d._layout((64, 64)) == [(8, 16, 16), (32, 16, 16), (64, 8, 8)]  # fixed ids: no pools cached
    grid = d.feature_grid((64, 64), tuple(maps.shape[-2:]))
    pts = torch.tensor([[5.0, 7.0], [40.0, 33.0]])
    ours = d.transfer(maps[0], maps[1], grid, grid, (64, 64), (64, 64), pts)
    hs, ht, _ = d.hyperimages(maps[0], maps[1], (64, 64))
    g4 = FeatureGrid(4, 4, 0, 0)
    expected = nn_transfer(F.normalize(hs, dim=0), F.normalize(ht, dim=0), g4, g4, (64, 64), (64, 64), pts)
    assert torch.equal(ours, expected)


def _dhpf(**config) -> DHPFDescriptor:
    return DHPFDescriptor({"weights": "random", "backbone": "resnet50", **config})


def test_config_errors_are_usage_errors():
    with pytest.raises(UsageError, match="divisible by 4"):
        _dhpf(load_size=242)
    with pytest.raises(UsageError, match="readout"):
        _dhpf(readout="soft")
    with pytest.raises(UsageError, match="within 0..16"):
        _dhpf(selection=[0, 17])
    with pytest.raises(UsageError, match="backbone"):
        _dhpf(backbone="resnet18")
    assert _dhpf(selection="0,3").ids == [0, 3]


# ----------------------------------------------------------------------------------------------
# Registration and the runner
# ----------------------------------------------------------------------------------------------
def test_plugin_registers_dhpf_and_hpf_lazily():
    import corrbench_dhpf
    from corrbench.plugins import PluginHost

    host = PluginHost()
    host.register_plugin(corrbench_dhpf, "dhpf")
    assert host.methods.names() == ["dhpf", "hpf"]
    assert host.methods.entry("dhpf").lazy and host.methods.entry("hpf").extras == ("dhpf",)


@pytest.mark.slow
def test_runner_end_to_end_on_synthetic(tmp_path, monkeypatch):
    from corrbench.plugins import reset_host
    from corrbench.runner import run_benchmark

    monkeypatch.setenv("CORRBENCH_DATA", str(tmp_path / "data"))
    reset_host(None)
    try:
        res = run_benchmark(["dhpf", "hpf"], "synthetic", limit=2, cache_dir=tmp_path / "cache",
                            out_dir=tmp_path / "out", progress=False,
                            overrides={"dhpf.weights": "random", "dhpf.backbone": "resnet50", "dhpf.load_size": 64,
                                       "hpf.weights": "random", "hpf.backbone": "resnet50", "hpf.load_size": 64})
        again = run_benchmark(["dhpf"], "synthetic", limit=2, cache_dir=tmp_path / "cache", progress=False,
                              overrides={"dhpf.weights": "random", "dhpf.backbone": "resnet50", "dhpf.load_size": 64})
    finally:
        reset_host(None)
    dhpf = res.results["methods"]["dhpf"]
    assert dhpf["readout"] == "pair-conditioned" and dhpf["info"]["layers_per_pair"]["pairs"] == 2
    assert res.results["methods"]["hpf"]["n_keypoints"] == dhpf["n_keypoints"] > 0
    # the per-image maps come back from the cache and give the same predictions
    assert again.results["methods"]["dhpf"]["cost"]["images_extracted"] == 0
    assert again.results["methods"]["dhpf"]["metrics"] == dhpf["metrics"]
