"""The SD feature extractor against independent computations, on a tiny random-weight SD folder.

Reference computations here use their own copies of the components (loaded straight from the folder
with diffusers/transformers), their own ᾱ (from the paper's β schedule, no scheduler call) and their
own plain forward hooks, so they share no code with the extractor beyond the library models.
"""

from __future__ import annotations

import hashlib
import math
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

from corrbench.errors import UsageError, WeightsError  # noqa: E402
from corrbench.testing.sd import make_tiny_sd  # noqa: E402
from corrbench_sd import loading  # noqa: E402
from corrbench_sd.configs import SD15, SD21, architecture  # noqa: E402
from corrbench_sd.extractor import LAYERS, PAPER_SAVE_INDICES, SDFeatureExtractor  # noqa: E402

SIZE = 64  # UNet input side in these tests: 8 × 8 latents keep 50 CPU steps well under a second


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "sd")


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 40, 40, generator=gen)


def extractor(tiny, **kw):
    kw.setdefault("image_size", SIZE)
    return SDFeatureExtractor(str(tiny), **kw)


def collect(fn, *args, **kwargs) -> dict:
    got: dict = {}

    def consume(slot, position, feat):
        assert (slot, position) not in got, "a (slot, layer) was delivered twice"
        got[(slot, position)] = feat.clone()

    fn(*args, consume=consume, **kwargs)
    return got


class UNetCalls:
    """Records (sample, timestep) of every call of a UNet through a plain forward pre-hook."""

    def __init__(self, unet):
        self.calls: list[tuple] = []
        self.handle = unet.register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        self.calls.append((args[0].detach().clone(), args[1].detach().clone()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ------------------------------------------------------------------------------------------------
# Reference pieces, independent of corrbench_sd
# ------------------------------------------------------------------------------------------------
def ref_alphas_cumprod():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def ref_models(tiny):
    unet = UNet2DConditionModel.from_pretrained(tiny, subfolder="unet").eval()
    vae = AutoencoderKL.from_pretrained(tiny, subfolder="vae").eval()
    tok = CLIPTokenizer.from_pretrained(tiny, subfolder="tokenizer")
    text = CLIPTextModel.from_pretrained(tiny, subfolder="text_encoder").eval()
    return unet, vae, tok, text


def ref_text(tok, text, prompts):
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    return text(ids).last_hidden_state


def ref_latents(vae, images, *, seed=None):
    x = F.interpolate(images * 2 - 1, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    # image by image, as the extractor encodes (to bound the VAE's peak memory); a batched encode
    # differs in the last bits (another convolution algorithm), which 50 steps of a random UNet amplify
    dists = [vae.encode(x[i:i + 1]).latent_dist for i in range(x.shape[0])]
    mean, std = torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])
    if seed is None:
        return mean * 0.18215
    noise = torch.stack([ref_noise(image, seed, mean.shape[1:]) for image in images])
    return (mean + std * noise) * 0.18215


def ref_noise(image, seed, shape):
    """The documented posterior draw of one image (extractor.posterior_seed), recomputed here."""
    data = image.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes()
    H, W = image.shape[-2:]
    digest = hashlib.sha256(f"{seed}:{H}x{W}:".encode("ascii") + data).digest()
    generator_seed = int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(generator_seed), dtype=torch.float32)


def resize(feat, r=64):
    return F.interpolate(feat.float(), size=(r, r), mode="bilinear", align_corners=False)


class RefConv2:
    """Plain hooks storing every conv2 output of the 12 layers for the current call."""

    def __init__(self, unet):
        self.out: dict = {}
        self.handles = [unet.up_blocks[i].resnets[j].conv2.register_forward_hook(self._hook((i, j)))
                        for i, j in LAYERS]

    def _hook(self, layer):
        def hook(module, args, output):
            self.out[layer] = output.detach().clone()
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


