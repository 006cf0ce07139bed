"""Training the aggregation network: objective, data order, loop, checkpoints and exact resume.

Most tests drive the loop with a fake feature source (fixed random convolutions of the image, computed
under ``inference_mode`` like the real extractor) so they run in seconds; the tiny-SD tests at the end
go through the real extractor and the ``corrbench train dhf`` command.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from corrbench.api import Pair
from corrbench_dhf import checkpoint as ck
from corrbench_dhf import train as tr


# -- fixtures ----------------------------------------------------------------------------------------------
def write_disc_pairs(folder: Path, n_pairs: int, seed: int = 0, n_kps: int = 5) -> list[Pair]:
    """Pairs of non-square images with coloured discs at the keypoints (colour = keypoint id) on noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    colours = [tuple(int(c) for c in rng.integers(40, 255, 3)) for _ in range(n_kps)]
    pairs = []
    for i in range(n_pairs):
        paths, points, boxes = [], [], []
        for side, size in (("s", (72, 56)), ("t", (56, 80))):
            W, H = size
            pts = np.stack([rng.uniform(8, W - 8, n_kps), rng.uniform(8, H - 8, n_kps)], axis=1)
            noise = rng.integers(0, 60, (H, W, 3), dtype=np.uint8)
            img = Image.fromarray(noise)
            draw = ImageDraw.Draw(img)
            for (x, y), col in zip(pts, colours):
                draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=col)
            path = folder / f"{i}{side}.png"
            img.save(path)
            paths.append(path)
            points.append(pts)
            boxes.append((2.0, 2.0, W - 2.0, H - 2.0))
        pairs.append(Pair(f"p{i}", paths[0], paths[1], points[0], points[1], boxes[0], boxes[1], "disc"))
    return pairs


class FakeSource:
    """Fixed random 3×3 convolutions of the image per (timestep, layer), made under inference_mode."""

    def __init__(self, layer_channels=(6, 6, 4), num_timesteps=2, resolution=16, seed=0):
        self.layer_channels = list(layer_channels)
        self.num_timesteps = num_timesteps
        self.output_resolution = resolution
        g = torch.Generator().manual_seed(seed)
        self.filters = {(s, l): torch.randn(c, 3, 3, 3, generator=g)
                        for s in range(num_timesteps) for l, c in enumerate(self.layer_channels)}
        self.calls = 0

    def run(self, images, consume):
        self.calls += 1
        with torch.inference_mode():
            x = F.interpolate(images, size=(self.output_resolution,) * 2, mode="bilinear", align_corners=False)
            for s in range(self.num_timesteps):
                for l in range(len(self.layer_channels)):
                    consume(s, l, F.conv2d(x, self.filters[(s, l)], padding=1))

    def describe(self):
        return {"model_id": "fake", "save_timestep": list(range(self.num_timesteps))}


def settings(**kw) -> tr.TrainSettings:
    base = dict(steps=40, lr=1e-3, load_size=32, seed=0, ckpt_every=10, val_every=20, projection_dim=32,
                num_norm_groups=8)
    return tr.TrainSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def disc_pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("discs")
    return write_disc_pairs(folder, 12, seed=1)


# -- objective ---------------------------------------------------------------------------------------------
def test_points_to_cells_scales_clips_and_rounds():
    cells = tr.points_to_cells(np.array([[0, 0], [99, 49], [50.4, 25.6], [-3, 60], [33.3, 12.4]]), (100, 50), 16)
    # x·16/100, y·16/50, clipped to [0, 15], rounded; index = y·16 + x
    expect = [0, 15 * 16 + 15, 8 * 16 + 8, 15 * 16 + 0, 4 * 16 + 5]
    assert cells.tolist() == expect


