"""SD+DINO (``sd-dino``): each extraction step against an independent float64 computation, the per-image
maps of ``corrbench extract`` against plain diffusers/timm modules in float64, and an end-to-end
``corrbench run`` on the synthetic dataset (tiny random SD and ViT).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("timm")

import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402

from corrbench.testing.sd import make_tiny_sd  # noqa: E402

LOAD, SIZE, DINO = 32, 128, 112  # load frame, SD input (16 × 16 latents), DINO input (8 × 8 tokens)
ARCH = {"embed_dim": 16, "depth": 2, "num_heads": 2}
TOLERANCE = 1e-4


def abar64(t: int) -> float:
    lo, hi = 0.00085 ** 0.5, 0.012 ** 0.5
    return float(np.prod([1.0 - (lo + i * (hi - lo) / 999) ** 2 for i in range(t + 1)], dtype=np.float64))


def bilinear_np(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """C × h × w → C × H × W, half-pixel centres (align_corners=False), edges clamped: written out by hand."""
    C, h, w = x.shape
    H, W = size

    def axis(n_out, n_in):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, wy = axis(H, h)
    x0, x1, wx = axis(W, w)
    top = x[:, y0][:, :, x0] * (1 - wx) + x[:, y0][:, :, x1] * wx
    bottom = x[:, y1][:, :, x0] * (1 - wx) + x[:, y1][:, :, x1] * wx
    return top * (1 - wy)[None, :, None] + bottom * wy[None, :, None]


# ------------------------------------------------------------------------------------------------
# each step, against numpy in float64
# ------------------------------------------------------------------------------------------------
def test_pack_unpack_is_lossless():
    from corrbench_sd.sd_dino import pack, unpack

    g = torch.Generator().manual_seed(0)
    s5, s4, s3, d = (torch.randn(1, c, n, n, generator=g) for c, n in ((32, 2), (8, 4), (5, 8), (7, 8)))
    packed = pack(s5, s4, s3, d)
    assert packed.shape == (1, 2 + 2 + 5 + 7, 8, 8)
    for got, want in zip(unpack(packed[0], (32, 8, 5, 7)), (s5, s4, s3, d)):
        assert torch.equal(got, want[0])


def test_co_pca_matches_numpy_svd():
    from corrbench_sd.sd_dino import co_pca

    rng = np.random.default_rng(1)
    # tokens with a clear spectrum, so the leading directions are well defined
    basis = rng.standard_normal((6, 10)) * np.array([9, 7, 5, 3, 2, 1.0])[:, None]
    a = (rng.standard_normal((4 * 5, 6)) @ basis + 3.0).T.reshape(10, 4, 5)
    b = (rng.standard_normal((3 * 3, 6)) @ basis - 1.0).T.reshape(10, 3, 3)
    X = np.concatenate([a.reshape(10, -1).T, b.reshape(10, -1).T])
    Xc = X - X.mean(axis=0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    ref = (Xc @ vt[:3].T).T
    pa, pb = co_pca(torch.from_numpy(a), torch.from_numpy(b), 3)
    got = np.concatenate([pa.numpy().reshape(3, -1), pb.numpy().reshape(3, -1)], axis=1)
    signs = np.sign((got * ref).sum(axis=1))  # a principal direction is defined up to its sign
    assert np.abs(got * signs[:, None] - ref).max() <= 1e-9 * np.abs(ref).max()
    assert pa.shape == (3, 4, 5) and pb.shape == (3, 3, 3)
    # fewer tokens than channels (s5 at SPair size: 450 tokens of 1280 channels) takes the other route
    sa, sb = a[:, :2, :2], b[:, :1, :2]
    X = np.concatenate([sa.reshape(10, -1).T, sb.reshape(10, -1).T])
    Xc = X - X.mean(axis=0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    ref = (Xc @ vt[:3].T).T
    pa, pb = co_pca(torch.from_numpy(sa), torch.from_numpy(sb), 3)
    got = np.concatenate([pa.numpy().reshape(3, -1), pb.numpy().reshape(3, -1)], axis=1)
    signs = np.sign((got * ref).sum(axis=1))
    assert np.abs(got * signs[:, None] - ref).max() <= 1e-9 * np.abs(ref).max()
    # more dimensions than the data has: capped at min(channels, tokens)
    assert co_pca(torch.from_numpy(sa), torch.from_numpy(sb), 256)[0].shape[0] == 6


def test_sd_descriptor_and_fusion_match_numpy():
    from corrbench_sd.sd_dino import fuse, sd_descriptor

    rng = np.random.default_rng(2)
    p5, p4, p3 = rng.standard_normal((3, 2, 2)), rng.standard_normal((2, 4, 4)), rng.standard_normal((4, 8, 8))
    w = [0.5, 2.0, 3.0]  # s3, s4, s5
    s45 = np.concatenate([p4, bilinear_np(p5, (4, 4))])
    want = np.concatenate([p3 * w[0], bilinear_np(s45, (8, 8)) * np.repeat([w[1], w[2]], [2, 3])[:, None, None]])
    got = sd_descriptor(torch.from_numpy(p5), torch.from_numpy(p4), torch.from_numpy(p3), w).numpy()
    assert got.shape == (9, 8, 8)
    assert np.abs(got - want).max() <= 1e-12 * np.abs(want).max()
    dino = rng.standard_normal((5, 8, 8))
    fused = fuse(torch.from_numpy(got), torch.from_numpy(dino), 0.3).numpy()
    ref = np.concatenate([0.3 * got / np.linalg.norm(got, axis=0), 0.7 * dino / np.linalg.norm(dino, axis=0)])
    assert np.abs(fused - ref).max() <= 1e-12


def test_odise_shared_noise():
    from corrbench_sd.sd_dino import ods_noise

    base = torch.randn((1, 4, 64, 64), generator=torch.Generator("cpu").manual_seed(42))
    assert torch.equal(ods_noise((64, 64)), base)
    assert ods_noise((16, 16)).shape == (1, 4, 16, 16)


def test_clip_image_condition_is_refused_in_one_line():
    from corrbench.errors import UsageError
    from corrbench_sd.sd_dino import SDDino

    with pytest.raises(UsageError, match="ODISE") as err:
        SDDino({"condition": "clip-image"})
    assert "\n" not in str(err.value)
    m = SDDino({"weights": "random", "dino_weights": "random"})
    assert (m.config["timestep"], m.dims, m.config["alpha"], m.config["image_size"]) == (100, [256, 256, 256], 0.5, 960)
    assert m.default_readout == "pair-conditioned"
    with pytest.raises(UsageError, match="pair-conditioned"):  # a per-image readout would compare raw parts
        m.readout_features(torch.zeros(4, 8, 8))


# ------------------------------------------------------------------------------------------------
# the CLI: per-image maps against float64 diffusers/timm, and a run on the synthetic dataset
# ------------------------------------------------------------------------------------------------
def tiny_sets(folder: Path) -> list[str]:
    sets = {"sd.model": str(folder), "sd.image_size": SIZE, "sd.load_size": LOAD, "sd-dino.dino_size": DINO,
            "sd-dino.dino_weights": "random", "sd-dino.dino_layer": 1, "sd-dino.pca_dims": "[4,4,4]",
            "sd-dino.dino_arch": json.dumps(ARCH)}
    return [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd-dino")
    folder = make_tiny_sd(root / "tiny-sd", seed=4)
    rng = np.random.default_rng(3)
    paths = []
    for stem, (w, h) in {"A": (40, 30), "B": (36, 36)}.items():
        path = root / f"{stem}.png"
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmds = {
        "extract": [sys.executable, "-m", "corrbench", "extract", "--method", "sd-dino", "--images",
                    *map(str, paths), "--out", str(root / "maps.safetensors"), *tiny_sets(folder)],
        "run": [sys.executable, "-m", "corrbench", "run", "-q", "-m", "sd-dino", "--limit", "2", "--device", "cpu",
                "--out", str(root / "run"), "--cache-dir", str(root / "cache"), *tiny_sets(folder)],
    }
    procs = {k: subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for k, c in cmds.items()}
    done = {}
    for k, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{' '.join(cmds[k])}\n{stdout[-2000:]}\n{stderr[-4000:]}"
        done[k] = stdout
    return root, folder, paths, done


def reference_parts(folder: Path, path: Path) -> list[torch.Tensor]:
    """[s5, s4, s3, dino] of one image in float64 from plain modules."""
    import timm
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    with Image.open(path) as im:
        img = np.asarray(im.convert("RGB").resize((LOAD, LOAD), Image.Resampling.LANCZOS), dtype=np.float32)
    image = torch.from_numpy(img.transpose(2, 0, 1) / 255.0).double()[None]
    vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae").double().eval()
    unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet").double().eval()
    tok = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer")
    text = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder").double().eval()
    kept = {}
    paths = ("up_blocks.0.resnets.1", "up_blocks.1.attentions.1", "up_blocks.2.attentions.1")
    handles = [unet.get_submodule(p).register_forward_hook(
        lambda m, a, o, n=n: kept.__setitem__(n, o[0] if isinstance(o, tuple) else getattr(o, "sample", o)))
        for n, p in enumerate(paths)]
    with torch.no_grad():
        ids = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        ctx = text(ids).last_hidden_state
        x = F.interpolate(image * 2 - 1, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        z = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        noise = torch.randn((1, 4, 64, 64), generator=torch.Generator("cpu").manual_seed(42)).double()
        noise = F.interpolate(noise, size=z.shape[-2:], mode="bicubic", align_corners=False)
        a = abar64(100)
        unet(np.sqrt(a) * z + np.sqrt(1 - a) * noise, torch.tensor([100.0], dtype=torch.float64),
             encoder_hidden_states=ctx)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(12352)
            vit = timm.create_model("vit_base_patch14_dinov2", pretrained=False, img_size=DINO, num_classes=0, **ARCH)
        vit = vit.double().eval()
        d = F.interpolate(image, size=(DINO, DINO), mode="bicubic", align_corners=False, antialias=True)
        mean = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor((0.229, 0.224, 0.225), dtype=torch.float64).view(1, 3, 1, 1)
        (tokens,) = vit.forward_intermediates((d - mean) / std, indices=[1], norm=False, output_fmt="NCHW",
                                             intermediates_only=True)
    for h in handles:
        h.remove()
    return [kept[0][0], kept[1][0], kept[2][0], tokens[0]]


def test_cli_maps_match_float64_modules(setup):
    from corrbench_sd.sd_dino import unpack

    root, folder, paths, _ = setup
    with safe_open(str(root / "maps.safetensors"), "pt") as f:
        maps = {k: f.get_tensor(k) for k in f.keys()}
    for path in paths:
        ref = reference_parts(folder, path)
        channels = [r.shape[0] for r in ref]
        got = unpack(maps[path.stem], channels)
        for name, g, r in zip(("s5", "s4", "s3", "dino"), got, ref):
            err = float((g.double() - r).norm() / r.norm())
            assert g.shape == r.shape and err <= TOLERANCE, f"{path.stem} {name}: {tuple(g.shape)} rel. error {err:.3g}"


def test_cli_run_on_the_synthetic_dataset(setup):
    root = setup[0]
    results = json.loads((root / "run" / "results.json").read_text())
    entry = results["methods"]["sd-dino"]
    assert 0.0 <= entry["metrics"]["pck@0.10_bbox"] <= 100.0
    assert "pair-conditioned" in json.dumps(results)  # the method's own co-PCA transfer did the readout
    assert results["dataset"]["n_pairs"] == 2


def test_weights_identity_and_requirements_read_the_hub_cache(tmp_path, monkeypatch):
    """DINOv2 weights are identified by the cached snapshot's commit, looked up without any download."""
    import huggingface_hub.constants as hf_constants

    from corrbench.requirements import MISSING, PRESENT
    from corrbench_sd.sd_dino import DINO_MODEL, SDDino

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    m = SDDino({"weights": "random"})
    dino_req = m.requirements()[-1]
    assert dino_req.status == MISSING and f"timm/{DINO_MODEL}" in dino_req.where
    repo = tmp_path / f"models--timm--{DINO_MODEL}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"")
    assert m.requirements()[-1].status == PRESENT
    assert m.weights_identity() == (f"sd=random:stable-diffusion-v1-5/stable-diffusion-v1-5:seed12345;"
                                    f"dino=hub:timm/{DINO_MODEL}@abc123")


