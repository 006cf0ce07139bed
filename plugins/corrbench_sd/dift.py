"""DIFT (Tang et al., NeurIPS 2023): ``dift`` (SD-2.1) and ``dift-sd15``.

One noising step and one UNet call per noise draw, no inversion (docs/methods.md#dift):

1. image in [0, 1] → [−1, 1] → bilinear to ``sd.image_size`` (768) → VAE posterior → x0 = latent × scaling
   factor;
2. for each of ``ensemble_size`` (8) draws: x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε at ``t`` (261), ᾱ from SD's
   scaled-linear β schedule;
3. one UNet call on x_t at timestep t, conditioned on the prompt ``prompt`` with the image's category
   ("a photo of a {category}"), and the *output* of ``up_blocks[up_ft_index]`` (after its upsampler) is kept;
4. the kept maps are averaged over the draws: a B × C × h × w map at the block's own resolution (1/16 of
   the image for block 1), which the core's readout upsamples bilinearly as DIFT does.

Noise: with ``sd.latent=sample`` each draw also takes its own VAE posterior sample, as DIFT's batch of repeated
images does. All draws of one image come from one CPU generator seeded with
:func:`corrbench_sd.extractor.posterior_seed` (``sd.seed`` and the image's content): first the posterior
draws (E × latent, only with ``latent=sample``), then the forward-noise draws (E × latent). So an image's
features do not depend on its batch, its position there, nor the device.

The method declares ``uses_category``: the runner hands it one category per image (None when unknown, then
``unknown_category`` fills the template); the category is part of the feature-cache key.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from corrbench.api import Preprocess
from corrbench.errors import UsageError
from corrbench.options import Option

from .configs import SD15, SD21_V
from .methods import SD_SHARED_OPTIONS, SDDescriptor, _as_int

#: The prompt template of DIFT's SPair evaluation; ``{category}`` is replaced by the image's class name.
PROMPT_TEMPLATE = "a photo of a {category}"


def noise_level(t: int) -> float:
    """ᾱ_t of SD's training schedule (scaled-linear β from 0.00085 to 0.012 over 1000 steps)."""
    from .ddim import DDIMSchedule

    if not 0 <= int(t) < 1000:
        raise UsageError(f"DIFT timestep t must be in 0..999, got {t}")
    return DDIMSchedule(1).alpha(int(t))


def add_noise(x0, noise, t: int):
    """DIFT's forward noising step: √ᾱ_t · x0 + √(1 − ᾱ_t) · noise (diffusers' ``add_noise``)."""
    a = noise_level(t)
    return x0 * math.sqrt(a) + noise * math.sqrt(1.0 - a)


def prompt_for(template: str, category: str | None, unknown: str) -> str:
    """The prompt of one image: the template with its category (``unknown`` when it has none)."""
    name = category if category else unknown
    return template.replace("{category}", str(name))


def _template(value: str) -> str:
    if "{category}" not in value:
        raise ValueError("a prompt template containing {category}, e.g. 'a photo of a {category}'")
    return value


class _StopAfterBlock(Exception):
    """Raised by the up-block hook: nothing after the kept block is needed."""