def test_clip_loss_matches_an_explicit_per_keypoint_computation():
    torch.manual_seed(0)
    src, tgt = torch.randn(7, 5, 5), torch.randn(7, 5, 5)
    s_cells, t_cells = torch.tensor([0, 6, 24, 13]), torch.tensor([3, 3, 11, 20])
    scale = 1 / 0.07
    got = tr.clip_loss(src, tgt, s_cells, t_cells, scale)
    s_vecs = [src[:, c // 5, c % 5] for c in range(25)]
    t_vecs = [tgt[:, c // 5, c % 5] for c in range(25)]

    def ce(query, bank, label):
        logits = torch.tensor([float(query @ b / (query.norm() * b.norm())) * scale for b in bank])
        return float(-(logits[label] - torch.logsumexp(logits, 0)))

    fwd = np.mean([ce(s_vecs[s], t_vecs, t) for s, t in zip(s_cells.tolist(), t_cells.tolist())])
    bwd = np.mean([ce(t_vecs[t], s_vecs, s) for s, t in zip(s_cells.tolist(), t_cells.tolist())])
    assert abs(float(got) - (fwd + bwd) / 2) < 1e-4


def test_data_order_epoch_zero_is_the_official_permutation():
    np.random.seed(0)
    official = np.random.permutation(50)
    assert [tr.data_order(50, s, 0) for s in range(50)] == official.tolist()
    second = [tr.data_order(50, s, 0) for s in range(50, 100)]
    assert sorted(second) == list(range(50)) and second != official.tolist()


def test_optimizer_has_two_groups_without_weight_decay():
    from corrbench_dhf.network import AggregationNetwork

    net = AggregationNetwork([8, 8], 2, projection_dim=32, num_norm_groups=8)
    opt = tr.build_optimizer(net, settings())
    assert isinstance(opt, torch.optim.AdamW)
    assert [len(g["params"]) for g in opt.param_groups] == [1, len(list(net.parameters())) - 1]
    assert opt.param_groups[0]["params"][0] is net.mixing_weights
    assert all(g["weight_decay"] == 0 and g["lr"] == 1e-3 for g in opt.param_groups)


# -- loop --------------------------------------------------------------------------------------------------
def test_training_lowers_the_loss_and_writes_official_checkpoints(tmp_path, disc_pairs):
    source = FakeSource()
    result = tr.train(source, disc_pairs[:10], tmp_path, settings(steps=60, ckpt_every=25, val_every=30),
                      val_pairs=disc_pairs[10:], progress=False)
    rows = tr.read_metrics(tmp_path / "metrics.jsonl")
    assert tr.mean_loss(rows, 51, 60) < 0.8 * tr.mean_loss(rows, 1, 10)
    assert [h["step"] for h in result["validation"]] == [0, 30, 60]
    assert all(0 <= h["pck@0.10_bbox"] <= 100 for h in result["validation"])
    names = sorted(p.name for p in tmp_path.glob("checkpoint_step_*.pt"))
    assert names == ["checkpoint_step_25.pt", "checkpoint_step_50.pt", "checkpoint_step_60.pt"]
    raw = torch.load(tmp_path / "aggregation_network.pt", weights_only=True)
    assert set(ck.OFFICIAL_KEYS) <= set(raw) and raw["step"] == 60
    assert raw["config"]["save_timestep"] == [0, 1] and raw["config"]["load_resolution"] == 32
    loaded = ck.load_checkpoint(tmp_path / "aggregation_network.safetensors")
    assert loaded.layer_channels == [6, 6, 4] and loaded.num_timesteps == 2 and loaded.step == 60
    assert (tmp_path / "best.pt").is_file()


def test_resume_after_interruption_is_exact(tmp_path, disc_pairs):
    straight = tr.train(FakeSource(), disc_pairs[:10], tmp_path / "a", settings(steps=14, ckpt_every=4,
                        val_every=7), val_pairs=disc_pairs[10:11], progress=False)
    part = tr.train(FakeSource(), disc_pairs[:10], tmp_path / "b", settings(steps=14, ckpt_every=4, val_every=7),
                    val_pairs=disc_pairs[10:11], progress=False, stop_after=10)
    assert part == {"interrupted_at": 10, "out_dir": str(tmp_path / "b")}
    assert tr.latest_checkpoint(tmp_path / "b").name == "checkpoint_step_8.pt"
    resumed = tr.train(FakeSource(), disc_pairs[:10], tmp_path / "b", settings(steps=14, ckpt_every=4,
                       val_every=7), val_pairs=disc_pairs[10:11], resume=True, progress=False)
    a = ck.load_checkpoint(tmp_path / "a" / "aggregation_network.pt")
    b = ck.load_checkpoint(tmp_path / "b" / "aggregation_network.pt")
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    for ga, gb in zip(a.optimizer_state["state"].values(), b.optimizer_state["state"].values()):
        assert torch.equal(ga["exp_avg"], gb["exp_avg"])
    rows_a = tr.read_metrics(tmp_path / "a" / "metrics.jsonl")
    rows_b = tr.read_metrics(tmp_path / "b" / "metrics.jsonl")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(rows_a) == strip(rows_b)  # lines written after step 8 before the stop were dropped
    assert [v["step"] for v in straight["validation"]] == [0, 7, 14]
    assert resumed["validation"] == straight["validation"][-1:]  # the same validation numbers at step 14


def test_resume_refuses_different_settings(tmp_path, disc_pairs):
    tr.train(FakeSource(), disc_pairs[:4], tmp_path, settings(steps=4, ckpt_every=2), progress=False, stop_after=2)
    with pytest.raises(Exception, match="seed"):
        tr.train(FakeSource(), disc_pairs[:4], tmp_path, settings(steps=4, ckpt_every=2, seed=3), resume=True,
                 progress=False)


def test_resume_from_an_explicit_file_and_fresh_start_without_checkpoints(tmp_path, disc_pairs):
    r = tr.train(FakeSource(), disc_pairs[:4], tmp_path / "x", settings(steps=2, ckpt_every=1), resume=True,
                 progress=False)
    assert r["steps"] == 2  # resume=True with no checkpoint is a fresh start
    r2 = tr.train(FakeSource(), disc_pairs[:4], tmp_path / "y", settings(steps=3, ckpt_every=1),
                  resume=tmp_path / "x" / "checkpoint_step_2.pt", progress=False)
    assert r2["steps"] == 3
    assert len(tr.read_metrics(tmp_path / "y" / "metrics.jsonl")) == 1  # only step 3 was trained here


# -- with the real extractor on a tiny random-weight SD ------------------------------------------------------------
SD_FAST = ["sd.image_size=64", "sd.output_resolution=16"]


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    pytest.importorskip("diffusers")
    from corrbench.testing.sd import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("train-sd") / "sd")


def sd_source(tiny_sd, one_step=True, steps=10):
    from corrbench_dhf.slots import LAYERS
    from corrbench_sd.extractor import SDFeatureExtractor

    ex = SDFeatureExtractor(str(tiny_sd), image_size=64, output_resolution=16, num_steps=steps)
    return tr.SDFeatureSource(ex, (steps - 1,) if one_step else (steps - 1, steps // 2, 0), [tuple(x) for x in LAYERS],
                              one_step=one_step)


def test_tiny_sd_training_lowers_the_loss(tmp_path, tiny_sd, disc_pairs):
    source = sd_source(tiny_sd)
    tr.train(source, disc_pairs[:4], tmp_path, settings(steps=24, ckpt_every=24), progress=False)
    rows = tr.read_metrics(tmp_path / "metrics.jsonl")
    assert tr.mean_loss(rows, 17, 24) < tr.mean_loss(rows, 1, 8)
    cfg = ck.load_checkpoint(tmp_path / "aggregation_network.pt").config
    assert cfg["model_id"] == str(tiny_sd) and cfg["save_timestep"] == [9] and cfg["one_step"] is True


def test_tiny_sd_multi_step_resume_is_exact(tmp_path, tiny_sd, disc_pairs):
    kw = dict(steps=5, ckpt_every=2)
    tr.train(sd_source(tiny_sd, one_step=False), disc_pairs[:4], tmp_path / "a", settings(**kw), progress=False)
    tr.train(sd_source(tiny_sd, one_step=False), disc_pairs[:4], tmp_path / "b", settings(**kw), progress=False,
             stop_after=3)
    tr.train(sd_source(tiny_sd, one_step=False), disc_pairs[:4], tmp_path / "b", settings(**kw), progress=False,
             resume=True)
    a = ck.load_checkpoint(tmp_path / "a" / "aggregation_network.pt")
    b = ck.load_checkpoint(tmp_path / "b" / "aggregation_network.pt")
    assert a.num_timesteps == 3
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k


def test_train_command_on_synthetic_then_resume(tmp_path, tiny_sd):
    from click.testing import CliRunner

    from corrbench.cli import build_cli

    out = tmp_path / "run"
    base = ["train", "dhf", "--dataset", "synthetic", "--split", "trn", "--one-step", "--load-size", "32",
            "--projection-dim", "32", "--norm-groups", "8", "--val-split", "val", "--val-limit", "2",
            "--val-every", "2", "--ckpt-every", "2", "--out", str(out), "--quiet", "--set", f"sd.model={tiny_sd}"]
    for s in SD_FAST:
        base += ["--set", s]
    res = CliRunner().invoke(build_cli(), base + ["--steps", "4"])
    assert res.exit_code == 0, res.output
    assert "checkpoint:" in res.output and "validation (val, 2 pairs)" in res.output
    rows = tr.read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "val_pck@0.10_bbox" in r] == [0, 2, 4]
    res = CliRunner().invoke(build_cli(), base + ["--steps", "6", "--resume"])
    assert res.exit_code == 0, res.output
    rows = tr.read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    raw = torch.load(out / "checkpoint_step_6.pt", weights_only=True)
    assert raw["step"] == 6 and raw["config"]["dataset"] == "synthetic" and raw["config"]["load_resolution"] == 32
    multi = [a if a != str(out) else str(tmp_path / "multi") for a in base if a != "--one-step"]
    res = CliRunner().invoke(build_cli(), multi + ["--steps", "1", "--save-indices", "9,5,0", "--set", "sd.num_steps=10",
                                                   "--val-split", "none"])
    assert res.exit_code == 0, res.output
    multi_ckpt = ck.load_checkpoint(tmp_path / "multi" / "aggregation_network.pt")
    assert multi_ckpt.num_timesteps == 3 and multi_ckpt.config["save_timestep"] == [9, 5, 0]
    bad = CliRunner().invoke(build_cli(), base + ["--steps", "0"])
    assert bad.exit_code != 0 and "--steps must be at least 1" in str(bad.exception)


def test_train_one_slot_for_dhf_pruned_retrain(tmp_path, tiny_sd):
    """`train dhf --slot` trains on one map; dhf-pruned.mode=retrain then uses that map and bottleneck."""
    from click.testing import CliRunner

    from corrbench.cli import build_cli
    from corrbench_dhf.methods import DHFPruned
    from corrbench_dhf.network import AggregationNetwork
    from corrbench_sd.ddim import DDIMSchedule
    from corrbench_sd.methods import SDLayer

    # an "Ours" network whose largest mixing weight is slot 17 = (timestep slot 1, layer 5)
    from corrbench_sd.extractor import LAYERS, SDFeatureExtractor

    channels = SDFeatureExtractor(str(tiny_sd)).layer_channels(LAYERS)
    ours = AggregationNetwork(channels, 3, projection_dim=32, num_norm_groups=8)
    with torch.no_grad():
        ours.mixing_weights[17] = 5.0
    ours_path = ck.save_checkpoint(tmp_path / "ours.pt", ours, config={"save_timestep": [9, 5, 0]})
    out = tmp_path / "slot"
    args = ["train", "dhf", "--dataset", "synthetic", "--split", "trn", "--steps", "2", "--load-size", "32",
            "--projection-dim", "32", "--norm-groups", "8", "--val-split", "none", "--out", str(out), "--quiet",
            "--save-indices", "9,5,0", "--slot", "argmax", "--slot-weights", str(ours_path),
            "--set", f"sd.model={tiny_sd}", "--set", "sd.num_steps=10"] + sum((["--set", s] for s in SD_FAST), [])
    res = CliRunner().invoke(build_cli(), args)
    assert res.exit_code == 0, res.output
    trained = ck.load_checkpoint(out / "aggregation_network.pt")
    assert trained.layer_channels == [channels[5]] and trained.num_timesteps == 1
    assert trained.config["pruned_slot"]["slot"] == 17 and trained.config["layers"] == [[1, 2]]
    cfg = {"model": str(tiny_sd), "image_size": 64, "output_resolution": 16, "num_steps": 10, "load_size": 32}
    d = DHFPruned({**cfg, "mode": "retrain", "retrained": str(out / "aggregation_network.pt")})
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    got = d.describe(images)
    assert d.run_info()["slot"]["module"] == "up_blocks.1.resnets.2" and d.run_info()["mode"] == "retrain"
    raw = SDLayer({**cfg, "block": [1, 2], "timestep": DDIMSchedule(10).inversion_timestep(5),
                   "raw_indices": [9, 5, 0]}).describe(images)
    with torch.no_grad():
        torch.testing.assert_close(got, trained.build().bottleneck_layers[0](raw), rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="retrained=PATH"):
        DHFPruned({**cfg, "mode": "retrain"})
    with pytest.raises(Exception, match="single-map"):
        DHFPruned({**cfg, "mode": "retrain", "retrained": str(ours_path)}).ensure_ready()
