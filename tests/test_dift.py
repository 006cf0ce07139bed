"""DIFT (``dift``, ``dift-sd15``): the noising step in closed form, and ``corrbench extract`` against a
float64 reference built from plain diffusers/transformers modules and a forward hook on the tiny model.

The reference follows the documented recipe (docs/methods.md#dift) independently of the plugin:
PIL RGB → square bicubic resize to the load size → [0, 1] → per image one CPU generator seeded with
sha256(f"{seed}:{H}x{W}:" + float32 bytes)[:8] (63 bits), drawing E posterior samples (``latent=sample``)
then E forward-noise samples → [−1, 1] → bilinear to the UNet size → VAE mean (+ std · draw) × scaling
factor → √ᾱ_t · x0 + √(1 − ᾱ_t) · ε with ᾱ from SD's scaled-linear β → UNet at t with the prompt
"a photo of a {category}" → output of ``up_blocks[1]`` → mean over the E draws.
"""

from __future__ import annotations

import hashlib
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

LOAD, SIZE, E = 32, 64, 2
TOLERANCE = 1e-4
IMAGES = {"A": (40, 30), "B": (50, 50)}
RUNS = {  # name: (extra --set values, t, latent, seed)
    "sample": ({"dift.t": 261, "dift.ensemble_size": E, "sd.seed": 3}, 261, "sample", 3),
    "mode": ({"dift.t": 700, "dift.ensemble_size": 3, "sd.latent": "mode"}, 700, "mode", 0),
}


def abar64(t: int) -> float:
    """ᾱ_t by hand β_i = (√0.00085 + i·(√0.012 − √0.00085)/999)², ᾱ_t = Π_{i≤t} (1 − β_i)."""
    lo, hi = 0.00085 ** 0.5, 0.012 ** 0.5
    betas = [(lo + i * (hi - lo) / 999) ** 2 for i in range(1000)]
    return float(np.prod([1.0 - b for b in betas[: t + 1]], dtype=np.float64))


# ------------------------------------------------------------------------------------------------
# closed form
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [0, 261, 999])
def test_noising_step_matches_the_closed_form(t):
    from corrbench_sd.dift import add_noise, noise_level

    a = abar64(t)
    assert abs(noise_level(t) - a) <= 1e-6 * a
    gen = torch.Generator().manual_seed(t)
    x0, eps = torch.randn(2, 4, 5, 5, generator=gen, dtype=torch.float64), torch.randn(2, 4, 5, 5, generator=gen,
                                                                                        dtype=torch.float64)
    want = np.sqrt(a) * x0.numpy() + np.sqrt(1.0 - a) * eps.numpy()
    got = add_noise(x0, eps, t).numpy()
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_prompt_template_and_unknown_category():
    from corrbench_sd.dift import prompt_for

    assert prompt_for("a photo of a {category}", "cat", "object") == "a photo of a cat"
    assert prompt_for("a photo of a {category}", None, "object") == "a photo of a object"


