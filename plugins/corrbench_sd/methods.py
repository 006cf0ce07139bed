"""Raw Stable Diffusion feature descriptors: ``sd-layer-4``, ``sd-concat-all`` and ``sd-layer``.

All three run the shared pipeline of docs/methods.md#stable-diffusion-features (square 224 load →
512 → VAE → DDIM inversion
with conv2 hooks → 64 × 64 maps) and hand a B×C×64×64 map to the core's nearest-neighbour readout,
which upsamples it bilinearly to the load size exactly as DHF does (a spanning FeatureGrid).

Keys shared by every SD-based method (also DHF's) live in the ``sd`` namespace, so
``--set sd.model=PATH`` reaches all of them: see :data:`SD_SHARED_DEFAULTS`.
"""

from __future__ import annotations

import json
from typing import Any

import corrbench
from corrbench.api import Preprocess
from corrbench.errors import UsageError
from corrbench.options import Option

from .configs import SD15
from .ddim import DDIMSchedule
from .extractor import LAYERS, PAPER_SAVE_INDICES, SDFeatureExtractor
from .shared import InversionPass, InversionPlan, inversion_pass, run_plans
from .speed import check_runtime_config

#: Every key shared by SD-based methods, with its default (``--set sd.<key>=value``).
SD_SHARED_DEFAULTS: dict[str, Any] = {
    "model": SD15,  # hub id or local diffusers folder
    "weights": "pretrained",  # or "random": the architecture with random weights (offline tests)
    "dtype": "auto",  # float16 on CUDA, float32 on CPU
    # seeded VAE posterior draw (paper); "mode" = posterior mean. Each image's draw comes from a CPU
    # generator seeded by (seed, a sha256 of the image's float32 bytes): see extractor.posterior_seed
    "latent": "sample",
    "seed": 0,  # seed of that draw
    "num_steps": 50,  # DDIM inversion steps
    "image_size": 512,  # UNet input side (224 load → bilinear → 512)
    "output_resolution": 64,  # side of every captured map
    "load_size": 224,  # the paper's test-time load size (square, PIL bilinear)
    "raw_indices": list(PAPER_SAVE_INDICES),  # saved steps exported by `corrbench extract --raw`
    "compile": False,  # torch.compile the UNet: true (max-autotune-no-cudagraphs) or a mode name
    "channels_last": False,  # channels-last UNet weights and inputs (CUDA only: refused on CPU)
}


def _dtype_name(value: str) -> str:
    from .loading import _DTYPES

    if value.strip().lower() != "auto" and value.strip().lower() not in _DTYPES:
        raise ValueError("one of auto, float16, bfloat16, float32")
    return value


def _compile_value(value: Any) -> Any:
    from .speed import compile_mode

    compile_mode(value)  # a UsageError naming the modes when it is not one
    return value