def unshuffle_np(x: np.ndarray, r: int) -> np.ndarray:
    """pixel_unshuffle by hand: out[c·r² + i·r + j, y, x] = in[c, y·r + i, x·r + j]."""
    C, H, W = x.shape
    return x.reshape(C, H // r, r, W // r, r).transpose(0, 2, 4, 1, 3).reshape(C * r * r, H // r, W // r)


def fused_np(a: np.ndarray, b: np.ndarray, channels, dims, weights, alpha):
    """The whole per-pair recipe in numpy float64 on two packed maps (SVD-based co-PCA)."""
    def parts(m):
        c5, c4, c3, _ = channels
        n5, n4 = c5 // 16, c4 // 4
        return [unshuffle_np(m[:n5], 4), unshuffle_np(m[n5:n5 + n4], 2), m[n5 + n4:n5 + n4 + c3], m[n5 + n4 + c3:]]

    pa, pb = parts(a), parts(b)
    reduced = []
    for n in range(3):
        C = pa[n].shape[0]
        X = np.concatenate([pa[n].reshape(C, -1).T, pb[n].reshape(C, -1).T])
        Xc = X - X.mean(axis=0)
        _, _, vt = np.linalg.svd(Xc, full_matrices=False)
        q = min(dims[n], C, X.shape[0])
        Y = (Xc @ vt[:q].T).T
        k = pa[n].shape[1] * pa[n].shape[2]
        reduced.append((Y[:, :k].reshape(q, *pa[n].shape[1:]), Y[:, k:].reshape(q, *pb[n].shape[1:])))
    out = []
    for side in range(2):
        p5, p4, p3 = (reduced[n][side] for n in range(3))
        s45 = np.concatenate([p4, bilinear_np(p5, p4.shape[1:])])
        up = bilinear_np(s45, p3.shape[1:])
        sd = np.concatenate([p3 * weights[0], up[:p4.shape[0]] * weights[1], up[p4.shape[0]:] * weights[2]])
        dino = (pa, pb)[side][3]
        out.append(np.concatenate([alpha * sd / np.linalg.norm(sd, axis=0),
                                   (1 - alpha) * dino / np.linalg.norm(dino, axis=0)]))
    return out


def test_pair_fusion_of_cli_maps_matches_numpy(setup):
    """The per-pair descriptor of two CLI maps against the numpy recipe (compared as the source × target dot
    products, which a principal direction's arbitrary sign leaves unchanged)."""
    from corrbench_sd.sd_dino import SDDino

    root, folder, paths, _ = setup
    with safe_open(str(root / "maps.safetensors"), "pt") as f:
        a, b = (f.get_tensor(p.stem).double() for p in paths)
    weights, alpha = [0.5, 2.0, 3.0], 0.3
    m = SDDino({"model": str(folder), "image_size": SIZE, "load_size": LOAD, "dino_size": DINO,
                "dino_weights": "random", "dino_layer": 1, "pca_dims": [4, 4, 4], "dino_arch": ARCH,
                "layer_weights": weights, "alpha": alpha})
    fs, ft = m.fused_pair(a, b)
    rs, rt = fused_np(a.numpy(), b.numpy(), m.channels(a.shape[0]), [4, 4, 4], weights, alpha)
    assert fs.shape == rs.shape == (4 * 3 + ARCH["embed_dim"], 8, 8)
    got = fs.reshape(fs.shape[0], -1).T.numpy() @ ft.reshape(ft.shape[0], -1).numpy()
    want = rs.reshape(rs.shape[0], -1).T @ rt.reshape(rt.shape[0], -1)
    assert np.abs(got - want).max() <= 1e-8
