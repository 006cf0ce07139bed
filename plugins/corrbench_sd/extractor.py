"""Stable Diffusion decoder features during DDIM inversion (real images) or generation (prompts).

Exactly DHF's pipeline (docs/methods.md#stable-diffusion-features and docs/methods.md#generation):
images in [0, 1] → [−1, 1] → bilinear to
``image_size`` (512) → VAE encode, a sample seeded by (seed, image content) (or the mode) × scaling
factor (0.18215) → ``num_steps``
(50) DDIM inversion steps with η = 0, empty prompt, no guidance, UNet timestep −1 at the first step →
forward hooks on ``up_blocks[i].resnets[j].conv2`` → each map bilinearly resized to
``output_resolution`` (64) → ``consume(slot, layer_position, feature)``.

The consumer decides what to keep: a raw-feature method copies one map, DHF's streaming aggregator
runs each map through its bottleneck at once, so the 11 × 10,560-channel stack never exists.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from corrbench.errors import UsageError

from .configs import SD15, SD21
from .ddim import DDIMSchedule, Step, ddim_update
from .hooks import Conv2Capture, StopForward, check_layers
from .loading import SDComponents, get_components
from .speed import as_bool, check_channels_last, compile_mode, is_compiled, padded_batch, prepare_unet

__all__ = ["LAYERS", "PAPER_SAVE_INDICES", "SD15", "SD21", "SDFeatureExtractor", "LATENT_MODES", "posterior_seed"]

#: DHF's 12 decoder layers, named 1 … 12 in this order (docs/methods.md#the-12-decoder-layers).
LAYERS: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2),
                                       (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2))
#: DHF's saved step indices, clean first (slot s = position in this tuple; UNet t = −1, 60, …, 960).
PAPER_SAVE_INDICES: tuple[int, ...] = (49, 45, 40, 35, 30, 25, 20, 15, 10, 5, 0)
LATENT_MODES = ("sample", "mode")


def latent_rule(latent: str, seed: int) -> str:
    """How the latent of an image is drawn, in words, for results.json (what changed in version 2)."""
    if latent == "mode":
        return "VAE posterior mean (mode) x scaling factor; no noise"
    return (f"VAE posterior mean + std * eps x scaling factor; eps ~ N(0, I) from a CPU generator seeded per image "
            f"with sha256('{int(seed)}:HxW:' + the image's float32 bytes before resizing)[:8] (little-endian, "
            f"63 bits), so source and target draw different noise and the batch cannot change it "
            f"(corrbench_sd.extractor.posterior_seed; before corrbench-sd method version 2 every image drew the "
            f"same noise)")

Consume = Callable[[int, int, "object"], None]


def posterior_seed(image, seed: int) -> int:
    """The generator seed of one image's posterior draw (``latent=sample``), from ``seed`` and its content.

    ``image`` is one 3×H×W image in [0, 1] exactly as handed to :meth:`SDFeatureExtractor.encode`
    (before any resizing). The rule: ``digest = sha256(f"{seed}:{H}x{W}:".encode("ascii") + data)``,
    where ``data`` is the image as float32, C-contiguous, little-endian bytes (moved to the CPU); the
    generator seed is the first 8 bytes of the digest read as a little-endian unsigned integer, masked
    to 63 bits. The draw is ``torch.randn(latent_shape, generator=torch.Generator("cpu").manual_seed(s),
    dtype=torch.float32)``.
    """
    import hashlib

    import numpy as np
    import torch

    data = image.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    data = np.ascontiguousarray(data, dtype="<f4")
    H, W = data.shape[-2:]
    digest = hashlib.sha256(f"{int(seed)}:{H}x{W}:".encode("ascii") + data.tobytes()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


class SDFeatureExtractor:
    """Captures SD decoder features; see the module docstring for the exact semantics.

    Args:
        model: hub id (``SD15``, ``SD21``) or a local diffusers folder.
        device: torch device string.
        dtype: ``auto`` (float16 on CUDA, float32 on CPU), ``float16``, ``bfloat16`` or ``float32``.
        latent: ``sample`` (a seeded draw from the VAE posterior, DHF's choice) or ``mode`` (its mean).
        seed: seed of the posterior draw. Each image gets the draw of a CPU generator seeded from ``seed``
            *and the image's content* (a sha256 of its float32 bytes as handed to :meth:`encode`, before
            resizing; exact rule: :func:`posterior_seed`). So different images (a source and its target)
            get different noise, while an image's features depend neither on the batch it is in nor on
            its position there, nor on the device (the feature cache relies on this).
        num_steps: DDIM steps (paper: 50).
        image_size: side of the square UNet input image (paper: 512; the latent is ``image_size / 8``).
        output_resolution: side of the resized feature maps (paper: 64).
        weights: ``pretrained`` or ``random`` (the architecture with random weights, for offline tests).
        compile: ``torch.compile`` the UNet: false, true or a torch.compile mode (see ``speed``).
        channels_last: store the UNet's weights channels-last (faster convolutions on tensor cores).
            Refused on a CPU device (a UsageError): torch's CPU GroupNorm loses precision on
            channels-last float32 inputs. Inputs to :meth:`encode` are made contiguous NCHW whatever
            their strides, for the same reason.
        compile_backend: torch.compile backend (``inductor``; tests use ``eager`` to count graphs fast).

    ``consume`` runs inside the UNet forward, as each map is computed (eager UNet), or right after the
    call (compiled UNet, see ``hooks``). When the caller is in ``torch.inference_mode`` it runs
    there too and gets inference tensors; otherwise it runs outside inference mode, in the caller's
    grad mode, on a fresh copy of the feature (so a trainer can feed it to modules that need autograd).
    """

    def __init__(self, model: str = SD15, *, device: str = "cpu", dtype: str = "auto", latent: str = "sample",
                 seed: int = 0, num_steps: int = 50, image_size: int = 512, output_resolution: int = 64,
                 weights: str = "pretrained", compile: Any = False, channels_last: Any = False,
                 compile_backend: str = "inductor"):
        if latent not in LATENT_MODES:
            raise UsageError(f"sd.latent {latent!r} is not one of {', '.join(LATENT_MODES)}")
        if int(image_size) < 8 or int(image_size) % 8:
            raise UsageError(f"sd.image_size must be a positive multiple of 8, got {image_size}")
        if int(output_resolution) < 1:
            raise UsageError(f"sd.output_resolution must be positive, got {output_resolution}")
        self.model = str(model)
        self.device = str(device)
        self.dtype = dtype
        self.latent = latent
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.output_resolution = int(output_resolution)
        self.weights = weights
        self.compile_mode = compile_mode(compile)
        self.channels_last = as_bool(channels_last, "sd.channels_last")
        check_channels_last(self.channels_last, self.device)  # CPU GroupNorm on channels-last is imprecise
        self.compile_backend = compile_backend
        self.schedule = DDIMSchedule(num_steps)
        self.num_steps = self.schedule.num_steps
        self._components: SDComponents | None = None

    # -- model ------------------------------------------------------------------------------------
    @property
    def components(self) -> SDComponents:
        if self._components is None:
            components = get_components(self.model, weights=self.weights, device=self.device, dtype=self.dtype)
            prepare_unet(components.unet, mode=self.compile_mode, channels_last=self.channels_last,
                         backend=self.compile_backend)
            self._components = components
        return self._components

    @property
    def unet(self):
        return self.components.unet

    def layer_channels(self, layers: Sequence[tuple[int, int]] = LAYERS) -> list[int]:
        """Channels of each hooked conv2 output (SD-1.5/2.1: 1280 × 6, 640 × 3, 320 × 3)."""
        unet = self.unet
        return [unet.get_submodule(f"up_blocks.{i}.resnets.{j}.conv2").out_channels
                for i, j in check_layers(unet, layers)]

    # -- encoding -----------------------------------------------------------------------------------
    def encode(self, images):
        """B×3×H×W in [0, 1] → float32 latents × scaling factor (B×4×image_size/8×image_size/8)."""
        import torch
        import torch.nn.functional as F

        if images.ndim != 4 or images.shape[1] != 3:
            raise UsageError(f"SD extractor input must be B×3×H×W, got {tuple(images.shape)}")
        comps = self.components
        vae = comps.vae
        # the posterior draw's seeds come from the images exactly as handed in (before any resizing)
        seeds = [posterior_seed(image, self.seed) for image in images] if self.latent == "sample" else []
        # contiguous NCHW whatever the caller's strides: on a CPU, GroupNorm on a channels-last float32
        # input loses precision (see speed.CHANNELS_LAST_CPU_REFUSAL), and a stacked HWC→CHW numpy
        # batch arrives channels-last
        x = images.to(device=self.device, dtype=torch.float32).contiguous() * 2.0 - 1.0
        if x.shape[-2:] != (self.image_size, self.image_size):
            # DHF: F.interpolate(..., mode="bilinear") without antialias (pitfall P14)
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
            x = x.contiguous()
        # one image at a time: at 512 px the encoder holds about five 128-channel full-resolution maps
        # at its peak (640 MB per image in float32, measured: benchmarks/README.md), which would
        # otherwise be most of a batch's peak memory; the 50 UNet calls that follow dwarf its cost
        dists = [vae.encode(image.to(vae.dtype).contiguous()).latent_dist for image in x.split(1)]
        mean = torch.cat([d.mean for d in dists])
        if self.latent == "mode":
            z = mean  # the mode of a diagonal Gaussian
        else:
            # one draw per image from a CPU generator seeded by (seed, image content): batch-, position-
            # and device-independent, and different images get different noise
            gen = torch.Generator("cpu")
            noise = []
            for s in seeds:
                gen.manual_seed(s)
                noise.append(torch.randn(mean.shape[1:], generator=gen, dtype=torch.float32))
            eps = torch.stack(noise).to(device=self.device, dtype=mean.dtype)
            z = mean + torch.cat([d.std for d in dists]) * eps
        return z.float() * comps.scaling_factor

    # -- inversion ----------------------------------------------------------------------------------
    def invert(self, images, *, save_indices: Sequence[int] = PAPER_SAVE_INDICES,
               layers: Sequence[tuple[int, int]] = LAYERS, consume: Consume) -> None:
        """DDIM-invert ``images`` and call ``consume(slot, layer_position, feature)`` for every saved map.

        ``slot`` is the position of the step's index in ``save_indices``; ``feature`` is B×C×R×R float32.
        Steps after the last saved one are not run (nothing could observe them), and the UNet forward
        of that step stops after the deepest requested layer.
        """
        import torch

        indices = self.schedule.check_indices(save_indices)
        layers = check_layers(self.unet, layers)
        if not indices or not layers:
            return
        capture = self._capture(layers, consume)
        slot_of = {k: s for s, k in enumerate(indices)}
        steps = self.schedule.inversion_steps()
        steps = steps[: self.num_steps - min(indices)]  # up to the step of the smallest saved index
        # a compiled UNet is traced once: no early-stop exception or consumer work inside it, one batch size
        eager = not is_compiled(self.unet)
        with torch.inference_mode(), capture.attached(self.unet):
            x = self.encode(images)
            batch = x.shape[0]
            run_batch = padded_batch(batch, self.unet)
            if run_batch > batch:
                x = torch.cat([x, x.new_zeros((run_batch - batch, *x.shape[1:]))])
                capture.batch_slice = slice(0, batch)
            context = self.components.text_embeddings([""]).expand(run_batch, -1, -1).contiguous()
            for n, step in enumerate(steps):
                capture.slot = slot_of.get(step.index)
                last = n == len(steps) - 1
                capture.stop_after = capture.deepest() if last and eager else None
                eps = self._unet(x, step, context, capture, stop=last and eager)
                if not last:
                    x = ddim_update(x, eps, step)

    def one_step(self, images, *, layers: Sequence[tuple[int, int]] = LAYERS, consume: Consume) -> None:
        """Only the clean pass (UNet at t = −1 on the clean latent), reported as slot 0."""
        self.invert(images, save_indices=(self.num_steps - 1,), layers=layers, consume=consume)

    # -- generation ---------------------------------------------------------------------------------
    def generate(self, prompts: list[str], *, negative_prompt: str = "", guidance: float = 7.5, seed: int = 0,
                 save_indices: Sequence[int] = PAPER_SAVE_INDICES, layers: Sequence[tuple[int, int]] = LAYERS,
                 consume: Consume):
        """Generate one image per prompt (DDIM, η = 0) and capture features of the conditional pass.

        Generation step i runs the UNet at t = 980 − 20 i (50 steps) and stores index k = i; slots follow
        ``save_indices``, so with the paper's indices slot 0 is the last, cleanest step (t = 0) and the
        slots line up with inversion order (docs/protocol.md#p9-generation-inversion-slot-offset:
        t = 0, 80, …, 980 against
        inversion's −1, 60, …, 960). Classifier-free guidance runs the unconditional and conditional
        passes as one batch; ``guidance`` < 0 (DHF's −1) or = 1 runs the conditional pass alone.
        Returns the decoded images, B×3×image_size×image_size float32 in [0, 1].
        """
        import torch

        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise UsageError("generate needs at least one prompt")
        indices = self.schedule.check_indices(save_indices)
        layers = check_layers(self.unet, layers)
        comps = self.components
        B = len(prompts)
        use_cfg = not (guidance < 0 or guidance == 1)
        capture = self._capture(layers, consume)
        slot_of = {k: s for s, k in enumerate(indices)}
        side = self.image_size // self._vae_factor()
        with torch.inference_mode(), capture.attached(self.unet):
            cond = comps.text_embeddings(prompts, keep_encoder=True)
            if use_cfg:
                uncond = comps.text_embeddings([negative_prompt] * B, keep_encoder=True)
                context = torch.cat([uncond, cond])
                capture.batch_slice = slice(B, None)  # features of the conditional pass only
            else:
                context = cond
            gen = torch.Generator("cpu").manual_seed(int(seed))
            x = torch.randn((B, 4, side, side), generator=gen, dtype=torch.float32).to(self.device)
            for step in self.schedule.generation_steps():
                capture.slot = slot_of.get(step.index) if layers else None
                if use_cfg:
                    eps_u, eps_c = self._unet(torch.cat([x, x]), step, context, capture, stop=False).chunk(2)
                    eps = eps_u + guidance * (eps_c - eps_u)
                else:
                    eps = self._unet(x, step, context, capture, stop=False)
                x = ddim_update(x, eps, step)
            vae = comps.decoder_vae()
            decoded = vae.decode((x / comps.scaling_factor).to(vae.dtype)).sample
            images = (decoded.float() / 2 + 0.5).clamp(0, 1)
        return images

    # -- internals ----------------------------------------------------------------------------------
    def _vae_factor(self) -> int:
        return 2 ** (len(self.components.vae.config.block_out_channels) - 1)

    def _capture(self, layers, consume) -> Conv2Capture:
        import torch

        grad_mode = None if torch.is_inference_mode_enabled() else torch.is_grad_enabled()
        capture = Conv2Capture(layers, consume, self.output_resolution, grad_mode=grad_mode)
        capture.drain_in_hook = not is_compiled(self.unet)  # eager: no map outlives its layer
        return capture

    def _unet(self, x, step: Step, context, capture: Conv2Capture, *, stop: bool):
        """One UNet call at ``step.t`` (float32 ε out), then its recorded maps drained to the consumer.

        With ``stop``, a StopForward from the deepest hooked layer ends the call early (returns None).
        """
        import torch

        unet = self.unet
        t = torch.full((x.shape[0],), float(step.t), device=x.device, dtype=torch.float32)
        sample = x.to(unet.dtype)
        if self.channels_last:
            sample = sample.contiguous(memory_format=torch.channels_last)
        elif is_compiled(unet):
            # one layout for every call: a compiled UNet guards on strides, and the VAE's latent (a view
            # into its moments) and the DDIM update's output differ there. Eager keeps the natural
            # strides, so its numbers stay bit-identical to earlier releases' cached features.
            sample = sample.contiguous()
        try:
            eps = unet(sample, t, encoder_hidden_states=context).sample.float()
        except StopForward:
            if not stop:  # pragma: no cover - stop_after is only set on the last step
                raise
            eps = None
        capture.drain()
        return eps