class DIFT(SDDescriptor):
    """DIFT_sd: the averaged output of one UNet up-block after one noising step (SD-2.1, t = 261, block 1)."""

    name = "dift"
    description = "DIFT (Tang et al. 2023): SD-2.1 up_blocks[1] output after one noising step at t=261, 8-draw ensemble"
    uses_category = True
    version = "1"
    # DIFT resizes the original image straight to 768 × 768 with PIL's default (bicubic) filter
    preprocess = Preprocess(load_size=768, resize="square", resample="bicubic")
    cache_dtype = "float16"
    # rough s/image (GPU, CPU): 8 UNet calls at 768 px that stop after up-block 1
    cost_estimate = {"image": (1.2, 90.0)}
    default_config: dict[str, Any] = {
        **SD_SHARED_OPTIONS,
        "model": Option(SD21_V, "str", "hub id or local diffusers folder of the SD weights"),
        "image_size": Option(768, int, "UNet input side in pixels (load → bilinear → it)", min=8, multiple_of=8),
        "load_size": Option(768, int, "square test-time load size in pixels", min=1),
        "t": Option(261, int, "timestep of the single noising step and UNet call", min=0, max=999),
        "up_ft_index": Option(1, int, "index of the UNet up block whose output is the feature", min=0),
        "ensemble_size": Option(8, int, "noise draws averaged per image", min=1),
        "prompt": Option(PROMPT_TEMPLATE, str, "prompt template; {category} is the image's category",
                         check=_template),
        "unknown_category": Option("object", str, "what fills {category} when the image's category is unknown"),
    }

    def validate_config(self) -> None:
        self.t = _as_int(self.config["t"], f"{self.name}.t")
        noise_level(self.t)
        self.up_index = _as_int(self.config["up_ft_index"], f"{self.name}.up_ft_index")
        self.ensemble = _as_int(self.config["ensemble_size"], f"{self.name}.ensemble_size")

    # DIFT's UNet call happens on a noised latent with a per-category prompt: no other method computes it,
    # and a shared pass would not receive the categories
    def shared_pass(self):
        return None

    def extract_raw(self, images):
        raise UsageError(f"method {self.name!r} has no raw feature export (--raw); its output is already one "
                         "UNet block's map")

    def setup(self) -> None:
        super().setup()
        unet = self.extractor.unet
        if not 0 <= self.up_index < len(unet.up_blocks):
            raise UsageError(f"{self.name}.up_ft_index={self.up_index} does not exist: the UNet has "
                             f"{len(unet.up_blocks)} up blocks")

    # -- extraction ---------------------------------------------------------------------------------------
    def prompts(self, n: int, categories: Sequence[str | None] | None) -> list[str]:
        if categories is None:
            categories = [None] * n
        categories = list(categories)
        if len(categories) != n:
            raise UsageError(f"{self.name}: {len(categories)} categories for {n} images")
        return [prompt_for(str(self.config["prompt"]), c, str(self.config["unknown_category"])) for c in categories]

    def draws(self, image, latent_shape) -> tuple[Any, Any]:
        """(posterior draws or None, forward-noise draws), each E × latent, for one image (see module doc)."""
        import torch

        from .extractor import posterior_seed

        gen = torch.Generator("cpu").manual_seed(posterior_seed(image, int(self.config["seed"])))
        shape = (self.ensemble, *latent_shape)
        posterior = None
        if str(self.config["latent"]) == "sample":
            posterior = torch.randn(shape, generator=gen, dtype=torch.float32)
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        return posterior, noise

    def extract(self, images, categories: Sequence[str | None] | None = None):
        import torch
        import torch.nn.functional as F

        comps = self.extractor.components
        unet, vae = comps.unet, comps.vae
        prompts = self.prompts(images.shape[0], categories)
        size = _as_int(self.config["image_size"], "sd.image_size")
        found: dict[str, Any] = {}

        def hook(module, args, output):
            found["map"] = output
            raise _StopAfterBlock

        outs = []
        handle = unet.up_blocks[self.up_index].register_forward_hook(hook)
        try:
            unique = list(dict.fromkeys(prompts))  # one text-encoder pass per distinct prompt of the batch
            context_of = dict(zip(unique, comps.text_embeddings(unique, keep_encoder=True)))
            for image, prompt in zip(images, prompts):
                x = image[None].to(self.device, torch.float32) * 2.0 - 1.0
                if x.shape[-2:] != (size, size):
                    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
                dist = vae.encode(x.to(vae.dtype).contiguous()).latent_dist
                mean, std = dist.mean.float(), dist.std.float()
                posterior, noise = self.draws(image, tuple(mean.shape[1:]))
                z = mean if posterior is None else mean + std * posterior.to(mean.device)
                x_t = add_noise(z * comps.scaling_factor, noise.to(mean.device), self.t)
                t = torch.full((self.ensemble,), float(self.t), device=x_t.device, dtype=torch.float32)
                context = context_of[prompt][None].expand(self.ensemble, -1, -1).contiguous()
                found.clear()
                try:
                    unet(x_t.to(unet.dtype), t, encoder_hidden_states=context)
                except _StopAfterBlock:
                    pass
                outs.append(found.pop("map").float().mean(dim=0))
        finally:
            handle.remove()
        return torch.stack(outs)

    def run_info(self) -> dict[str, Any]:
        return {**super().run_info(), "t": self.t, "alpha_bar_t": noise_level(self.t), "up_ft_index": self.up_index,
                "ensemble_size": self.ensemble, "prompt_template": str(self.config["prompt"]),
                "unknown_category": str(self.config["unknown_category"]),
                "noise": "per image: one CPU generator seeded like sd.latent=sample's posterior draw; posterior "
                         "draws (E x latent, latent=sample only) first, then the forward-noise draws (E x latent)"}

    @classmethod
    def tiny_config(cls, workdir):
        cfg = super().tiny_config(workdir)
        cfg.update(ensemble_size=2)
        return cfg


class DIFTSD15(DIFT):
    """DIFT on SD-1.5: DIFT's SD-2.1 settings (t = 261, up block 1, 768 px) on the SD-1.5 UNet [unverified]."""

    name = "dift-sd15"
    description = "DIFT on SD-1.5: up_blocks[1] output after one noising step at t=261, 8-draw ensemble"
    default_config: dict[str, Any] = {
        **DIFT.default_config, "model": Option(SD15, "str", "hub id or local diffusers folder of the SD weights")}


__all__ = ["DIFT", "DIFTSD15", "PROMPT_TEMPLATE", "add_noise", "noise_level", "prompt_for"]
