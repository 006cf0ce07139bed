"""The SD descriptors (sd-layer-4, sd-concat-all, sd-layer) on a tiny random-weight SD folder.

Each descriptor is checked against the extractor's own per-layer features (whose semantics
tests/test_sd_extractor.py checks against independent references), then end to end through the
core runner and ``corrbench extract``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402

import corrbench_sd  # noqa: E402
from corrbench.api import FeatureGrid  # noqa: E402
from corrbench.config import resolve_overrides  # noqa: E402
from corrbench.errors import UsageError  # noqa: E402
from corrbench.plugins import PluginHost  # noqa: E402
from corrbench.testing.sd import make_tiny_sd  # noqa: E402
from corrbench_sd.extractor import LAYERS, PAPER_SAVE_INDICES  # noqa: E402
from corrbench_sd.methods import SD_SHARED_KEYS, SDConcatAll, SDLayer, SDLayer4, make_extractor  # noqa: E402

SMALL = {"image_size": 64}  # 8 × 8 latents: fast CPU inversion


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd-methods") / "sd", seed=3)


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))


def cfg(tiny, **kw):
    return {"model": str(tiny), **SMALL, **kw}


def per_layer(tiny, images, save_indices, layers=LAYERS, **kw):
    ex = make_extractor({**SDLayer.default_config, **cfg(tiny, **kw)}, "cpu")
    got = {}
    with torch.inference_mode():
        ex.invert(images, save_indices=save_indices, layers=layers,
                  consume=lambda s, l, f: got.__setitem__((s, l), f.clone()))
    return got


def test_registered_lazily_with_the_sd_extra():
    host = PluginHost()
    host.register_plugin(corrbench_sd, "sd-under-test")
    for name, cls in (("sd-layer-4", SDLayer4), ("sd-concat-all", SDConcatAll), ("sd-layer", SDLayer)):
        entry = host.methods.entry(name)
        assert entry.lazy and entry.extras == ("sd",) and entry.description
        assert entry.load() is cls and cls.name == name
    # listing must not import torch or diffusers
    code = "import sys, corrbench_sd; assert 'torch' not in sys.modules and 'diffusers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sd_layer_4_is_the_clean_pass_of_block_1_0(tiny, images):
    d = SDLayer4(config=cfg(tiny))
    assert d.preprocessing().load_size == 224 and d.preprocessing().resize == "square"
    assert d.preprocessing().resample == "bilinear" and d.cache_dtype == "float16"
    out = d.describe(images)
    expected = per_layer(tiny, images, (49,), layers=[(1, 0)])[(0, 0)]
    assert out.shape == (2, 12, 64, 64)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert d.feature_grid((224, 224), (64, 64)) == FeatureGrid.spanning((224, 224), (64, 64))
    info = d.run_info()
    assert info["hook"] == "up_blocks.1.resnets.0.conv2" and info["step_index"] == 49 and info["timestep"] == -1


def test_sd_layer_any_block_and_timestep(tiny, images):
    d = SDLayer(config=cfg(tiny, block="(2, 1)", timestep=60))
    out = d.describe(images)
    # timestep 60 is inversion index 45 (docs/methods.md#ddim-inversion)
    expected = per_layer(tiny, images, (45,), layers=[(2, 1)])[(0, 0)]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with pytest.raises(UsageError, match="timestep 61 is not a UNet timestep"):
        SDLayer(config=cfg(tiny, timestep=61))
    with pytest.raises(UsageError, match=r"sd-layer.block='top': expected an \(up_block, resnet\) pair"):
        SDLayer(config=cfg(tiny, block="top"))
    with pytest.raises(UsageError, match=r"\(5, 0\) does not exist"):
        SDLayer(config=cfg(tiny, block=[5, 0])).describe(images)
    with pytest.raises(UsageError, match="no config key"):
        SDLayer4(config={"timesteps": 3})


@pytest.mark.parametrize("normalize", [False, True])
def test_concat_all_layout(tiny, images, normalize):
    d = SDConcatAll(config=cfg(tiny, normalize=normalize))
    out = d.describe(images)
    feats = per_layer(tiny, images, (49,))
    channels = [feats[(0, l)].shape[1] for l in range(12)]
    assert out.shape == (2, sum(channels), 64, 64) and sum(channels) == 120
    c0 = 0
    for l, c in enumerate(channels):  # layer 1 first, (3, 2) last
        expected = F.normalize(feats[(0, l)], dim=1) if normalize else feats[(0, l)]
        torch.testing.assert_close(out[:, c0:c0 + c], expected, rtol=1e-6, atol=1e-6)
        c0 += c
    if normalize:
        starts = [sum(channels[:n]) for n in range(12)]
        norms = torch.stack([out[:, a:a + c].norm(dim=1) for a, c in zip(starts, channels)])
        torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-5, atol=1e-5)
    with pytest.raises(UsageError, match="normalize"):
        SDConcatAll(config=cfg(tiny, normalize="maybe"))


def test_extract_raw_is_the_aggregation_network_input(tiny, images):
    d = SDConcatAll(config=cfg(tiny))
    with torch.inference_mode():
        raw = d.extract_raw(images)
    assert raw.shape == (2, 11, 120, 64, 64) and raw.dtype == torch.float32 and raw.device.type == "cpu"
    feats = per_layer(tiny, images, PAPER_SAVE_INDICES)
    for s in range(11):  # saved steps in the paper's order, clean first
        torch.testing.assert_close(raw[:, s], torch.cat([feats[(s, l)] for l in range(12)], dim=1),
                                   rtol=1e-6, atol=1e-6, msg=f"slot {s}")
    torch.testing.assert_close(raw[:, 0], d.describe(images), rtol=1e-6, atol=1e-6)
    # sd.raw_indices picks other steps; an index outside the schedule is a usage error
    small = SDLayer4(config=cfg(tiny, raw_indices=[49, 0]))
    with torch.inference_mode():
        assert small.extract_raw(images[:1]).shape == (1, 2, 120, 64, 64)
    with pytest.raises(UsageError, match="outside 0..49"):
        SDLayer4(config=cfg(tiny, raw_indices=[50]))


def test_shared_sd_namespace():
    methods = {"sd-layer-4": SDLayer4, "sd-concat-all": SDConcatAll}
    assert {"model", "weights", "dtype", "latent", "seed", "num_steps", "image_size", "load_size"} <= set(SD_SHARED_KEYS)
    for cls in (SDLayer4, SDConcatAll, SDLayer):
        assert set(SD_SHARED_KEYS) <= set(cls.default_config) and cls.config_namespaces == {"sd": SD_SHARED_KEYS}
    cfgs, _ = resolve_overrides({"sd.model": "/m", "sd.seed": 1, "sd-layer-4.seed": 3}, methods)
    assert cfgs["sd-layer-4"] == {"model": "/m", "seed": 3}
    assert cfgs["sd-concat-all"] == {"model": "/m", "seed": 1}
    with pytest.raises(UsageError, match="namespace 'sd' has no key 'modle'"):
        resolve_overrides({"sd.modle": "/m"}, methods)


def test_weights_identity_and_run_info(tiny, images):
    a = SDLayer4(config=cfg(tiny))
    assert a.weights_identity() == SDConcatAll(config=cfg(tiny)).weights_identity()
    assert a.weights_identity() != SDLayer4(config=cfg(tiny, weights="random")).weights_identity()
    other = make_tiny_sd(tiny.parent / "other", seed=4)
    assert SDLayer4(config=cfg(other)).weights_identity() != a.weights_identity()
    a.describe(images[:1])
    info = a.run_info()
    assert info["dtype"] == "float32" and info["latent_scaling"] == pytest.approx(0.18215)


def test_run_end_to_end_on_synthetic(tiny, tmp_path):
    from corrbench.runner import run_benchmark

    result = run_benchmark(methods="sd-layer-4,sd-concat-all", dataset="synthetic",
                           data_root=tmp_path / "data", overrides={"sd.model": str(tiny)}, limit=2,
                           out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    methods = result.results["methods"]
    assert set(methods) == {"sd-layer-4", "sd-concat-all"}
    assert methods["sd-layer-4"]["config"]["model"] == str(tiny)
    assert methods["sd-layer-4"]["info"]["hook"] == "up_blocks.1.resnets.0.conv2"
    assert methods["sd-concat-all"]["weights"] == methods["sd-layer-4"]["weights"]
    assert (tmp_path / "out" / "results.json").is_file()
    values = result.summary["value"]
    assert ((values >= 0) & (values <= 100)).all()


def _write_images(folder):
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    for name, (w, h) in (("cat", (50, 40)), ("dog", (31, 64))):
        arr = (torch.rand(h, w, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(folder / f"{name}.png")


def test_corrbench_extract_writes_descriptors_and_raw(tiny, tmp_path):
    from corrbench.cli import cli

    _write_images(tmp_path / "imgs")
    runner = CliRunner()
    out = tmp_path / "desc.safetensors"
    res = runner.invoke(cli, ["extract", "--method", "sd-layer-4", "--images", str(tmp_path / "imgs"), "--out", str(out),
                              "--set", f"sd.model={tiny}", "--set", "sd.image_size=64"])
    assert res.exit_code == 0, res.output
    with safe_open(str(out), "pt") as f:
        assert sorted(f.keys()) == ["cat", "dog"]
        assert f.get_tensor("cat").shape == (12, 64, 64)
        meta = f.metadata()
    assert meta["method"] == "sd-layer-4" and json.loads(meta["config"])["image_size"] == 64

    raw = tmp_path / "raw.safetensors"
    res = runner.invoke(cli, ["extract", "--method", "sd-concat-all", "--images", str(tmp_path / "imgs"), "--out",
                              str(raw), "--raw", "--set", f"sd.model={tiny}", "--set", "sd.image_size=64",
                              "--set", "sd.raw_indices=[49,45]"])
    assert res.exit_code == 0, res.output
    with safe_open(str(raw), "pt") as f:
        cat = f.get_tensor("cat")
    assert cat.shape == (2, 120, 64, 64)
    with safe_open(str(out), "pt") as f:  # slot 0, channels of layer 4 = the sd-layer-4 descriptor
        torch.testing.assert_close(cat[0, 48:60], f.get_tensor("cat"), rtol=1e-5, atol=1e-5)