# ------------------------------------------------------------------------------------------------
# (1) DDIM inversion against a closed-form recomputation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("latent,num_steps", [("mode", 50), ("sample", 10)])
def test_inversion_matches_closed_form_reference(tiny, images, latent, num_steps):
    N = num_steps
    save = PAPER_SAVE_INDICES if N == 50 else tuple(range(N - 1, -1, -3))
    ex = extractor(tiny, latent=latent, seed=3, num_steps=N)
    with UNetCalls(ex.unet) as rec, torch.inference_mode():
        got = collect(ex.invert, images, save_indices=save, layers=LAYERS)
    assert len(rec.calls) == N  # index 0 is saved, so every step runs
    assert set(got) == {(s, l) for s in range(len(save)) for l in range(12)}

    unet, vae, tok, text = ref_models(tiny)
    abar = ref_alphas_cumprod()
    ascending = [(1000 // N) * n for n in range(N)]  # "leading" spacing, steps_offset 0: 0, 20, ..., 980
    ts = [-1] + ascending[:-1]
    alpha = lambda t: 1.0 if t < 0 else float(abar[t])  # noqa: E731
    hooks = RefConv2(unet)
    with torch.inference_mode():
        x = ref_latents(vae, images, seed=3 if latent == "sample" else None)
        ctx = ref_text(tok, text, [""] * images.shape[0])
        ref_feats = {}
        for i in range(N):
            sample, t_in = rec.calls[i]
            # the extractor feeds the UNet exactly the reference latent and timestep of step i
            assert float(t_in[0]) == ts[i]
            torch.testing.assert_close(sample.float(), x, rtol=1e-3, atol=1e-4)
            eps = unet(x, torch.full((x.shape[0],), float(ts[i])), encoder_hidden_states=ctx).sample
            ref_feats[N - 1 - i] = {layer: resize(f) for layer, f in hooks.out.items()}
            a, a_next = alpha(ts[i]), alpha(ascending[i])
            x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
            x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
    hooks.remove()
    for s, k in enumerate(save):
        for l, layer in enumerate(LAYERS):
            feat = got[(s, l)]
            assert feat.dtype == torch.float32 and feat.shape == (2, ex.layer_channels([layer])[0], 64, 64)
            torch.testing.assert_close(feat, ref_feats[k][layer], rtol=1e-3, atol=1e-4,
                                       msg=f"slot {s} (index {k}) layer {layer}")


def test_saved_indices_map_to_paper_timesteps(tiny, images):
    """Slot s of the paper's indices runs the UNet at −1, 60, 160, …, 960 (docs/methods.md#ddim-inversion)."""
    ex = extractor(tiny)
    seen = {}
    with UNetCalls(ex.unet) as rec, torch.inference_mode():
        ex.invert(images[:1], save_indices=PAPER_SAVE_INDICES, layers=[(3, 2)],
                  consume=lambda s, l, f: seen.setdefault(s, float(rec.calls[-1][1][0])))
    assert [seen[s] for s in range(11)] == [-1, 60, 160, 260, 360, 460, 560, 660, 760, 860, 960]


# ------------------------------------------------------------------------------------------------
# (2) the hooked tensor is the residual branch
# ------------------------------------------------------------------------------------------------
def test_conv2_hook_equals_residual_branch(tiny, images):
    # output_resolution 8 = the native size of up block 3 at 64 px, so those maps are compared unresized
    ex = extractor(tiny, output_resolution=8)
    unet = ex.unet
    blocks: dict = {}
    handles = []
    for i, j in LAYERS:
        def hook(module, args, output, layer=(i, j)):
            blocks.setdefault(layer, (args[0].clone(), args[1].clone(), output.clone()))  # first step only
        handles.append(unet.up_blocks[i].resnets[j].register_forward_hook(hook))
    try:
        with torch.inference_mode():
            # two saved steps: the clean pass then runs the whole UNet (the last step stops after (3, 2),
            # before its block's own forward hook would fire)
            got = collect(ex.invert, images, save_indices=(49, 48), layers=LAYERS)
    finally:
        for h in handles:
            h.remove()
    with torch.inference_mode():
        for l, (i, j) in enumerate(LAYERS):
            res = unet.up_blocks[i].resnets[j]
            x, temb, out = blocks[(i, j)]
            shortcut = res.conv_shortcut(x) if res.conv_shortcut is not None else x
            from_output = out * res.output_scale_factor - shortcut
            # recompute the branch from the block's modules: norm1 → act → conv1 → +temb → norm2 → act → conv2
            h = res.conv1(res.nonlinearity(res.norm1(x)))
            h = h + res.time_emb_proj(res.nonlinearity(temb))[:, :, None, None]
            from_modules = res.conv2(res.dropout(res.nonlinearity(res.norm2(h))))
            torch.testing.assert_close(from_modules, from_output, rtol=1e-5, atol=1e-5)
            expected = from_modules if from_modules.shape[-1] == 8 else resize(from_modules, 8)
            torch.testing.assert_close(got[(0, l)], expected, rtol=1e-5, atol=1e-5, msg=f"layer {(i, j)}")
            # and it is not the block output (DHF pitfall P3)
            block_out = out if out.shape[-1] == 8 else resize(out, 8)
            assert not torch.allclose(got[(0, l)], block_out, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# (3) hooks are always removed
# ------------------------------------------------------------------------------------------------
def _hook_count(unet) -> int:
    return sum(len(unet.up_blocks[i].resnets[j].conv2._forward_hooks) for i, j in LAYERS)


def test_hooks_removed_after_success_and_error(tiny, images):
    ex = extractor(tiny)
    unet = ex.unet
    before = _hook_count(unet)
    with torch.inference_mode():
        ex.invert(images, save_indices=(49, 45), layers=LAYERS, consume=lambda *a: None)
    assert _hook_count(unet) == before

    def boom(slot, position, feat):
        if position == 4:
            raise RuntimeError("consumer failed")

    with pytest.raises(RuntimeError, match="consumer failed"), torch.inference_mode():
        ex.invert(images, save_indices=(49,), layers=LAYERS, consume=boom)
    assert _hook_count(unet) == before
    with pytest.raises(RuntimeError, match="consumer failed"), torch.inference_mode():
        ex.generate(["a cat"], guidance=7.5, seed=0, save_indices=(49,), layers=LAYERS, consume=boom)
    assert _hook_count(unet) == before


# ------------------------------------------------------------------------------------------------
# (4) one_step = invert at index 49; steps after the last saved one are skipped
# ------------------------------------------------------------------------------------------------
def test_one_step_equals_invert_slot_zero(tiny, images):
    ex = extractor(tiny)
    with torch.inference_mode():
        # (49, 45): the clean pass runs the whole UNet here, while one_step stops after the deepest layer
        full = collect(ex.invert, images, save_indices=(49, 45), layers=LAYERS)
        with UNetCalls(ex.unet) as rec:
            one = collect(ex.one_step, images, layers=LAYERS)
    assert len(rec.calls) == 1 and float(rec.calls[0][1][0]) == -1.0
    assert set(one) == {(0, l) for l in range(12)}
    for l in range(12):
        torch.testing.assert_close(one[(0, l)], full[(0, l)], rtol=0, atol=0)


def test_unneeded_work_is_skipped(tiny, images):
    ex = extractor(tiny)
    late = []
    handle = ex.unet.up_blocks[3].register_forward_hook(lambda *a: late.append(1))
    try:
        with torch.inference_mode(), UNetCalls(ex.unet) as rec:
            got = collect(ex.invert, images, save_indices=(49, 45), layers=[(1, 0)])
    finally:
        handle.remove()
    assert len(rec.calls) == 5  # index 45 = step 4: steps 5..49 are not run
    # up block 3 runs in the 4 full steps but not in the last one, which stops after layer (1, 0)
    assert len(late) == 4
    assert set(got) == {(0, 0), (1, 0)}


# ------------------------------------------------------------------------------------------------
# (5) generation: conditional pass, slots in inversion order
# ------------------------------------------------------------------------------------------------
def test_generation_slot_order_and_conditional_pass(tiny):
    ex = extractor(tiny)
    unet = ex.unet
    per_call = []
    handle = unet.up_blocks[2].resnets[1].conv2.register_forward_hook(
        lambda m, a, out: per_call.append(out.detach().clone()))
    try:
        with UNetCalls(unet) as rec:
            got: dict = {}
            imgs = ex.generate(["a photo of a cat", "a dog"], negative_prompt="ugly", guidance=7.5, seed=5,
                               save_indices=PAPER_SAVE_INDICES, layers=[(2, 1)],
                               consume=lambda s, l, f: got.__setitem__(s, f.clone()))
    finally:
        handle.remove()
    assert imgs.shape == (2, 3, SIZE, SIZE) and imgs.dtype == torch.float32
    assert float(imgs.min()) >= 0 and float(imgs.max()) <= 1
    timesteps = [float(t[0]) for _, t in rec.calls]
    assert timesteps == [980 - 20 * n for n in range(50)]
    assert all(sample.shape[0] == 4 for sample, _ in rec.calls)  # [uncond, cond] in one batch
    for s, k in enumerate(PAPER_SAVE_INDICES):
        call = timesteps.index(980 - 20 * k)  # slot 0 = t 0 (clean end), slot 10 = t 980 (P9)
        cond, uncond = per_call[call][2:], per_call[call][:2]
        torch.testing.assert_close(got[s], resize(cond), rtol=1e-5, atol=1e-5, msg=f"slot {s}")
        assert not torch.allclose(got[s], resize(uncond), atol=1e-4)
    assert [980 - 20 * k for k in PAPER_SAVE_INDICES][:3] == [0, 80, 180]


def test_generation_is_seeded(tiny):
    ex = extractor(tiny, num_steps=5)
    run = lambda seed: ex.generate(["a cat"], guidance=-1, seed=seed, save_indices=(4,),  # noqa: E731
                                   layers=[(3, 2)], consume=lambda *a: None)
    torch.testing.assert_close(run(1), run(1))
    assert not torch.allclose(run(1), run(2))


# ------------------------------------------------------------------------------------------------
# Latent draw, batch independence, autograd for trainers
# ------------------------------------------------------------------------------------------------
def test_latent_draw_is_seeded_and_batch_independent(tiny, images):
    def feats(ex, imgs):
        with torch.inference_mode():
            return collect(ex.one_step, imgs, layers=[(3, 2)])[(0, 0)]

    sample = extractor(tiny, latent="sample", seed=0)
    pair = feats(sample, images)
    alone = feats(sample, images[1:])
    torch.testing.assert_close(alone[0], pair[1], rtol=1e-4, atol=1e-5)  # same image, other batch
    torch.testing.assert_close(feats(sample, images), pair)
    assert not torch.allclose(feats(extractor(tiny, latent="sample", seed=1), images), pair, atol=1e-4)
    assert not torch.allclose(feats(extractor(tiny, latent="mode"), images), pair, atol=1e-4)


def test_posterior_noise_depends_on_seed_and_image_not_on_batch(tiny, images):
    """Each image's draw comes from (seed, image content): source and target never share their noise."""
    a, b = images[0], images[1]

    def noise(ex, batch):
        """The standard-normal draw ε of each image, recovered from z = (mean + std · ε) · scale."""
        with torch.inference_mode():
            z = ex.encode(batch) / ex.components.scaling_factor
            x = F.interpolate(batch * 2 - 1, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            dists = [ex.components.vae.encode(x[i:i + 1]).latent_dist for i in range(len(batch))]
            mean, std = torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])
        return (z - mean) / std

    ex = extractor(tiny, latent="sample", seed=0)
    ab = noise(ex, torch.stack([a, b]))
    shape = ab.shape[1:]
    # the documented rule, recomputed independently (hashlib + a CPU generator)
    torch.testing.assert_close(ab[0], ref_noise(a, 0, shape), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(ab[1], ref_noise(b, 0, shape), rtol=1e-3, atol=1e-3)
    assert (ab[0] - ab[1]).abs().mean() > 0.5  # two images, two independent draws
    # the same image gets the same draw whatever batch it is in and wherever it sits
    ba = noise(ex, torch.stack([b, a]))
    torch.testing.assert_close(ba[0], ab[1], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(ba[1], ab[0], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(noise(ex, b[None])[0], ab[1], rtol=1e-3, atol=1e-3)
    aa = noise(ex, torch.stack([a, a]))
    torch.testing.assert_close(aa[0], aa[1], rtol=1e-3, atol=1e-3)
    # another seed, another draw
    other = noise(extractor(tiny, latent="sample", seed=1), torch.stack([a, b]))
    assert (other - ab).abs().mean() > 0.5
    torch.testing.assert_close(other[0], ref_noise(a, 1, shape), rtol=1e-3, atol=1e-3)
    # a one-value change of the image content changes its draw
    a2 = a.clone()
    a2[0, 0, 0] = 1.0 - a2[0, 0, 0]
    assert (noise(ex, a2[None])[0] - ab[0]).abs().mean() > 0.5


def test_consume_outside_inference_mode_can_train(tiny, images):
    ex = extractor(tiny)
    head = torch.nn.Conv2d(ex.layer_channels([(1, 0)])[0], 3, 1)
    losses = []

    def consume(slot, position, feat):
        assert not feat.is_inference() and torch.is_grad_enabled()
        losses.append(head(feat).pow(2).mean())

    ex.one_step(images, layers=[(1, 0)], consume=consume)
    losses[0].backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()

    with torch.inference_mode():  # inside inference mode the consumer stays there
        ex.one_step(images, layers=[(1, 0)], consume=lambda s, l, f: losses.append(f.is_inference()))
    assert losses[-1] is True


# ------------------------------------------------------------------------------------------------
# Loading: shared components, lean memory, errors, identities, published architectures
# ------------------------------------------------------------------------------------------------
def test_components_shared_and_lean(tiny, images):
    loading.clear_cache()  # a fresh set: generation tests before this one keep the text encoder on purpose
    a, b = extractor(tiny), extractor(tiny, latent="mode", num_steps=10)
    assert a.unet is b.unet
    with torch.inference_mode():
        a.one_step(images, layers=[(0, 0)], consume=lambda *x: None)
    comps = a.components
    assert comps.vae.decoder is None  # inversion never decodes
    assert comps._text_encoder is None  # released once the empty prompt is embedded
    assert "" in comps._embeddings
    with torch.inference_mode():
        b.generate(["a cat"], guidance=-1, seed=0, save_indices=(), layers=(), consume=lambda *x: None)
    assert comps._text_encoder is not None  # generation keeps it for the next prompts
    assert a.layer_channels() == [16, 16, 16, 12, 12, 12, 8, 8, 8, 4, 4, 4]


def test_missing_weights_are_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="does not exist"):
        SDFeatureExtractor(str(tmp_path / "nope" / "sd")).unet
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="unet/"):
        SDFeatureExtractor(str(tmp_path / "empty")).unet
    # a hub id that is not in the (empty) local cache, offline: says how to get it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsError, match="huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5"):
        loading._load_diffusers(loading.resolve_source(SD15), "unet", UNet2DConditionModel, "float32")


def test_invalid_arguments_are_usage_errors(tiny, images):
    with pytest.raises(UsageError, match="latent"):
        SDFeatureExtractor(str(tiny), latent="median")
    with pytest.raises(UsageError, match="multiple of 8"):
        SDFeatureExtractor(str(tiny), image_size=100)
    ex = extractor(tiny)
    with pytest.raises(UsageError, match=r"\(4, 0\) does not exist"):
        ex.invert(images, save_indices=(49,), layers=[(4, 0)], consume=lambda *a: None)
    with pytest.raises(UsageError, match="outside 0..49"):
        ex.invert(images, save_indices=(50,), layers=LAYERS, consume=lambda *a: None)
    assert loading.resolve_dtype("auto", "cuda:0") == "float16"
    assert loading.resolve_dtype("auto", "cpu") == "float32"
    assert loading.resolve_dtype("bf16", "cpu") == "bfloat16"
    with pytest.raises(UsageError, match="sd.dtype"):
        loading.resolve_dtype("int8", "cpu")


def test_weights_identity_tracks_the_folder(tiny, tmp_path):
    src = loading.resolve_source(str(tiny))
    first = loading.weights_identity(src)
    assert first == loading.weights_identity(src)
    assert loading.weights_identity(src, "random") != first
    weight_file = tiny / "unet" / "diffusion_pytorch_model.safetensors"
    st = weight_file.stat()
    os.utime(weight_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        assert loading.weights_identity(src) != first
    finally:
        os.utime(weight_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert loading.weights_identity(loading.resolve_source(SD21), "random").startswith("random:")


def test_random_weights_from_folder_config(tiny, images):
    ex = extractor(tiny, weights="random")
    real = extractor(tiny)
    assert ex.unet is not real.unet
    assert ex.layer_channels() == real.layer_channels()
    with torch.inference_mode():
        a = collect(ex.one_step, images, layers=[(2, 0)])[(0, 0)]
        b = collect(real.one_step, images, layers=[(2, 0)])[(0, 0)]
    assert torch.isfinite(a).all() and not torch.allclose(a, b)


@pytest.mark.parametrize("model_id", [SD15, SD21])
def test_published_architectures_have_dhf_channels(model_id):
    arch = architecture(model_id)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(arch["unet"])
    channels = [unet.up_blocks[i].resnets[j].conv2.out_channels for i, j in LAYERS]
    assert channels == [1280] * 6 + [640] * 3 + [320] * 3 and sum(channels) == 10560
    assert arch["text_encoder"]["hidden_size"] == arch["unet"]["cross_attention_dim"]
    assert arch["vae"]["scaling_factor"] == 0.18215


def test_random_hub_architecture_empty_prompt_without_tokenizer(tmp_path, monkeypatch):
    """weights=random on a hub id builds [bos, eos, pad…] for the empty prompt; text needs a tokenizer."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    comps = loading.SDComponents(loading.resolve_source(SD21), "random", "cpu", "float32")
    ids = comps._token_ids(["", ""])
    assert ids.shape == (2, 77) and ids[0, :3].tolist() == [49406, 49407, 0]
    with pytest.raises(WeightsError, match="tokenizer"):
        comps._token_ids(["a cat"])