#: The typed form of :data:`SD_SHARED_DEFAULTS`: type, range or choices and a one-line doc per key.
SD_SHARED_OPTIONS: dict[str, Option] = {
    "model": Option(SD_SHARED_DEFAULTS["model"], "str", "hub id or local diffusers folder of the SD weights"),
    "weights": Option(SD_SHARED_DEFAULTS["weights"], str, "pretrained, or random: the architecture with random "
                      "weights, for offline tests", choices=("pretrained", "random")),
    "dtype": Option(SD_SHARED_DEFAULTS["dtype"], str, "UNet/VAE dtype: auto = float16 on CUDA, float32 on CPU",
                    check=_dtype_name),
    "latent": Option(SD_SHARED_DEFAULTS["latent"], str, "sample = seeded VAE posterior draw (paper), one per "
                     "image from a CPU generator seeded by sd.seed and a sha256 of the image's float32 pixels "
                     "(different images, different noise; batch- and device-independent); mode = the posterior "
                     "mean", choices=("sample", "mode")),
    "seed": Option(SD_SHARED_DEFAULTS["seed"], int, "seed of the posterior draw (combined with each image's "
                   "content hash)", min=0),
    "num_steps": Option(SD_SHARED_DEFAULTS["num_steps"], int, "DDIM inversion steps", min=1, max=1000),
    "image_size": Option(SD_SHARED_DEFAULTS["image_size"], int, "UNet input side in pixels (load → bilinear → it)",
                         min=8, multiple_of=8),
    "output_resolution": Option(SD_SHARED_DEFAULTS["output_resolution"], int, "side of every captured map", min=1),
    "load_size": Option(SD_SHARED_DEFAULTS["load_size"], int, "square test-time load size in pixels", min=1),
    "raw_indices": Option(SD_SHARED_DEFAULTS["raw_indices"], list, "saved step indices (0..num_steps-1) that "
                          "`corrbench extract --raw` exports", item=int),
    "compile": Option(SD_SHARED_DEFAULTS["compile"], "json", "torch.compile the UNet: true "
                      "(max-autotune-no-cudagraphs), false or a torch.compile mode name", check=_compile_value),
    "channels_last": Option(SD_SHARED_DEFAULTS["channels_last"], bool, "channels-last UNet weights and inputs "
                            "(CUDA only: refused on CPU, where GroupNorm on channels-last float32 loses precision)"),
}
#: Keys that change the speed of extraction, never its result: left out of the feature-cache key.
SD_RUNTIME_KEYS: tuple[str, ...] = ("compile", "channels_last")
SD_SHARED_KEYS: tuple[str, ...] = tuple(SD_SHARED_DEFAULTS)
#: Extractor constructor arguments that come straight from the shared config.
_EXTRACTOR_KEYS = ("model", "weights", "dtype", "latent", "seed", "num_steps", "image_size", "output_resolution",
                   "compile", "channels_last")


def make_extractor(config: dict[str, Any], device: str) -> SDFeatureExtractor:
    """An :class:`SDFeatureExtractor` for a resolved method config (components are shared per process)."""
    kwargs = {k: config[k] for k in _EXTRACTOR_KEYS if k in config}
    for key in ("seed", "num_steps", "image_size", "output_resolution"):
        if key in kwargs:
            kwargs[key] = _as_int(kwargs[key], f"sd.{key}")
    return SDFeatureExtractor(device=device, **kwargs)


def _as_int(value: Any, what: str) -> int:
    try:
        if isinstance(value, bool) or float(value) != int(float(value)):
            raise ValueError
        return int(float(value))
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be an integer, got {value!r}") from None