# ------------------------------------------------------------------------------------------------
# CLI against the float64 reference
# ------------------------------------------------------------------------------------------------
def corrbench_command() -> list[str]:
    return [sys.executable, "-m", "corrbench"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dift")
    folder = make_tiny_sd(root / "tiny-sd", seed=9)
    rng = np.random.default_rng(7)
    paths = []
    for stem, (w, h) in IMAGES.items():
        path = root / f"{stem}.png"
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return root, folder, paths


def sets_for(folder: Path, extra: dict) -> list[str]:
    sets = {"sd.model": str(folder), "sd.image_size": SIZE, "sd.load_size": LOAD, **extra}
    return [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def cli(setup):
    root, folder, paths = setup
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    procs = {}
    for name, (extra, *_rest) in RUNS.items():
        out = root / f"{name}.safetensors"
        cmd = [*corrbench_command(), "extract", "--method", "dift", "--images", *map(str, paths), "--out", str(out),
               *sets_for(folder, extra)]
        procs[name] = (cmd, out, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                   env=env))
    # and `corrbench run` on one synthetic pair, started alongside (each run is mostly start-up time)
    run_cmd = [*corrbench_command(), "run", "-q", "-m", "dift", "--limit", "1", "--device", "cpu",
               "--cache-dir", str(root / "run-cache"), *sets_for(folder, {"dift.ensemble_size": E})]
    procs["run"] = (run_cmd, None, subprocess.Popen(run_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                     text=True, env={**env, "CORRBENCH_DATA": str(root / "data")}))
    results = {}
    for name, (cmd, out, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{stdout[-2000:]}\n{stderr[-4000:]}"
        if out is not None:
            with safe_open(str(out), "pt") as f:
                results[name] = {k: f.get_tensor(k) for k in f.keys()}
    return results


def load_image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    return np.asarray(rgb.resize((LOAD, LOAD), Image.Resampling.BICUBIC), dtype=np.float32).transpose(2, 0, 1) / 255.0


class Reference:
    def __init__(self, folder: Path):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae").double().eval()
        self.unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet").double().eval()
        self.tok = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer")
        self.text = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder").double().eval()
        self.scale = float(self.vae.config.scaling_factor)

    def context(self, prompt: str) -> torch.Tensor:
        ids = self.tok([prompt], padding="max_length", max_length=self.tok.model_max_length, truncation=True,
                       return_tensors="pt").input_ids
        with torch.no_grad():
            return self.text(ids).last_hidden_state

    def features(self, image32: np.ndarray, *, t: int, ensemble: int, latent: str, seed: int,
                 category: str | None = None) -> torch.Tensor:
        data = np.ascontiguousarray(image32, dtype="<f4")
        H, W = data.shape[-2:]
        digest = hashlib.sha256(f"{seed}:{H}x{W}:".encode("ascii") + data.tobytes()).digest()
        gen = torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") & (2 ** 63 - 1))
        x = torch.from_numpy(image32.astype(np.float64))[None] * 2.0 - 1.0
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        kept = {}
        handle = self.unet.up_blocks[1].register_forward_hook(lambda m, a, o: kept.__setitem__("map", o))
        try:
            with torch.no_grad():
                dist = self.vae.encode(x).latent_dist
                shape = (ensemble, *dist.mean.shape[1:])
                post = torch.randn(shape, generator=gen, dtype=torch.float32).double() if latent == "sample" else None
                eps = torch.randn(shape, generator=gen, dtype=torch.float32).double()
                z = dist.mean if post is None else dist.mean + dist.std * post
                a = abar64(t)
                x_t = np.sqrt(a) * z * self.scale + np.sqrt(1.0 - a) * eps
                prompt = f"a photo of a {category or 'object'}"
                ctx = self.context(prompt).expand(ensemble, -1, -1)
                self.unet(x_t, torch.full((ensemble,), float(t), dtype=torch.float64), encoder_hidden_states=ctx)
        finally:
            handle.remove()
        return kept["map"].mean(dim=0)


@pytest.fixture(scope="module")
def reference(setup):
    return Reference(setup[1])


def rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    assert tuple(got.shape) == tuple(ref.shape), (tuple(got.shape), tuple(ref.shape))
    return float((got.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("run", list(RUNS))
def test_cli_dift_matches_a_float64_reference(setup, cli, reference, run):
    _, folder, paths = setup
    _, t, latent, seed = RUNS[run]
    ensemble = RUNS[run][0]["dift.ensemble_size"]
    for path in paths:
        ref = reference.features(load_image(path), t=t, ensemble=ensemble, latent=latent, seed=seed)
        got = cli[run][path.stem]
        assert got.shape[-2:] == (SIZE // 16, SIZE // 16)  # up block 1: 1/16 of the UNet input
        err = rel_error(got, ref)
        assert err <= TOLERANCE, f"{run} {path.stem}: relative error {err:.3g}"


def test_categories_pick_the_prompt_and_the_batch_does_not_matter(setup, reference, tmp_path):
    from corrbench_sd.dift import DIFT

    _, folder, paths = setup
    m = DIFT({"model": str(folder), "image_size": SIZE, "load_size": LOAD, "ensemble_size": E, "seed": 3})
    images = torch.from_numpy(np.stack([load_image(p) for p in paths]))
    both = m.extract(m._prepare(images), categories=["cat", None])
    alone = m.extract(m._prepare(images[1:]), categories=[None])
    torch.testing.assert_close(both[1], alone[0], rtol=1e-5, atol=1e-6)  # per-image draws: the batch changes nothing
    # repeated and mixed categories in one batch: each image still gets its own prompt
    mixed = m.extract(m._prepare(images[[1, 0, 1]]), categories=[None, "cat", "cat"])
    torch.testing.assert_close(mixed[0], alone[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[1], both[0], rtol=1e-5, atol=1e-6)
    assert rel_error(mixed[2], mixed[0].double()) > 1e-3  # same image, other prompt
    ref_cat = reference.features(load_image(paths[0]), t=261, ensemble=E, latent="sample", seed=3, category="cat")
    assert rel_error(both[0], ref_cat) <= TOLERANCE
    ref_object = reference.features(load_image(paths[0]), t=261, ensemble=E, latent="sample", seed=3)
    assert rel_error(both[0], ref_object) > 1e-3  # the category really reached the prompt
    with pytest.raises(Exception, match="2 categories for 1 images"):
        m.extract(m._prepare(images[:1]), categories=["cat", "dog"])
    assert DIFT.uses_category is True


def test_defaults_identity_and_requirements():
    from corrbench_sd.configs import SD15, SD21_V
    from corrbench_sd.dift import DIFT, DIFTSD15

    m = DIFT({"weights": "random"})
    assert (m.config["model"], m.config["image_size"], m.config["t"], m.config["up_ft_index"],
            m.config["ensemble_size"]) == (SD21_V, 768, 261, 1, 8)
    assert m.preprocessing().load_size == 768
    assert m.weights_identity() == f"random:{SD21_V}:seed12345"
    assert DIFTSD15().config["model"] == SD15
    (req,) = DIFT().requirements()
    assert SD21_V in req.where
    assert m.shared_pass() is None


@pytest.mark.parametrize("bad, message", [
    ({"t": 1000}, "dift.t"),
    ({"ensemble_size": 0}, "dift.ensemble_size"),
    ({"prompt": "a photo"}, "dift.prompt"),
])
def test_bad_settings_are_usage_errors(bad, message):
    from corrbench.errors import UsageError
    from corrbench_sd.dift import DIFT

    with pytest.raises(UsageError, match=message):
        DIFT({"weights": "random", **bad})


def test_cli_bad_setting_is_a_one_line_error(setup):
    _, folder, paths = setup
    cmd = [*corrbench_command(), "extract", "--method", "dift", "--images", str(paths[0]), "--out",
           str(setup[0] / "bad.safetensors"), "--set", f"sd.model={folder}", "--set", "dift.prompt=a photo"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "dift.prompt" in errors[0] and "{category}" in errors[0], proc.stderr


def test_cli_run_feeds_each_image_its_category(setup, cli):
    """``corrbench run`` on the synthetic dataset: each cached map is DIFT of that image with its pair's category,
    stored under a key that carries the category."""
    import hashlib as _hashlib

    from safetensors.torch import load_file

    from corrbench.images import to_batch
    from corrbench.plugins import get_host
    from corrbench_sd.dift import DIFT

    root, folder, _ = setup
    ds = get_host().datasets.entry("synthetic").load()(root=root / "data" / "synthetic")
    pair = next(iter(ds.pairs()))
    assert pair.category
    m = DIFT({"model": str(folder), "image_size": SIZE, "load_size": LOAD, "ensemble_size": E})
    for path in (pair.source, pair.target):
        digest = _hashlib.sha256(path.read_bytes()).hexdigest()
        (cached,) = list((root / "run-cache").glob(f"dift-*/{digest[:2]}/{digest}-*.safetensors"))
        stored = next(iter(load_file(str(cached)).values()))
        with Image.open(path) as im:
            batch = to_batch([im.convert("RGB")], m.preprocessing())
        want = m.extract(m._prepare(batch), categories=[pair.category])[0]
        assert rel_error(stored.float(), want.double()) <= 1e-3  # the cache holds float16
        other = m.extract(m._prepare(batch), categories=["some other class"])[0]
        assert rel_error(stored.float(), other.double()) > 1e-2
