"""The DHF methods on a tiny random-weight SD folder: parity with the official aggregation, the pruned
rows, runs on the synthetic dataset, pictures and synthetic transfer.

To stay fast on a CPU these tests use short inversions (``sd.num_steps=10``, 64 px UNet input) and
checkpoints whose stored ``save_timestep`` fits them, exactly as a real checkpoint's config drives the
real 50-step run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from corrbench.errors import UsageError, WeightsError  # noqa: E402
from corrbench.testing.sd import make_tiny_sd  # noqa: E402
from corrbench_dhf import checkpoint as ck  # noqa: E402
from corrbench_dhf.methods import DHF, DHFOneStep, DHFPruned, DHFSD21, SDLayerPruned  # noqa: E402
from corrbench_dhf.network import AggregationNetwork  # noqa: E402
from corrbench_sd.ddim import DDIMSchedule  # noqa: E402
from corrbench_sd.extractor import LAYERS, SDFeatureExtractor  # noqa: E402

from test_dhf_network import reference_hyperfeatures  # noqa: E402

STEPS = 10
SAVE = [9, 5, 0]  # clean pass, a middle step, the noisiest
FAST = {"sd.image_size": 64, "sd.num_steps": STEPS, "sd.output_resolution": 16, "sd.load_size": 32}
ARGMAX_SLOT = 17  # timestep slot 1 (index 5), layer 5 (0-based) = up_blocks[1].resnets[2]


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return make_tiny_sd(tmp_path_factory.mktemp("dhf-sd") / "sd")


@pytest.fixture(scope="module")
def channels(tiny_sd):
    return SDFeatureExtractor(str(tiny_sd)).layer_channels(LAYERS)


def make_checkpoint(path: Path, channels, save=SAVE, projection=32, groups=8, seed=0, argmax=ARGMAX_SLOT) -> Path:
    torch.manual_seed(seed)
    net = AggregationNetwork(channels, len(save), projection_dim=projection, num_norm_groups=groups)
    with torch.no_grad():
        w = torch.randn(net.num_slots) * 0.3
        if argmax is not None:
            w[argmax] = w.max() + 1.0
        net.mixing_weights.copy_(w)
        for p in net.parameters():
            if p.ndim == 1 and p is not net.mixing_weights:
                p.add_(0.1 * torch.randn_like(p))  # non-trivial norms, so a mixed-up key would show
    return ck.save_checkpoint(path, net, config={"save_timestep": list(save), "num_timesteps": STEPS,
                                                 "num_norm_groups": groups, "model_id": "tiny"}, step=123)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, channels):
    return make_checkpoint(tmp_path_factory.mktemp("dhf-ckpt") / "checkpoint_step_123.pt", channels)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dhf-img")
    rng = np.random.default_rng(0)
    paths = []
    for name, size in (("A", (48, 40)), ("B", (36, 52))):
        arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        p = folder / f"{name}.jpg"
        Image.fromarray(arr).save(p, quality=95)
        paths.append(p)
    return paths


def method_config(tiny_sd, **extra):
    cfg = {k.split(".", 1)[1]: v for k, v in FAST.items()}
    return {"model": str(tiny_sd), **cfg, **extra}


def sets(tiny_sd, *more):
    return [f"sd.model={tiny_sd}", *(f"{k}={v}" for k, v in FAST.items()), *more]


# -- parity with the official computation ------------------------------------------------------------------
def test_extract_equals_official_aggregation_of_the_raw_features(tmp_path, tiny_sd, ckpt, image_files):
    """`corrbench extract --method dhf` = the official network applied to the stacked raw features."""
    from corrbench.extract import extract_to_file

    common = sets(tiny_sd, f"dhf.weights={ckpt}", "sd.latent=mode")
    extract_to_file("dhf", image_files, tmp_path / "F.safetensors", overrides=common)
    extract_to_file("dhf", image_files, tmp_path / "raw.safetensors", overrides=common, raw=True)
    feats, raw = load_file(tmp_path / "F.safetensors"), load_file(tmp_path / "raw.safetensors")
    assert set(feats) == {"A", "B"}
    assert feats["A"].shape == (32, 16, 16)
    total = sum(load_file(tmp_path / "raw.safetensors")["A"].shape[:1])
    channels = ck.load_checkpoint(ckpt).layer_channels
    assert total == len(SAVE) * sum(channels)
    official = torch.load(ckpt, weights_only=True)["aggregation_network"]  # read as the official loader does
    for name in ("A", "B"):
        ref = reference_hyperfeatures(official, channels, len(SAVE), raw[name][None], groups=8)[0]
        torch.testing.assert_close(feats[name], ref, rtol=1e-4, atol=1e-5)


def test_paper_sized_output_is_384_by_64_by_64(tmp_path, tiny_sd, channels, image_files):
    from corrbench.extract import extract_to_file

    path = make_checkpoint(tmp_path / "p384.pt", channels, save=[STEPS - 1], projection=384, groups=32, argmax=None)
    extract_to_file("dhf", image_files[:1], tmp_path / "F.safetensors",
                    overrides=sets(tiny_sd, f"dhf.weights={path}", "sd.output_resolution=64"))
    assert load_file(tmp_path / "F.safetensors")["A"].shape == (384, 64, 64)


def test_streaming_and_materialised_forms_agree_through_the_extractor(tiny_sd, ckpt):
    d = DHF(method_config(tiny_sd, weights=str(ckpt)))
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    streamed = d.describe(images)
    with torch.inference_mode():
        raw = d.extract_raw(images)
        stacked = d.network(raw)
    torch.testing.assert_close(streamed, stacked, rtol=1e-4, atol=1e-5)
    info = d.run_info()
    assert info["save_indices"] == SAVE
    assert info["unet_timesteps"] == [DDIMSchedule(STEPS).inversion_timestep(k) for k in SAVE]
    assert info["checkpoint_step"] == 123 and info["checkpoint_config"]["model_id"] == "tiny"
    assert info["top_mixing_slots"][0]["slot"] == ARGMAX_SLOT


# -- pruned rows ------------------------------------------------------------------------------------------
def test_pruned_slot_is_the_mixing_weight_argmax_mapped_by_slot_order(tiny_sd, ckpt):
    d = SDLayerPruned(method_config(tiny_sd, weights=str(ckpt)))
    d.ensure_ready()
    slot = d.slot
    assert (slot.slot, slot.timestep_slot, slot.layer, slot.layer_name) == (ARGMAX_SLOT, 1, 5, 6)
    assert slot.module == "up_blocks.1.resnets.2" and slot.save_index == 5
    assert slot.unet_timestep == DDIMSchedule(STEPS).inversion_timestep(5)
    weights = torch.softmax(torch.load(ckpt, weights_only=True)["aggregation_network"]["mixing_weights"], 0)
    assert abs(slot.weight - float(weights.max())) < 1e-6
    assert d.run_info()["slot"]["slot"] == ARGMAX_SLOT and d.run_info()["slot_rule"].startswith("argmax")


def test_sd_layer_pruned_equals_the_sd_layer_method_at_that_slot(tiny_sd, ckpt):
    from corrbench_sd.methods import SDLayer

    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    pruned = SDLayerPruned(method_config(tiny_sd, weights=str(ckpt))).describe(images)
    t = DDIMSchedule(STEPS).inversion_timestep(5)
    raw = SDLayer(method_config(tiny_sd, block=[1, 2], timestep=t, raw_indices=SAVE)).describe(images)
    torch.testing.assert_close(pruned, raw)
    dhf_pruned = DHFPruned(method_config(tiny_sd, weights=str(ckpt)))
    out = dhf_pruned.describe(images)
    net = ck.load_checkpoint(ckpt).build()
    with torch.no_grad():
        torch.testing.assert_close(out, net.bottleneck_layers[5](raw), rtol=1e-5, atol=1e-6)


def test_explicit_slot_and_bad_slots(tiny_sd, ckpt):
    d = SDLayerPruned(method_config(tiny_sd, weights=str(ckpt), slot=[2, 11]))
    d.ensure_ready()
    assert (d.slot.slot, d.slot.save_index, d.slot.module) == (35, 0, "up_blocks.3.resnets.2")
    assert d.run_info()["slot_rule"] == "explicit (config)"
    for bad in ([3, 0], [0, 12], "x", 36):
        with pytest.raises(UsageError, match="slot"):
            SDLayerPruned(method_config(tiny_sd, weights=str(ckpt), slot=bad)).ensure_ready()


def test_random_weights_pick_slot_zero(tiny_sd):
    """Untrained mixing weights are all 1 (official init), so argmax is slot 0: layer 1 at the clean pass."""
    d = SDLayerPruned(method_config(tiny_sd, weights="random", **{"num_steps": 50}))
    d.ensure_ready()
    assert (d.slot.slot, d.slot.module, d.slot.unet_timestep, d.slot.save_index) == (0, "up_blocks.0.resnets.0", -1, 49)


# -- weights handling -----------------------------------------------------------------------------------------
def test_checkpoint_for_another_model_is_a_clear_error(tmp_path, tiny_sd, channels):
    wrong = make_checkpoint(tmp_path / "wrong.pt", [c * 2 for c in channels])
    with pytest.raises(WeightsError, match="wrong sd.model"):
        DHF(method_config(tiny_sd, weights=str(wrong))).ensure_ready()
    with pytest.raises(WeightsError, match="not the single clean pass"):
        DHFOneStep(method_config(tiny_sd, weights=str(make_checkpoint(tmp_path / "m.pt", channels)))).ensure_ready()


def test_a_network_of_the_other_sd_family_warns():
    from corrbench_dhf.methods import _warn_if_other_family

    with pytest.warns(UserWarning, match="SD-1.5"):
        _warn_if_other_family("runwayml/stable-diffusion-v1-5", "stabilityai/stable-diffusion-2-1-base", "x.pt")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_other_family("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5", "x.pt")
        _warn_if_other_family("tiny", "/some/folder", "x.pt")


def test_one_step_reads_official_one_step_checkpoints(tmp_path, tiny_sd, channels):
    path = make_checkpoint(tmp_path / "one.pt", channels, save=[0], argmax=None)  # official: [0], 1-step scheduler
    d = DHFOneStep(method_config(tiny_sd, weights=str(path)))
    images = torch.rand(1, 3, 32, 32)
    out = d.describe(images)
    assert d.indices == (STEPS - 1,)
    raw = {}
    with torch.inference_mode():
        d.extractor.one_step(images, layers=LAYERS, consume=lambda s, l, f: raw.__setitem__(l, f))
        stacked = torch.cat([raw[l] for l in range(len(LAYERS))], 1)
        torch.testing.assert_close(out, d.network(stacked), rtol=1e-4, atol=1e-5)


def test_offline_auto_weights_fail_with_one_clear_error(tiny_sd):
    with pytest.raises(WeightsError, match="hf download g-luo/diffusion-hyperfeatures"):
        DHF(method_config(tiny_sd)).describe(torch.rand(1, 3, 32, 32))


def test_dhf_namespace_reaches_every_dhf_row():
    """`--set dhf.weights=...` and `--set sd.model=...` apply to all DHF rows of a run (shared namespaces)."""
    from corrbench.config import parse_overrides, resolve_overrides

    classes = {"dhf-one-step": DHFOneStep, "sd-layer-pruned": SDLayerPruned, "dhf-pruned": DHFPruned,
               "dhf-sd21": DHFSD21}
    cfgs, _ = resolve_overrides(parse_overrides(["dhf.weights=random", "sd.model=X", "dhf.sd_weights=random",
                                                 "dhf-pruned.weights=Y"]), classes)
    for name, cfg in cfgs.items():
        assert cfg["model"] == "X" and cfg["sd_weights"] == "random"
        assert cfg["weights"] == ("Y" if name == "dhf-pruned" else "random")
    with pytest.raises(UsageError, match="no key"):
        resolve_overrides(parse_overrides(["sd.raw_indices=[1]"]), classes)  # the SD rows' raw export, not DHF's


def test_sd21_variant_defaults():
    d = DHFSD21()
    assert d.config["model"] == "stabilityai/stable-diffusion-2-1-base"
    assert d.released_file == "weights/aggregation_network_sdv2-1.pt"
    assert DHFOneStep.released_file == "weights/aggregation_network_one-step.pt"
    assert DHF.default_config["load_size"] == 224 and DHF.preprocess.resize == "square"


# -- whole runs, pictures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_sd, ckpt):
    from corrbench.runner import run_benchmark

    out = tmp_path_factory.mktemp("dhf-run") / "run"
    overrides = sets(tiny_sd, f"dhf.weights={ckpt}", "dhf-one-step.weights=random",
                     f"sd-layer-pruned.weights={ckpt}", f"dhf-pruned.weights={ckpt}")
    run_benchmark("dhf,dhf-one-step,sd-layer-pruned,dhf-pruned", "synthetic", limit=3, overrides=overrides,
                  out_dir=out, progress=False, batch_size=4)
    return out


def test_run_all_dhf_rows_on_synthetic(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    methods = results["methods"]
    assert set(methods) == {"dhf", "dhf-one-step", "sd-layer-pruned", "dhf-pruned"}
    for m in methods.values():
        assert 0 <= m["metrics"]["pck@0.10_bbox"] <= 100 and m["n_pairs"] == 3
    assert methods["sd-layer-pruned"]["info"]["slot"]["slot"] == ARGMAX_SLOT
    assert methods["dhf-pruned"]["info"]["slot"]["module"] == "up_blocks.1.resnets.2"
    assert methods["dhf-one-step"]["info"]["aggregation_weights"] == "random"


def test_plot_matches_colours_agree_with_the_run_pck(tmp_path, run_dir):
    from corrbench_dhf.plots import plot_matches

    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    pairs = sorted({r["pair"] for r in rows if r["method"] == "dhf"})
    hits = []
    for pair in pairs:
        info = plot_matches(run_dir, pair, tmp_path / f"{pair}.png", method="dhf")
        hits += info["correct"]
        assert Image.open(tmp_path / f"{pair}.png").size[0] > 100
    summary = json.loads((run_dir / "results.json").read_text())["methods"]["dhf"]["metrics"]
    assert abs(100 * np.mean(hits) - summary["pck@0.10_bbox"]) < 1e-6
    with pytest.raises(UsageError, match="several methods"):
        plot_matches(run_dir, pairs[0], tmp_path / "x.png")


def test_plot_commands(tmp_path, run_dir, ckpt):
    from corrbench.cli import build_cli

    cli = build_cli()
    res = CliRunner().invoke(cli, ["plot", "mixing-weights", str(ckpt), "--out", str(tmp_path / "mw.png")])
    assert res.exit_code == 0, res.output
    assert "t=" in res.output and (tmp_path / "mw.png").is_file()
    pair = json.loads((run_dir / "predictions.jsonl").read_text().splitlines()[0])["pair"]
    res = CliRunner().invoke(cli, ["plot", "matches", "--run", str(run_dir), "--pair", pair, "--method", "dhf-pruned"])
    assert res.exit_code == 0, res.output
    assert list(run_dir.glob("matches-dhf-pruned-*.png"))


def test_mixing_weight_heatmap_rows_and_columns(tmp_path, ckpt):
    from corrbench_dhf.plots import plot_mixing_weights

    info = plot_mixing_weights(ckpt, tmp_path / "mw.png")
    weights = torch.softmax(torch.load(ckpt, weights_only=True)["aggregation_network"]["mixing_weights"], 0)
    np.testing.assert_allclose(info["matrix"], weights.numpy().reshape(3, 12), rtol=1e-6)
    sched = DDIMSchedule(STEPS)
    assert info["rows"] == [f"t={sched.inversion_timestep(k)} (k={k})" for k in SAVE]
    assert info["argmax"] == (1, 5) and info["cols"][0].startswith("1\n0,0")
    png = Image.open(tmp_path / "mw.png")
    assert png.format == "PNG" and png.size[0] > 200


def test_heatmap_labels_for_the_paper_layout_without_config(tmp_path):
    net = AggregationNetwork([8] * 12, 11, projection_dim=32, num_norm_groups=8)
    path = ck.save_checkpoint(tmp_path / "bare.pt", net)
    from corrbench_dhf.plots import mixing_matrix

    _, rows, cols, _ = mixing_matrix(path)
    assert rows[0] == "t=-1 (k=49)" and rows[1] == "t=60 (k=45)" and rows[-1] == "t=960 (k=0)"
    assert [DDIMSchedule(50).inversion_timestep(k) for k in (49, 45, 0)] == [-1, 60, 960]
    assert cols[3].startswith("4\n1,0")


# -- synthetic transfer -----------------------------------------------------------------------------------------------
def test_generate_writes_images_descriptors_and_matches(tmp_path, tiny_sd, ckpt):
    from corrbench.cli import build_cli
    from corrbench_dhf.generate import mutual_nearest_neighbours

    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompt": "a cat sitting in a living room", "source_points": [[10, 20], [40, 33]]},
                                   "photo of a dog"]))
    out = tmp_path / "gen"
    args = ["generate", "--prompts", str(prompts), "--method", "dhf", "--out", str(out), "--seed", "7",
            "--top-k", "5"]
    for s in sets(tiny_sd, f"dhf.weights={ckpt}"):
        args += ["--set", s]
    res = CliRunner().invoke(build_cli(), args)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "generation.json").read_text())
    assert summary["generation_timesteps"] == [0, 400, 900]  # 10 steps: t = 900 - 100 k, flipped to clean first
    first, second = summary["prompts"]
    assert first["matching"].startswith("nearest") and len(first["target_points"]) == 2
    assert second["matching"].startswith("top-5") and len(second["source_points"]) <= 5
    for name in ("000_a.png", "000_b.png", "000_matches.png", "001_matches.png"):
        assert Image.open(out / name).size[0] >= 64
    maps = load_file(out / "001_descriptors.safetensors")
    assert maps["a"].shape == (32, 16, 16)
    assert not torch.equal(maps["a"], maps["b"])  # two images from different noise
    # the mutual nearest neighbours: each pair is the argmax in both directions
    i, j, _ = mutual_nearest_neighbours(maps["a"], maps["b"], 5)
    a = torch.nn.functional.normalize(maps["a"].flatten(1).T, dim=1)
    b = torch.nn.functional.normalize(maps["b"].flatten(1).T, dim=1)
    sim = a @ b.T
    for x, y in zip(i, j):
        assert int(sim[x].argmax()) == y and int(sim[:, y].argmax()) == x


def test_generate_refuses_one_step_and_reads_text_prompts(tmp_path):
    from corrbench_dhf.generate import generate, read_prompts

    p = tmp_path / "p.txt"
    p.write_text("# comment\na cat\n\nphoto of a bird\n")
    assert [s.prompt for s in read_prompts(p)] == ["a cat", "photo of a bird"]
    with pytest.raises(UsageError, match="one-step"):
        generate(p, tmp_path / "o", method="dhf-one-step")
