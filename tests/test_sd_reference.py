"""End to end: ``corrbench extract`` (the installed console script) against a float64 reference.

A tiny random-weight SD pipeline is written to disk, two small PNGs of different sizes are described
by the CLI in a subprocess, and the same features are computed here independently, in float64, with
plain diffusers/transformers modules loaded from the same folder and plain forward hooks:

* PIL RGB → square resize to the load size (PIL bilinear) → [0, 1] → [−1, 1] → bilinear (no
  antialias, ``align_corners=False``) to ``image_size`` → VAE posterior mean (``latent=mode``), or
  mean + std · ε with ε the documented per-image draw (``latent=sample``) → × scaling factor;
* DDIM inversion with η = 0 and the empty prompt: step i of N runs the UNet at t = −1 (the clean pass,
  ᾱ = 1), 0, 1000/N, 2·1000/N, … and moves the latent to the next of 0, 1000/N, … with
  x' = √ᾱ' · x0 + √(1 − ᾱ') · ε, x0 = (x − √(1 − ᾱ) · ε) / √ᾱ, ᾱ from the scheduler config's β schedule;
  step i's maps are saved as index N − 1 − i;
* the output of every ``up_blocks[i].resnets[j].conv2``, bilinearly resized to ``output_resolution``;
* DHF's aggregation network re-implemented with plain torch ops on the checkpoint's state dict:
  per (timestep slot, layer) a bottleneck (1×1 → GN → ReLU, 3×3 → GN → ReLU, 1×1 → GN, projected
  shortcut, add, ReLU) weighted by the softmax of the mixing weights, summed.

Every saved (slot, layer) must agree within 1e-4 relative error (‖cli − ref‖ / ‖ref‖).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402

from corrbench.testing.sd import make_tiny_sd  # noqa: E402

LOAD = 32  # sd.load_size: square load frame
SIZE = 64  # sd.image_size: 8 × 8 latents
RES = 16  # sd.output_resolution
# sd.num_steps. A random tiny UNet amplifies float32 rounding step by step (measured: the float32
# pipeline's relative error against float64 grows from 1e-6 at the clean pass to 2e-5 after 5 steps
# and 1e-4 after 10), so 5 steps keep a margin under the 1e-4 tolerance
STEPS = 5
RAW = (4, 2, 0)  # sd.raw_indices: clean pass, a middle step, the noisiest (clean first)
SEED = 7  # sd.seed for the latent=sample check
#: DHF's 12 decoder layers in order: (up block, resnet)
LAYERS = tuple((i, j) for i in range(4) for j in range(3))
TOLERANCE = 1e-4
DHF_GROUPS = 8  # GroupNorm groups of the test's aggregation network (projection dim 32)
CONSTANT_LAYERS = (0, 1, 2)  # positions in LAYERS whose maps are constant at this image size (see below)
IMAGES = {"A": (40, 30), "B": (50, 50)}  # stem: (W, H)


# ------------------------------------------------------------------------------------------------
# The CLI runs
# ------------------------------------------------------------------------------------------------
def corrbench_command() -> list[str]:
    script = Path(sys.executable).with_name("corrbench")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "corrbench"]


def common_sets(folder: Path) -> list[str]:
    sets = {"sd.model": str(folder), "sd.image_size": SIZE, "sd.output_resolution": RES, "sd.load_size": LOAD,
            "sd.num_steps": STEPS}
    return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]


def extract_command(method: str, images: list[Path], out: Path, sets: list[str], raw: bool = False) -> list[str]:
    return [*corrbench_command(), "extract", "--method", method, "--images", *map(str, images), "--out", str(out),
            *sets] + (["--raw"] if raw else [])


def raw_indices_set() -> list[str]:
    return ["--set", "sd.raw_indices=[" + ",".join(map(str, RAW)) + "]"]


def make_dhf_checkpoint(path: Path, channels: list[int]) -> Path:
    """A seeded aggregation network in the official checkpoint format (distinct mixing weights, non-trivial norms)."""
    from corrbench_dhf.checkpoint import save_checkpoint
    from corrbench_dhf.network import AggregationNetwork

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        net = AggregationNetwork(channels, len(RAW), projection_dim=32, num_norm_groups=DHF_GROUPS)
        with torch.no_grad():
            net.mixing_weights.copy_(torch.randn(net.mixing_weights.shape))
            # layers 1-3 (up_blocks[0]) see a 1 × 1 latent at 64 px: their maps are constant up to float32
            # rounding, and the bottleneck's one-channel-per-group GroupNorm scales that rounding up by
            # 1/sqrt(eps), so float32 and float64 part there by an amount that depends on the CPU. Their
            # softmax weight is made exactly 0 (the raw maps themselves are checked by the raw test).
            for slot in range(net.num_slots):
                if slot % net.num_layers in CONSTANT_LAYERS:
                    net.mixing_weights[slot] = -1e4
            for name, p in net.named_parameters():
                if name.endswith("norm.weight"):
                    p.copy_(1 + 0.2 * torch.randn(p.shape))
                elif name.endswith("norm.bias"):
                    p.copy_(0.1 * torch.randn(p.shape))
    return save_checkpoint(path, net, step=0,
                           config={"save_timestep": list(RAW), "num_timesteps": STEPS, "num_norm_groups": DHF_GROUPS,
                                   "projection_dim": 32, "model_id": "tiny-sd"})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd-reference")
    folder = make_tiny_sd(root / "tiny-sd", seed=5)
    rng = np.random.default_rng(2024)
    paths = []
    for stem, (w, h) in IMAGES.items():
        path = root / f"{stem}.png"
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return root, folder, paths


@pytest.fixture(scope="module")
def cli(setup):
    """Every ``corrbench extract`` run of this module, started together (each is mostly start-up time)."""
    root, folder, paths = setup
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    widths = list(reversed(unet_config["block_out_channels"]))  # up block i has the reversed i-th width
    channels = [widths[i] for i, _ in LAYERS]
    ckpt = make_dhf_checkpoint(root / "dhf.pt", channels)
    sd = common_sets(folder)
    jobs = {
        "raw-mode": ("sd-concat-all", sd + raw_indices_set() + ["--set", "sd.latent=mode"], True),
        "raw-sample": ("sd-concat-all", sd + raw_indices_set() + ["--set", "sd.latent=sample", "--set", f"sd.seed={SEED}"],
                       True),
        "layer4": ("sd-layer-4", sd + raw_indices_set() + ["--set", "sd.latent=mode"], False),
        "dhf": ("dhf", sd + ["--set", "sd.latent=mode", "--set", f"dhf.weights={ckpt}"], False),
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    procs = {}
    for name, (method, sets, raw) in jobs.items():
        out = root / f"{name}.safetensors"
        cmd = extract_command(method, paths, out, sets, raw)
        procs[name] = (cmd, out, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                   env=env))
    # and `corrbench run`: one synthetic pair through dhf; its feature cache holds what PCK was computed on
    run_cmd = [*corrbench_command(), "run", "-q", "-m", "dhf", "--limit", "1", "--device", "cpu",
               "--out", str(root / "run"), "--cache-dir", str(root / "run-cache"),
               *sd, "--set", "sd.latent=mode", "--set", f"dhf.weights={ckpt}"]
    procs["run"] = (run_cmd, root / "run-cache", subprocess.Popen(run_cmd, stdout=subprocess.PIPE,
                                                                   stderr=subprocess.PIPE, text=True, env=env))
    results = {}
    for name, (cmd, out, proc) in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        results[name] = (cmd, out, proc.returncode, stdout, stderr)
    return results, ckpt


def cli_output(cli, name: str) -> dict:
    cmd, out, rc, stdout, stderr = cli[0][name]
    assert rc == 0, f"{' '.join(cmd)}\n{stdout[-2000:]}\n{stderr[-4000:]}"
    with safe_open(str(out), "pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


@pytest.fixture(scope="module")
def reference(setup):
    return Reference(setup[1])


# ------------------------------------------------------------------------------------------------
# The float64 reference
# ------------------------------------------------------------------------------------------------
def load_image(path: Path) -> np.ndarray:
    """The method's preprocessing: PIL RGB, square PIL-bilinear resize to the load size, 3×L×L float32 in [0, 1]."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    resized = rgb.resize((LOAD, LOAD), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0


