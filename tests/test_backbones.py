"""``timm:<model>`` and ``hf:<repo>``: method families, listing, settings, references and errors.

Every model is tiny and random (timm architectures with a small ``model_args`` override, transformers
configs with hidden size 32 saved with ``save_pretrained``); nothing is downloaded (HF_HUB_OFFLINE=1).
The references recompute features in float64 by running the network's modules directly and
reshaping tokens with explicit indexing, then compare them with what corrbench returns.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import corrbench
from corrbench.errors import UnknownMethodError, UsageError, WeightsError
from corrbench.plugins import PluginHost, get_host
from corrbench.testing import invoke_cli
from corrbench_backbones.hf_family import save_tiny

TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp / "hf-home"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               TQDM_DISABLE="1")
    return env


def _cli(tmp: Path, *args: str):
    proc = subprocess.run([sys.executable, "-m", "corrbench", *args], capture_output=True, text=True,
                          env=_env(tmp), timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def _one_line_error(stderr: str) -> str:
    errors = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("backbones")


@pytest.fixture(scope="module")
def reg_dir(work):
    """A tiny DINOv2-with-registers folder, with its own normalisation in preprocessor_config.json."""
    folder = save_tiny(work / "tiny-dinov2-reg", "Dinov2WithRegistersConfig", 14, 56)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": MEAN, "image_std": STD}))
    return folder


@pytest.fixture(scope="module")
def images(work):
    """Two smooth 56×56 images on disk (already at the input size, so no resampling is involved)."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:56, 0:56]
    paths = []
    for k in range(2):
        img = np.zeros((56, 56, 3))
        for _ in range(5):
            cx, cy, r = rng.uniform(0, 56, 2).tolist() + [rng.uniform(4, 12)]
            img += rng.uniform(0, 1, 3) * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * r * r))[..., None]
        path = work / f"img{k}.png"
        Image.fromarray(np.clip(img / img.max() * 255, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def _pixels(paths) -> torch.Tensor:
    """Images as a float64 B×3×H×W batch in [0, 1], read with PIL and numpy only."""
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255.0 for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _normalised(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)) / torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)


def _grid_by_hand(tokens: torch.Tensor, n_prefix: int, h: int, w: int) -> torch.Tensor:
    """B×N×C tokens → B×C×h×w by explicit indexing: patch (i, j) is token ``n_prefix + i*w + j``."""
    B, _, C = tokens.shape
    out = torch.empty(B, C, h, w, dtype=tokens.dtype)
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = tokens[:, n_prefix + i * w + j]
    return out


def _close(a: torch.Tensor, b: torch.Tensor, bound: float = 1e-4) -> None:
    """Equal up to float32 round-off, measured on the whole map (float64 reference)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    relative = float((a.double() - b.double()).norm() / b.double().norm())
    assert relative < bound, relative


def _method(name: str, **config):
    return get_host().methods.entry(name).load()(config=config, device="cpu")


def _timm_reg(**config):
    return _method("timm:vit_small_patch14_reg4_dinov2", weights="random", model_args=TINY_VIT, resolution=56,
                   **config)


def _timm_blocks_by_hand(model, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(input, output) tokens of every block of a timm ViT, run module by module."""
    t = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    ins, outs = [], []
    for block in model.blocks:
        ins.append(t)
        t = block(t)
        outs.append(t)
    return ins, outs


# ----------------------------------------------------------------------------------------------
# Registry: families
# ----------------------------------------------------------------------------------------------
class _Toy(corrbench.Descriptor):
    def extract(self, images):
        return images.mean(dim=1, keepdim=True)


class _ToyFamily:
    known = ("alpha", "beta", "gamma")

    def build(self, suffix):
        if suffix not in self.known:
            raise UsageError(f"unknown toy {suffix!r}")
        return type(f"toy:{suffix}", (_Toy,), {"name": f"toy:{suffix}"})

    def members(self, pattern, limit):
        import fnmatch

        names = [f"toy:{n}" for n in self.known if fnmatch.fnmatchcase(f"toy:{n}", pattern)]
        return [(n, "a toy") for n in names[:limit]], len(names)


def _toy_host(monkeypatch, *registrations):
    def register_methods(register):
        for args, kwargs in registrations:
            register(*args, **kwargs)

    mod = types.ModuleType("toy_plugin")
    mod.register_methods = corrbench.hookimpl(register_methods)
    ep = types.SimpleNamespace(name="toy", value="toy_plugin", load=lambda: mod,
                               dist=types.SimpleNamespace(metadata={"Name": "toy-dist"}, version="1"))
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [ep] if group == "corrbench" else [])
    host = PluginHost()
    host.load_entry_points()
    return host