def parse_block(value: Any, what: str = "block") -> tuple[int, int]:
    """``[1, 0]``, ``(1, 0)``, ``"1,0"`` or ``"(1, 0)"`` → (1, 0)."""
    if isinstance(value, str):
        text = value.strip().strip("()[]")
        try:
            value = [int(v) for v in text.split(",")]
        except ValueError:
            raise UsageError(f"{what} {value!r} is not an (up_block, resnet) pair such as [1, 0]") from None
    try:
        i, j = (int(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} {value!r} is not an (up_block, resnet) pair such as [1, 0]") from None
    return i, j


class SDDescriptor(corrbench.Descriptor):
    """Base of the SD feature methods: shared config, preprocessing, weights identity and raw export."""

    config_namespaces = {"sd": SD_SHARED_KEYS}
    runtime_keys = SD_RUNTIME_KEYS
    preprocess = Preprocess(load_size=224, resize="square", resample="bilinear")
    # a 64 × 64 map has 1,280 (Layer-4) to 10,560 (Concat-All) channels: 10–86 MB per image in float16
    cache_dtype = "float16"
    default_config: dict[str, Any] = dict(SD_SHARED_OPTIONS)
    # 2: per-image posterior draws seeded by (seed, image content); VAE input made contiguous NCHW
    version = "2"

    def __init__(self, config: dict[str, Any] | None = None, device: str = "cpu"):
        super().__init__(config, device)
        self.schedule = DDIMSchedule(_as_int(self.config["num_steps"], "sd.num_steps"))
        try:
            self.raw_indices = self.schedule.check_indices(self.config["raw_indices"])
        except UsageError:
            if self.config["raw_indices"] != SD_SHARED_DEFAULTS["raw_indices"]:
                raise  # set explicitly, and wrong: say so now
            # the paper's default indices only fit 50 steps; other step counts need them only for --raw
            self.raw_indices = None
        check_runtime_config(self.config, device)
        self._weights_identity: str | None = None
        self.validate_config()

    @classmethod
    def tiny_config(cls, workdir):
        from .tiny import tiny_sd_config

        return tiny_sd_config(workdir)

    def validate_config(self) -> None:
        """Check method-specific keys before anything is loaded (subclasses)."""

    def setup(self) -> None:
        self.extractor = make_extractor(self.config, self.device)
        self.extractor.components  # load now, so a missing model fails before the first batch

    # one inversion serves every SD-based method of a run with the same settings (shared.py)
    def shared_pass(self) -> InversionPass:
        return inversion_pass(self.config, self.device)

    def inversion_plan(self, images) -> InversionPlan:
        """The maps this method keeps from the inversion of ``images`` and how it builds its output."""
        raise NotImplementedError

    def extract(self, images):
        return run_plans(self.extractor, [self.inversion_plan(images)], images)[0]

    def weights_identity(self) -> str:
        """The SD weights' identity, resolved once after the weights are (a hub id: the loaded snapshot's
        commit, loading the weights first when they are not in the local cache) and then memoised."""
        if self._weights_identity is None:
            from .loading import resolve_source, weights_identity

            self._weights_identity = weights_identity(
                resolve_source(self.config["model"]), str(self.config["weights"]),
                load=lambda: make_extractor(self.config, self.device).components)
        return self._weights_identity

    def requirements(self) -> list[corrbench.Requirement]:
        """The SD pipeline of ``sd.model`` in ``sd.weights`` mode (folder, or Hugging Face cache; no download)."""
        from .requirements import sd_requirement

        return [sd_requirement(self.config["model"], self.config["weights"])]

    def run_info(self) -> dict[str, Any]:
        from .extractor import latent_rule

        info: dict[str, Any] = {"sd_model": str(self.config["model"]), "weights": self.weights_identity(),
                                "scheduler": "DDIM (paper config, eta=0, UNet t=-1 first)",
                                "latent": latent_rule(str(self.config["latent"]), int(self.config["seed"]))}
        extractor = getattr(self, "extractor", None)
        if extractor is not None and extractor._components is not None:
            comps = extractor.components
            info.update(dtype=comps.dtype, device=comps.device, latent_scaling=comps.scaling_factor)
        return info

    def extract_raw(self, images):
        """(B, S, C_total, R, R) float32 on the CPU: every saved step of ``raw_indices`` (inversion order),
        the 12 layers concatenated along channels in DHF's order — the aggregation network's input."""
        if self.raw_indices is None:
            raise UsageError(f"sd.raw_indices {self.config['raw_indices']} do not fit sd.num_steps="
                             f"{self.config['num_steps']}; set sd.raw_indices to steps in 0..{int(self.config['num_steps']) - 1}")
        import torch

        self.ensure_ready()
        ex = self.extractor
        channels = ex.layer_channels(LAYERS)
        offsets = [sum(channels[:n]) for n in range(len(channels))]
        R = ex.output_resolution
        out = torch.empty((images.shape[0], len(self.raw_indices), sum(channels), R, R), dtype=torch.float32)

        def consume(slot, position, feat):
            c0 = offsets[position]
            out[:, slot, c0:c0 + channels[position]] = feat.to("cpu")

        ex.invert(images, save_indices=self.raw_indices, layers=LAYERS, consume=consume)
        return out


def _block_value(value: Any) -> list[int]:
    try:
        return list(parse_block(value))
    except UsageError:
        raise ValueError("an (up_block, resnet) pair such as [1, 0]") from None


#: ``timestep`` of the single-timestep methods (checked against the schedule when the method is made)
TIMESTEP = Option(-1, int, "UNet timestep of the inversion to read (-1 = the clean one-step pass)", min=-1)


class _SingleTimestepMixin:
    """``timestep``: a UNet timestep of the inversion (−1 = the clean one-step pass)."""

    def timestep_index(self) -> int:
        t = _as_int(self.config["timestep"], f"{self.name}.timestep")
        return self.schedule.index_of_inversion_timestep(t)


class SDLayer(_SingleTimestepMixin, SDDescriptor):
    """The raw conv2 feature of one decoder resnet at one inversion timestep, resized to 64 × 64."""

    name = "sd-layer"
    description = "Raw SD decoder feature of any up_blocks[i].resnets[j] at any inversion timestep (config)"
    default_config = {
        **SD_SHARED_DEFAULTS,
        "block": Option([1, 0], "json", "[up_block, resnet] of the decoder resnet whose conv2 output is taken",
                        check=_block_value),
        "timestep": TIMESTEP,
    }

    def validate_config(self) -> None:
        self.block = parse_block(self.config["block"], f"{self.name}.block")
        self.index = self.timestep_index()

    def inversion_plan(self, images) -> InversionPlan:
        found = {}
        return InversionPlan((self.index,), (self.block,), lambda slot, pos, feat: found.__setitem__("map", feat),
                             lambda: found["map"])

    def run_info(self) -> dict[str, Any]:
        return {**super().run_info(), "block": list(self.block), "timestep": int(self.config["timestep"]),
                "step_index": self.index, "hook": f"up_blocks.{self.block[0]}.resnets.{self.block[1]}.conv2"}


class SDLayer4(SDLayer):
    """The paper's SD-Layer-4 row: layer 4 = up_blocks[1].resnets[0], the clean one-step pass."""

    name = "sd-layer-4"
    # rough s/image (24 GB-class GPU, desktop CPU): one UNet call at 512 px (the clean pass)
    cost_estimate = {"image": (0.15, 8.0)}
    description = "SD-Layer-4 (DHF table): raw conv2 feature of up_blocks[1].resnets[0], clean pass (t=-1)"


class SDConcatAll(_SingleTimestepMixin, SDDescriptor):
    """The paper's SD-Concat-All row: the 12 decoder maps of one timestep concatenated (10,560 channels)."""

    name = "sd-concat-all"
    cost_estimate = {"image": (0.2, 8.0)}  # rough s/image (GPU, CPU): the clean pass, 12 maps kept
    description = "SD-Concat-All (DHF table): the 12 decoder conv2 maps of one timestep, concatenated"
    default_config = {
        **SD_SHARED_DEFAULTS,
        "timestep": TIMESTEP,
        "normalize": Option(False, bool, "L2-normalise each layer's map per pixel before concatenating"),
    }

    def validate_config(self) -> None:
        self.index = self.timestep_index()
        normalize = self.config["normalize"]
        if isinstance(normalize, str):
            normalize = json.loads(normalize.lower()) if normalize.lower() in ("true", "false") else normalize
        if not isinstance(normalize, bool):
            raise UsageError(f"sd-concat-all.normalize must be true or false, got {self.config['normalize']!r}")
        self.normalize = normalize

    def inversion_plan(self, images) -> InversionPlan:
        import torch
        import torch.nn.functional as F

        ex = self.extractor
        channels = ex.layer_channels(LAYERS)
        offsets = [sum(channels[:n]) for n in range(len(channels))]
        R = ex.output_resolution
        out = torch.empty((images.shape[0], sum(channels), R, R), dtype=torch.float32, device=self.device)

        def consume(slot, position, feat):
            if self.normalize:  # L2 per layer and pixel, so no layer dominates the cosine by its norm
                feat = F.normalize(feat, dim=1)
            out[:, offsets[position]:offsets[position] + channels[position]] = feat

        return InversionPlan((self.index,), LAYERS, consume, lambda: out)

    def run_info(self) -> dict[str, Any]:
        return {**super().run_info(), "timestep": int(self.config["timestep"]), "step_index": self.index,
                "normalize": self.normalize, "layers": [list(layer) for layer in LAYERS]}