def documented_noise(image32: np.ndarray, seed: int, shape) -> torch.Tensor:
    """The documented posterior draw: sha256 of (seed, size, float32 bytes) → 63-bit CPU generator seed."""
    data = np.ascontiguousarray(image32, dtype="<f4")
    H, W = data.shape[-2:]
    digest = hashlib.sha256(f"{seed}:{H}x{W}:".encode("ascii") + data.tobytes()).digest()
    generator = torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") & (2 ** 63 - 1))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


class Reference:
    def __init__(self, folder: Path):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae").double().eval()
        self.unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet").double().eval()
        tok = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer")
        text = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder").double().eval()
        ids = tok([""], padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        with torch.no_grad():
            self.context = text(ids).last_hidden_state  # 1 × L × D float64
        self.scale = float(self.vae.config.scaling_factor)
        # β from the pipeline's scheduler config (SD's scaled-linear schedule); the timesteps follow DHF's
        # own DDIM setup whatever the model's scheduler says: "leading" spacing with steps_offset 0
        # (diffusers rewrites a saved steps_offset to 1, so the folder's value is not DHF's)
        cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        assert cfg["beta_schedule"] == "scaled_linear" and cfg["timestep_spacing"] == "leading"
        assert (cfg["beta_start"], cfg["beta_end"], cfg["num_train_timesteps"]) == (0.00085, 0.012, 1000)
        T = int(cfg["num_train_timesteps"])
        betas = torch.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, T, dtype=torch.float64) ** 2
        self.abar = torch.cumprod(1.0 - betas, dim=0)
        self.ascending = [(T // STEPS) * n for n in range(STEPS)]  # 0, 200, ..., 800
        self.channels = [self.unet.up_blocks[i].resnets[j].conv2.out_channels for i, j in LAYERS]
        self._memo: dict = {}

    def alpha(self, t: int) -> float:
        return 1.0 if t < 0 else float(self.abar[t])

    def features(self, image32: np.ndarray, latent: str = "mode", seed: int = 0) -> dict[tuple[int, int], torch.Tensor]:
        """(index k, layer position) → C×RES×RES float64 for every index in RAW (one image)."""
        key = (hashlib.sha256(image32.tobytes()).hexdigest(), latent, seed if latent == "sample" else None)
        if key not in self._memo:
            self._memo[key] = self._features(image32, latent, seed)
        return self._memo[key]

    def _features(self, image32: np.ndarray, latent: str, seed: int) -> dict[tuple[int, int], torch.Tensor]:
        x = torch.from_numpy(image32.astype(np.float64))[None] * 2.0 - 1.0
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=False)
        out: dict[tuple[int, int], torch.Tensor] = {}
        maps: dict[int, torch.Tensor] = {}
        handles = [self.unet.up_blocks[i].resnets[j].conv2.register_forward_hook(
            lambda module, args, output, n=n: maps.__setitem__(n, output.detach()))
            for n, (i, j) in enumerate(LAYERS)]
        try:
            with torch.no_grad():
                dist = self.vae.encode(x).latent_dist
                z = dist.mean
                if latent == "sample":
                    z = z + dist.std * documented_noise(image32, seed, z.shape[1:]).double()[None]
                x = z * self.scale
                ts = [-1] + self.ascending[:-1]
                for i in range(STEPS):
                    maps.clear()
                    t, t_next = ts[i], self.ascending[i]
                    eps = self.unet(x, torch.tensor([float(t)], dtype=torch.float64),
                                    encoder_hidden_states=self.context).sample
                    k = STEPS - 1 - i
                    if k in RAW:
                        for n in range(len(LAYERS)):
                            out[(k, n)] = F.interpolate(maps[n], size=(RES, RES), mode="bilinear",
                                                        align_corners=False)[0]
                    a, a_next = self.alpha(t), self.alpha(t_next)
                    x0 = (x - math.sqrt(1.0 - a) * eps) / math.sqrt(a)
                    x = math.sqrt(a_next) * x0 + math.sqrt(1.0 - a_next) * eps
        finally:
            for h in handles:
                h.remove()
        return out


def rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double(), ref.double()
    assert got.shape == ref.shape, (tuple(got.shape), tuple(ref.shape))
    return float((got - ref).norm() / ref.norm().clamp_min(1e-300))


def check_raw(raw: torch.Tensor, ref: dict, channels: list[int], what: str) -> float:
    """``raw``: S × ΣC × R × R (slots in RAW order, layers concatenated in LAYERS order)."""
    assert raw.shape == (len(RAW), sum(channels), RES, RES), tuple(raw.shape)
    worst = 0.0
    for s, k in enumerate(RAW):
        c0 = 0
        for n, c in enumerate(channels):
            err = rel_error(raw[s, c0:c0 + c], ref[(k, n)])
            assert err <= TOLERANCE, f"{what}: slot {s} (index {k}) layer {n + 1} {LAYERS[n]}: rel. error {err:.3g}"
            worst = max(worst, err)
            c0 += c
    return worst


# ------------------------------------------------------------------------------------------------
# The tests
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("latent", ["mode", "sample"])
def test_cli_raw_sd_features_match_a_float64_reference(setup, cli, reference, latent):
    root, folder, paths = setup
    got = cli_output(cli, f"raw-{latent}")
    assert set(got) == set(IMAGES)
    worst = 0.0
    for path in paths:
        ref = reference.features(load_image(path), latent, SEED)
        worst = max(worst, check_raw(got[path.stem], ref, reference.channels, f"{path.stem} latent={latent}"))
    print(f"sd-concat-all --raw latent={latent}: worst relative error {worst:.3g}")
    if latent == "sample":  # source and target got different draws (same seed, different content)
        a, b = (documented_noise(load_image(p), SEED, (4, SIZE // 8, SIZE // 8)) for p in paths)
        assert (a - b).abs().mean() > 0.5


def test_cli_sd_layer_4_descriptor_matches_the_reference(setup, cli, reference):
    root, folder, paths = setup
    got = cli_output(cli, "layer4")
    worst = 0.0
    for path in paths:
        ref = reference.features(load_image(path), "mode")
        # SD-Layer-4: layer 4 = up_blocks[1].resnets[0] of the clean pass (t = −1, index N − 1)
        err = rel_error(got[path.stem], ref[(STEPS - 1, LAYERS.index((1, 0)))])
        assert err <= TOLERANCE, f"{path.stem}: rel. error {err:.3g}"
        worst = max(worst, err)
    print(f"sd-layer-4: worst relative error {worst:.3g}")


def group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5):
    B, C, H, W = x.shape
    g = x.reshape(B, groups, -1)
    mean = g.mean(dim=2, keepdim=True)
    var = ((g - mean) ** 2).mean(dim=2, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + eps)).reshape(B, C, H, W)
    return y * weight.view(1, C, 1, 1) + bias.view(1, C, 1, 1)


def bottleneck(state: dict, prefix: str, x: torch.Tensor, groups: int) -> torch.Tensor:
    def conv_norm(name, inp, padding=0):
        y = F.conv2d(inp, state[f"{prefix}.{name}.weight"], padding=padding)
        return group_norm(y, groups, state[f"{prefix}.{name}.norm.weight"], state[f"{prefix}.{name}.norm.bias"])

    out = torch.relu(conv_norm("conv1", x))
    out = torch.relu(conv_norm("conv2", out, padding=1))
    out = conv_norm("conv3", out)
    shortcut = conv_norm("shortcut", x) if f"{prefix}.shortcut.weight" in state else x
    return torch.relu(out + shortcut)


def test_cli_dhf_hyperfeatures_match_a_float64_aggregation(setup, cli, reference):
    root, folder, paths = setup
    got = cli_output(cli, "dhf")
    ckpt = cli[1]
    groups = DHF_GROUPS
    state = {k: v.double() for k, v in torch.load(ckpt, weights_only=True)["aggregation_network"].items()}
    assert [state[f"bottleneck_layers.{n}.0.conv1.weight"].shape[1] for n in range(len(LAYERS))] == reference.channels
    mixing = torch.softmax(state["mixing_weights"], dim=0)
    L = len(LAYERS)
    worst = 0.0
    for path in paths:
        ref = reference.features(load_image(path), "mode")
        total = None
        for s, k in enumerate(RAW):  # timestep-major slots: i = s · L + layer
            for n in range(L):
                term = mixing[s * L + n] * bottleneck(state, f"bottleneck_layers.{n}.0", ref[(k, n)][None], groups)
                total = term if total is None else total + term
        err = rel_error(got[path.stem], total[0])
        assert err <= TOLERANCE, f"{path.stem}: dhf rel. error {err:.3g}"
        worst = max(worst, err)
    print(f"dhf: worst relative error {worst:.3g}")


def test_cli_run_computes_pck_on_the_reference_hyperfeatures(setup, cli, reference):
    """``corrbench run -m dhf``: the features its PCK was computed on (its float32 feature cache, one entry per
    image, named by the image's sha256) equal the float64 reference; the run itself succeeded and scored them."""
    cmd, cache, rc, stdout, stderr = cli[0]["run"]
    assert rc == 0, f"{' '.join(cmd)}\n{stdout[-2000:]}\n{stderr[-4000:]}"
    root = setup[0]
    results = json.loads((root / "run" / "results.json").read_text())["methods"]["dhf"]
    assert results["n_pairs"] == 1 and "pck@0.10_bbox" in results["metrics"]
    assert results["info"]["latent"].startswith("VAE posterior mean (mode)")  # results.json says how latents were drawn
    pred = json.loads((root / "run" / "predictions.jsonl").read_text().splitlines()[0])
    ckpt = cli[1]
    state = {k: v.double() for k, v in torch.load(ckpt, weights_only=True)["aggregation_network"].items()}
    mixing = torch.softmax(state["mixing_weights"], dim=0)
    L = len(LAYERS)
    folder = Path(results["cache"])
    assert folder.parent == cache
    for image in (pred["source"], pred["target"]):
        sha = hashlib.sha256(Path(image).read_bytes()).hexdigest()
        with safe_open(str(folder / sha[:2] / f"{sha}.safetensors"), "pt") as f:
            got = f.get_tensor("features")
        assert got.dtype == torch.float32
        ref = reference.features(load_image(Path(image)), "mode")
        total = sum(mixing[s * L + n] * bottleneck(state, f"bottleneck_layers.{n}.0", ref[(k, n)][None], DHF_GROUPS)
                    for s, k in enumerate(RAW) for n in range(L))
        err = rel_error(got, total[0])
        assert err <= TOLERANCE, f"{image}: run's dhf features, rel. error {err:.3g}"