def test_family_builds_a_class_named_exactly_like_the_member(monkeypatch):
    host = _toy_host(monkeypatch, (("toy:*", _ToyFamily()), {"description": "toys", "featured": {"toy:alpha": "A"}}))
    assert host.methods.names() == ["toy:alpha"]  # featured: listed and covered by the conformance suite
    cls = host.methods.get("toy:beta")
    assert cls.name == "toy:beta" and host.methods.get("toy:beta") is cls  # one class per name
    assert "toy:gamma" in host.methods and "toy:" not in host.methods and "other" not in host.methods
    with pytest.raises(UsageError, match="unknown toy 'delta'"):
        host.methods.entry("toy:delta")
    with pytest.raises(UnknownMethodError) as info:
        host.methods.entry("toi:alpha")
    assert "toy:alpha" in str(info.value)  # the close match is suggested


def test_family_listing_caps_members_and_shows_the_family_row(monkeypatch):
    host = _toy_host(monkeypatch, (("toy:*", _ToyFamily()), {"description": "toys"}))
    entries, notes = host.methods.listing()
    assert [e.name for e in entries] == ["toy:*"] and not notes
    entries, notes = host.methods.listing("toy:*", limit=2)
    assert [e.name for e in entries] == ["toy:alpha", "toy:beta"]
    assert notes == ["... 1 more toy:* names match 'toy:*'; narrow the pattern"]
    entries, _ = host.methods.listing("toy:g*")
    assert [(e.name, e.description) for e in entries] == [("toy:gamma", "a toy")]


def test_overlapping_families_and_misplaced_featured_names_are_refused(monkeypatch):
    with pytest.warns(Warning, match="overlaps 'toy:\\*'"):
        host = _toy_host(monkeypatch, (("toy:*", _ToyFamily()), {}), (("toy:x*", _ToyFamily()), {}))
    assert [e.name for e in host.methods.families()] == ["toy:*"]
    with pytest.warns(Warning, match="does not start with 'toy:'"):
        host = _toy_host(monkeypatch, (("toy:*", _ToyFamily()), {"featured": ("other",)}))
    assert "toy:alpha" not in host.methods.names()
    with pytest.warns(Warning, match="featured= is only for a family"):
        _toy_host(monkeypatch, (("plain", _Toy), {"featured": ("x",)}))


# ----------------------------------------------------------------------------------------------
# timm: reference, registers, facets, CNN stages, preprocessing
# ----------------------------------------------------------------------------------------------
def test_timm_vit_matches_a_float64_reference_with_registers_dropped(images):
    d = _timm_reg(layers=[0, -1])
    assert d.preprocessing().load_size == 56 and d.preprocessing().mean == (0.485, 0.456, 0.406)
    out = d.describe(_pixels(images).float())
    model = copy.deepcopy(d.model).double()
    assert model.num_prefix_tokens == 5  # CLS + 4 registers
    x = _normalised(_pixels(images), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with torch.no_grad():
        _, outs = _timm_blocks_by_hand(model, x)
    expected = torch.cat([_grid_by_hand(outs[0], 5, 4, 4), _grid_by_hand(outs[1], 5, 4, 4)], dim=1)
    _close(out, expected)
    # keeping the prefix tokens appends their mean to every cell
    kept = _timm_reg(drop_registers=False).describe(_pixels(images).float())
    assert kept.shape[1] == 64
    _close(kept[:, :32], expected[:, 32:])
    _close(kept[:, 32:], outs[1][:, :5].mean(dim=1)[:, :, None, None].expand(-1, -1, 4, 4))
    # L2 per layer: each layer's 32 channels have unit norm in every cell
    l2 = _timm_reg(layers=[0, 1], l2_per_layer=True).describe(_pixels(images).float())
    _close(l2, torch.cat([F.normalize(expected[:, :32], dim=1), F.normalize(expected[:, 32:], dim=1)], dim=1))


@pytest.mark.parametrize("facet", ["query", "key", "value"])
def test_timm_facet_hooks_equal_a_manual_qkv_projection(images, facet):
    d = _timm_reg(layers=[1], facet=facet)
    out = d.describe(_pixels(images).float())
    model = copy.deepcopy(d.model).double()
    x = _normalised(_pixels(images), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with torch.no_grad():
        ins, _ = _timm_blocks_by_hand(model, x)
        block, part = model.blocks[1], ("query", "key", "value").index(facet)
        weight = block.attn.qkv.weight[part * 32:(part + 1) * 32]
        bias = block.attn.qkv.bias[part * 32:(part + 1) * 32]
        projected = block.norm1(ins[1]) @ weight.T + bias
    _close(out, _grid_by_hand(projected, 5, 4, 4))


def test_timm_patch14_input_is_resized_to_a_multiple_of_the_patch():
    d = _method("timm:vit_small_patch14_dinov2", weights="random", model_args=TINY_VIT, resolution=50)
    prep = d.preprocessing()
    assert prep.load_size == 56 and prep.resize == "square"  # 50 px → nearest multiple of 14
    out = d.describe(torch.rand(1, 3, 56, 56))
    assert out.shape == (1, 32, 4, 4)
    grid = d.feature_grid((56, 56), (4, 4))
    assert (grid.stride_x, grid.offset_x) == (14.0, 6.5)  # cell = centre of its 14-pixel patch
    assert _method("timm:vit_small_patch14_dinov2", weights="random", resolution=60).preprocessing().load_size == 56
    # the model's own input size when resolution is 0 (DINOv2 in timm: 518)
    assert _method("timm:vit_small_patch14_dinov2", weights="random").preprocessing().load_size == 518


@pytest.mark.parametrize("name", ["timm:vit_small_patch14_reg4_dinov2", "hf:facebook/dinov2-with-registers-small",
                                  "hf:openai/clip-vit-base-patch16"])
def test_other_input_sizes_keep_the_patch_grid(name, work):
    """A protocol may feed 768 or 840 px: the map is floor(H/p) × floor(W/p), the rest of a side is ignored."""
    cls = get_host().methods.entry(name).load()
    d = cls(config=cls.tiny_config(work), device="cpu")
    p = d.patch_size()
    x = torch.rand(1, 3, 5 * p + 3, 6 * p + p - 1, generator=torch.Generator().manual_seed(0))
    out = d.describe(x)
    assert out.shape[-2:] == (5, 6)
    grid = d.feature_grid(tuple(x.shape[-2:]), (5, 6))
    assert (grid.stride_x, grid.stride_y, grid.offset_x) == (p, p, (p - 1) / 2)
    _close(out, d.describe(x[..., :5 * p, :6 * p].contiguous()), 1e-5)


def test_timm_cnn_stages_are_resized_to_the_finest_and_facets_are_refused():
    d = _method("timm:resnet50", weights="random", model_args={"layers": [1, 1, 1, 1]}, resolution=64,
                layers=[-2, -1])
    x = torch.rand(1, 3, 64, 64)
    out = d.describe(x)
    assert out.shape == (1, 1024 + 2048, 4, 4)
    stages = d.model(d._normalise(x))  # features_only: the two requested stages (strides 16 and 32)
    _close(out[:, :1024], stages[0])
    _close(out[:, 1024:], F.interpolate(stages[1], size=(4, 4), mode="bilinear", align_corners=False))
    with pytest.raises(UsageError, match="facet='key' needs attention blocks"):
        _method("timm:resnet50", weights="random", facet="key").describe(torch.rand(1, 3, 64, 64))
    with pytest.raises(UsageError, match="the model has 5 blocks"):
        _method("timm:resnet50", weights="random", layers=[7]).describe(torch.rand(1, 3, 64, 64))


def test_timm_weights_identity_random_is_a_seeded_state_dict_digest():
    a, b = _timm_reg(), _timm_reg()
    assert a.weights_identity() == b.weights_identity() and a.weights_identity().startswith("state-dict:")
    other = _method("timm:vit_small_patch14_reg4_dinov2", weights="random",
                    model_args={**TINY_VIT, "depth": 3}, resolution=56)
    assert other.weights_identity() != a.weights_identity()


def _fake_hub_snapshot(cache: Path, repo: str, files: dict[str, bytes], commit: str = "ab" * 20) -> None:
    """A Hugging Face cache entry laid out as huggingface_hub writes it (refs/main → snapshots/<commit>)."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)


def test_timm_pretrained_identity_is_the_cached_hub_commit(monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    d = _method("timm:vit_small_patch14_dinov2")
    assert d.requirements()[0].status in ("missing", "download")  # HF_HUB_OFFLINE=1 in tests: missing
    _fake_hub_snapshot(tmp_path, "timm/vit_small_patch14_dinov2.lvd142m", {"config.json": b"{}",
                                                                            "model.safetensors": b"x"})
    assert d.weights_identity() == "hub:timm/vit_small_patch14_dinov2.lvd142m@" + "ab" * 20  # nothing loaded
    assert d.model is None and d.requirements()[0].status == "present"
    assert _method("timm:vit_small_patch14_dinov2", weights="random").requirements()[0].status == "not needed"


def test_timm_pretrained_offline_is_one_weights_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    d = _method("timm:vit_small_patch14_dinov2", model_args=TINY_VIT, resolution=56)
    with pytest.raises(WeightsError, match=r"hf download timm/vit_small_patch14_dinov2\.lvd142m.*timm\.weights=random"):
        d.describe(torch.rand(1, 3, 56, 56))


def test_timm_unknown_names_suggest_close_matches():
    with pytest.raises(UsageError, match="close matches: timm:vit_small_patch14_dinov2"):
        get_host().methods.entry("timm:vit_smal_patch14_dinov2")
    with pytest.raises(UsageError, match="has no pretrained tag 'nope'; tags: lvd142m"):
        get_host().methods.entry("timm:vit_small_patch14_dinov2.nope")
    assert get_host().methods.get("timm:vit_small_patch14_dinov2.lvd142m").timm_name == "vit_small_patch14_dinov2.lvd142m"


# ----------------------------------------------------------------------------------------------
# transformers: reference, facets, towers, identity, remote code
# ----------------------------------------------------------------------------------------------
def _hf_reference(folder: Path, paths, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states of ``layer``, its input) from the saved model in float64, via output_hidden_states."""
    import transformers

    model = transformers.AutoModel.from_pretrained(folder).double().eval()
    x = _normalised(_pixels(paths), MEAN, STD)
    with torch.no_grad():
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
    return hidden[layer + 1], hidden[layer], model


def test_hf_model_matches_a_float64_reference_with_registers_dropped(reg_dir, images):
    d = _method(f"hf:{reg_dir}", layers=[0])
    assert d.preprocessing().mean == MEAN and d.preprocessing().std == STD and d.preprocessing().load_size == 56
    assert d.num_prefix_tokens() == 5  # CLS + 4 registers
    out = d.describe(_pixels(images).float())
    tokens, _, _ = _hf_reference(reg_dir, images, 0)
    _close(out, _grid_by_hand(tokens, 5, 4, 4))


@pytest.mark.parametrize("facet", ["key", "value"])
def test_hf_facet_hooks_equal_a_manual_projection(reg_dir, images, facet):
    out = _method(f"hf:{reg_dir}", layers=[1], facet=facet).describe(_pixels(images).float())
    _, layer_in, model = _hf_reference(reg_dir, images, 1)
    layer = model.encoder.layer[1]
    proj = {"key": layer.attention.k_proj, "value": layer.attention.v_proj}[facet]
    with torch.no_grad():
        projected = layer.norm1(layer_in) @ proj.weight.T + proj.bias
    _close(out, _grid_by_hand(projected, 5, 4, 4))


def test_hf_clip_checkpoint_uses_its_vision_tower_and_siglip_has_no_cls(work):
    import transformers

    text = transformers.CLIPTextConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, vocab_size=99, bos_token_id=0,
                                       eos_token_id=1, pad_token_id=1)
    vision = transformers.CLIPVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64, patch_size=16, image_size=64)
    folder = work / "tiny-clip-full"
    transformers.CLIPModel(transformers.CLIPConfig(text_config=text.to_dict(),
                                                   vision_config=vision.to_dict())).save_pretrained(folder)
    d = _method(f"hf:{folder}")
    assert d.patch_size() == 16 and d.preprocessing().load_size == 64
    assert d.preprocessing().mean[0] == pytest.approx(0.48145466)  # CLIP's own normalisation
    assert d.describe(torch.rand(1, 3, 64, 64)).shape == (1, 32, 4, 4)
    assert type(d.model).__name__.startswith("CLIPVision") and not hasattr(d.model, "text_model")
    siglip = _method(f"hf:{save_tiny(work / 'tiny-siglip', 'SiglipVisionConfig', 16, 64)}")
    assert siglip.num_prefix_tokens() == 0 and siglip.describe(torch.rand(1, 3, 64, 64)).shape == (1, 32, 4, 4)


def test_hf_weights_identity_folder_digest_and_hub_revision(reg_dir, work, monkeypatch, tmp_path):
    d = _method(f"hf:{reg_dir}")
    assert d.weights_identity().startswith("files:model.safetensors=")
    assert _method(f"hf:{reg_dir}", weights="random").weights_identity().startswith("state-dict:")
    # a hub id is identified by the commit of the cached snapshot
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert _method("hf:org/tiny").requirements()[0].status == "missing"
    _fake_hub_snapshot(cache, "org/tiny", {n: (reg_dir / n).read_bytes() for n in ("config.json", "model.safetensors")})
    hub = _method("hf:org/tiny")
    assert hub.weights_identity() == "hub:org/tiny@" + "ab" * 20
    assert hub.requirements()[0].status == "present"
    assert hub.describe(torch.rand(1, 3, 56, 56)).shape == (1, 32, 4, 4)


def test_hf_missing_model_and_bad_names_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(WeightsError, match="not in the local Hugging Face cache.*hf download org/absent"):
        _method("hf:org/absent").preprocessing()
    with pytest.raises(UsageError, match="expected hf:<org>/<repo>"):
        get_host().methods.entry("hf:no-slash")
    with pytest.raises(WeightsError, match="no config.json"):
        _method(f"hf:{tmp_path}").preprocessing()


def test_hf_remote_code_is_refused_unless_trusted(reg_dir, tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    config = json.loads((reg_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling.M"}}))
    with pytest.raises(UsageError, match="hf.trust_remote_code=true"):
        _method(f"hf:{folder}").preprocessing()
    assert _method(f"hf:{folder}", trust_remote_code=True).preprocessing().load_size == 56


# ----------------------------------------------------------------------------------------------
# Through the command line
# ----------------------------------------------------------------------------------------------
def test_cli_extract_equals_the_float64_references(reg_dir, images, work):
    from safetensors.torch import load_file

    out = work / "hf.safetensors"
    code, _, stderr = _cli(work, "extract", "-m", f"hf:{reg_dir}", "--images", *map(str, images), "--out", str(out),
                           "--device", "cpu", "-q", "--set", f"hf:{reg_dir}.layers=-1")
    assert code == 0, stderr
    tokens, _, _ = _hf_reference(reg_dir, images, 1)
    got = load_file(out)
    _close(torch.stack([got["img0"], got["img1"]]), _grid_by_hand(tokens, 5, 4, 4))

    out = work / "timm.safetensors"
    code, _, stderr = _cli(work, "extract", "-m", "timm:vit_small_patch14_reg4_dinov2", "--images",
                           *map(str, images), "--out", str(out), "--device", "cpu", "-q",
                           "--set", "timm.weights=random", "--set", "timm.resolution=56",
                           "--set", "timm.model_args=" + json.dumps(TINY_VIT),
                           "--set", "timm:vit_small_patch14_reg4_dinov2.layers=0,1")
    assert code == 0, stderr
    d = _timm_reg()  # the same seeded weights as the subprocess
    d.ensure_ready()
    model = copy.deepcopy(d.model).double()
    x = _normalised(_pixels(images), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with torch.no_grad():
        _, outs = _timm_blocks_by_hand(model, x)
    expected = torch.cat([_grid_by_hand(outs[0], 5, 4, 4), _grid_by_hand(outs[1], 5, 4, 4)], dim=1)
    got = load_file(out)
    _close(torch.stack([got["img0"], got["img1"]]), expected)


@pytest.mark.slow
def test_cli_run_timm_vit_timm_cnn_and_hf_folder_end_to_end(reg_dir, work):
    out = work / "run"
    code, stdout, stderr = _cli(
        work, "run", "-m", f"timm:vit_small_patch14_dinov2,timm:convnext_tiny,hf:{reg_dir}", "--dataset", "synthetic",
        "--limit", "4", "--device", "cpu", "--out", str(out), "--quiet",
        "--set", "timm.weights=random", "--set", "timm.resolution=50",
        "--set", "timm:vit_small_patch14_dinov2.model_args=" + json.dumps(TINY_VIT),
        "--set", 'timm:convnext_tiny.model_args={"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}',
        "--set", f"hf:{reg_dir}.facet=key")
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    methods = results["methods"]
    assert set(methods) == {"timm:vit_small_patch14_dinov2", "timm:convnext_tiny", f"hf:{reg_dir}"}
    vit = methods["timm:vit_small_patch14_dinov2"]
    assert vit["config"]["resolution"] == 50 and vit["config"]["weights"] == "random"
    assert methods[f"hf:{reg_dir}"]["config"]["facet"] == "key"
    text = json.dumps(results)
    assert "files:model.safetensors=" in text and "state-dict:" in text


def test_cli_list_shows_tags_and_licence_and_caps():
    code, stdout, stderr = invoke_cli(["list", "methods", "timm:vit_small_patch14*"])
    assert code == 0, stderr
    line = next(l for l in stdout.splitlines() if l.strip().startswith("timm:vit_small_patch14_dinov2 "))
    assert "tags: lvd142m" in line and "licence: apache-2.0" in line
    assert "DINOv2 ViT-S/14 (timm)" in line  # a featured name keeps its own description too
    code, stdout, _ = invoke_cli(["list", "methods", "timm:*"])
    rows = [l for l in stdout.splitlines() if l.strip().startswith("timm:")]
    assert 5 <= len(rows) <= 45 and "more timm:* names match 'timm:*'; narrow the pattern" in stdout
    code, stdout, _ = invoke_cli(["list", "methods"])
    rows = [l.split()[0] for l in stdout.splitlines()[1:]]
    assert {"timm:*", "hf:*", "timm:vit_small_patch14_dinov2", "hf:facebook/dinov2-small"} <= set(rows)


def test_cli_errors_are_one_line(reg_dir, tmp_path, monkeypatch):
    code, _, stderr = invoke_cli(["run", "-m", "timm:vit_smal_patch14_dinov2", "--dataset", "synthetic",
                                  "--limit", "1"])
    assert code == 2 and "close matches: timm:vit_small_patch14_dinov2" in _one_line_error(stderr)
    folder = tmp_path / "remote"
    folder.mkdir()
    config = json.loads((reg_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling.M"}}))
    code, _, stderr = invoke_cli(["extract", "-m", f"hf:{folder}", "--images", str(tmp_path), "--out",
                                  str(tmp_path / "x.safetensors"), "--device", "cpu"])
    assert code == 2 and "hf.trust_remote_code=true" in _one_line_error(stderr)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    code, _, stderr = invoke_cli(["run", "-m", "hf:facebook/dinov2-small", "--dataset", "synthetic", "--limit", "1",
                                  "--device", "cpu", "--no-cache"])
    assert code == 1 and "hf download facebook/dinov2-small" in _one_line_error(stderr)
    code, _, stderr = invoke_cli(["run", "-m", "timm:resnet50", "--dataset", "synthetic", "--limit", "1",
                                  "--set", "timm:resnet50.facet=keys"])
    assert code == 2 and "timm:resnet50.facet" in _one_line_error(stderr)
    code, _, stderr = invoke_cli(["run", "-m", "timm:resnet50", "--dataset", "synthetic", "--limit", "1",
                                  "--set", "timm.layers=1,x"])
    assert code == 2 and "comma list such as 8,11" in _one_line_error(stderr)


def test_featured_hf_repo_runs_with_random_weights_offline(tmp_path):
    """The done-when run: both families by their real names, random weights, no hub and no config download."""
    import json as _json
    import os as _os
    import subprocess as _sp
    import sys as _sys

    env = {**_os.environ, "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(tmp_path / "xdg"),
           "HF_HOME": str(tmp_path / "hf-empty")}
    out = tmp_path / "run"
    proc = _sp.run([_sys.executable, "-m", "corrbench", "run", "-m",
                    "timm:vit_small_patch14_dinov2,hf:facebook/dinov2-small", "--set", "timm.weights=random",
                    "--set", "hf.weights=random", "--set", "timm.resolution=112", "--set", "hf.resolution=112",
                    "--limit", "1", "--resamples", "100", "--out", str(out), "--no-cache"],
                   capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    res = _json.loads((out / "results.json").read_text())
    info = res["methods"]["hf:facebook/dinov2-small"]
    assert info["weights"].startswith("state-dict:")  # seeded random weights, keyed by their digest
    written = _json.loads((tmp_path / "xdg" / "corrbench" / "hf-architectures" / "facebook--dinov2-small"
                           / "config.json").read_text())
    assert (written["hidden_size"], written["num_hidden_layers"], written["patch_size"]) == (384, 12, 14)
