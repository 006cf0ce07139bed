"""The DHF table rows: ``dhf``, ``dhf-one-step``, ``dhf-sd21``, ``sd-layer-pruned`` and ``dhf-pruned``.

Each runs the shared SD pipeline of ``corrbench_sd`` (docs/methods.md#stable-diffusion-features) and streams every
captured map straight into the aggregation network (docs/methods.md#aggregation-network), so the
11 × 10,560-channel stack never exists.

Config: the ``sd`` namespace keys come from ``corrbench_sd`` (model, dtype, latent, seed, ...), except
``sd.weights``: a DHF method's own ``weights`` key names the *aggregation network* (``dhf.weights``),
so the SD architecture-with-random-weights switch is ``sd_weights`` here (``--set dhf.sd_weights=random``).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import corrbench
from corrbench.errors import UsageError, WeightsError
from corrbench.options import Option

from corrbench_sd.configs import SD21
from corrbench_sd.methods import SD_RUNTIME_KEYS
from corrbench_sd.shared import InversionPass, InversionPlan, inversion_pass, run_plans
from corrbench_sd.speed import check_runtime_config

from . import weights as dhf_weights
from .slots import LAYERS, PAPER_SAVE_INDICES, SlotInfo, slot_info

#: SD-namespace keys DHF methods take from corrbench_sd (``weights`` and ``raw_indices`` are the SD
#: methods' own: DHF's weights are the aggregation network, and its raw export is the network's input).
_SD_EXCLUDED = ("weights", "raw_indices")


def _sd_shared() -> tuple[dict[str, Option], tuple[str, ...]]:
    from corrbench_sd.methods import SD_SHARED_OPTIONS

    options = {k: v for k, v in SD_SHARED_OPTIONS.items() if k not in _SD_EXCLUDED}
    return options, tuple(options)


SD_OPTIONS, SD_KEYS = _sd_shared()
SD_DEFAULTS = {k: o.default for k, o in SD_OPTIONS.items()}
DHF_KEYS = ("weights", "sd_weights")
#: seed of the ``weights=random`` network (independent of the latent seed)
RANDOM_NETWORK_SEED = 0


def parse_slot(value: Any, n_timesteps: int, n_layers: int, what: str) -> int | None:
    """``argmax`` → None; ``[s, layer]`` (timestep slot, 0-based layer) or a flat slot index → the slot index."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "argmax"):
        return None
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        try:
            value = [int(v) for v in text.split(",")] if "," in text else int(text)
        except ValueError:
            raise UsageError(f"{what}={value!r}: expected 'argmax', [timestep_slot, layer] or a slot index") from None
    if isinstance(value, int) and not isinstance(value, bool):
        index = value
    else:
        try:
            s, layer = (int(v) for v in value)
        except (TypeError, ValueError):
            raise UsageError(f"{what}={value!r}: expected 'argmax', [timestep_slot, layer] or a slot index") from None
        if not (0 <= s < n_timesteps and 0 <= layer < n_layers):
            raise UsageError(f"{what}={value!r}: timestep slot must be in 0..{n_timesteps - 1} "
                             f"and layer in 0..{n_layers - 1} (0-based; layer 0 = DHF's layer 1)")
        index = s * n_layers + layer
    if not 0 <= index < n_timesteps * n_layers:
        raise UsageError(f"{what}={value!r}: slot index outside 0..{n_timesteps * n_layers - 1}")
    return index


def _slot_value(value: Any) -> Any:
    """The form of ``slot`` (its range depends on the checkpoint and is checked at setup)."""
    try:
        parse_slot(value, 10 ** 6, 10 ** 6, "slot")
    except UsageError:
        raise ValueError("'argmax', [timestep_slot, layer] or a slot index ≥ 0") from None
    return value


def _sd_family(model: str) -> str | None:
    low = model.lower()
    return "SD-2.1" if "2-1" in low else "SD-1.5" if "v1-5" in low else None


def _warn_if_other_family(stored: str, configured: str, path) -> None:
    """SD-1.5 and SD-2.1 share channel counts, so a swapped network would load silently: say so."""
    a, b = _sd_family(stored), _sd_family(configured)
    if a and b and a != b:
        import warnings

        warnings.warn(f"{path} was trained on {stored} ({a}) but sd.model is {configured} ({b}); "
                      "the features will not be what the network expects", stacklevel=3)


class _DHFBase(corrbench.Descriptor):
    """Shared config, extractor and aggregation-network loading of the DHF methods."""

    config_namespaces = {"sd": SD_KEYS, "dhf": DHF_KEYS}
    runtime_keys = SD_RUNTIME_KEYS
    preprocess = corrbench.Preprocess(load_size=224, resize="square", resample="bilinear")
    default_config: dict[str, Any] = {
        **SD_OPTIONS,
        "weights": Option("auto", "path", "aggregation network: auto (the released file), random, or a PATH"),
        "sd_weights": Option("pretrained", str, "SD weights: pretrained, or random (architecture only, for tests)",
                             choices=("pretrained", "random")),
    }
    # 2: the SD features changed (per-image posterior draws seeded by seed and image content, see
    # corrbench_sd.extractor.posterior_seed; VAE input made contiguous NCHW)
    version = "2"

    def __init__(self, config: dict[str, Any] | None = None, device: str = "cpu"):
        super().__init__(config, device)
        check_runtime_config(self.config, device)  # also refuses sd.channels_last=true on a CPU
        self._sd_identity: str | None = None

    #: whether the tiny configuration loads the tiny official-format checkpoint (else a random network)
    tiny_uses_checkpoint = True

    @classmethod
    def tiny_config(cls, workdir):
        from .tiny import tiny_dhf_config

        return tiny_dhf_config(workdir, with_checkpoint=cls.tiny_uses_checkpoint)

    #: released file used by ``weights=auto`` (the pruned rows read the "Ours" network)
    released_file = dhf_weights.RELEASED_FILES["dhf"]
    #: saved step indices when the checkpoint does not state them
    default_save_indices: tuple[int, ...] = PAPER_SAVE_INDICES
    layers: tuple[tuple[int, int], ...] = LAYERS

    # -- weights ------------------------------------------------------------------------------------------
    @cached_property
    def weights_path(self) -> Path | None:
        return dhf_weights.resolve(self.config["weights"], self.released_file)

    @cached_property
    def checkpoint(self):
        from .checkpoint import load_checkpoint

        return load_checkpoint(self.weights_path) if self.weights_path is not None else None

    def sd_weights_identity(self) -> str:
        """The SD weights' identity, resolved once after the weights are (a hub id: the loaded snapshot's
        commit, loading the SD components first when they are not in the local cache), then memoised."""
        if self._sd_identity is None:
            from corrbench_sd.loading import resolve_source, weights_identity

            self._sd_identity = weights_identity(resolve_source(self.config["model"]), str(self.config["sd_weights"]),
                                                 load=lambda: self.make_extractor().components)
        return self._sd_identity

    def weights_identity(self) -> str:
        # the local aggregation checkpoint first: a bad file is named before the (large) SD weights are looked for
        if self.weights_path is None:
            agg = f"random:seed{RANDOM_NETWORK_SEED}"
        else:
            agg = f"sha256:{self.checkpoint.sha256}"
        sd = self.sd_weights_identity()
        return f"aggregation={agg}|sd={sd}"

    def requirements(self) -> list[corrbench.Requirement]:
        """The SD pipeline (``sd.model``, ``sd_weights``) and the aggregation network (``weights``); no download."""
        from corrbench_sd.requirements import sd_requirement

        from .requirements import dhf_requirement

        return [sd_requirement(self.config["model"], self.config.get("sd_weights", "pretrained")),
                dhf_requirement(self.config.get("weights"), self.released_file)]

    def save_indices(self) -> tuple[int, ...]:
        """The checkpoint's ``save_timestep`` when it fits the network, else the method default."""
        ckpt = self.checkpoint
        if ckpt is not None:
            stored = ckpt.config.get("save_timestep")
            n = ckpt.num_timesteps
            if isinstance(stored, (list, tuple)) and len(stored) == n:
                indices = tuple(int(k) for k in stored)
                if n == 1 and indices == (0,):
                    # the official one-step config writes [0] with a 1-step scheduler: the clean pass
                    return (int(self.config["num_steps"]) - 1,)
                return indices
            if n != len(self.default_save_indices):
                raise WeightsError(f"{self.weights_path}: a network of {n} timesteps, but its config states no "
                                   f"save_timestep of that length and the default has {len(self.default_save_indices)}")
        return self.default_save_indices

    def build_network(self, layer_channels: Sequence[int], num_timesteps: int):
        """The aggregation network on ``self.device`` in eval mode: loaded strictly, or seeded random."""
        import torch

        from .network import AggregationNetwork

        ckpt = self.checkpoint
        if ckpt is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_NETWORK_SEED)
                net = AggregationNetwork(layer_channels, num_timesteps)
        else:
            if list(ckpt.layer_channels) != list(layer_channels):
                raise WeightsError(
                    f"{self.weights_path} was trained on layers with channels {ckpt.layer_channels}, but "
                    f"sd.model={self.config['model']} gives {list(layer_channels)}: wrong sd.model for these weights?")
            if ckpt.num_timesteps != num_timesteps:
                raise WeightsError(f"{self.weights_path} mixes {ckpt.num_timesteps} timestep(s), "
                                   f"method {self.name} uses {num_timesteps}")
            _warn_if_other_family(str(ckpt.config.get("model_id", "")), str(self.config["model"]), self.weights_path)
            net = ckpt.build()
        return net.to(self.device).eval()

    # -- extractor ----------------------------------------------------------------------------------------
    def make_extractor(self):
        from corrbench_sd.methods import make_extractor

        cfg = {k: self.config[k] for k in SD_KEYS}
        cfg["weights"] = self.config["sd_weights"]
        return make_extractor(cfg, self.device)

    # one inversion serves every SD-based method of a run with the same settings (corrbench_sd.shared)
    def shared_pass(self) -> InversionPass:
        sd = {k: self.config[k] for k in SD_KEYS}
        sd["weights"] = self.config["sd_weights"]
        return inversion_pass(sd, self.device)

    def inversion_plan(self, images) -> InversionPlan:
        """The maps this method keeps from the inversion of ``images`` and how it builds its output."""
        raise NotImplementedError

    def extract(self, images):
        return run_plans(self.extractor, [self.inversion_plan(images)], images)[0]

    def _checkpoint_info(self) -> dict[str, Any]:
        ckpt = self.checkpoint
        if ckpt is None:
            return {"aggregation_weights": "random", "aggregation_seed": RANDOM_NETWORK_SEED}
        return {"aggregation_weights": str(self.weights_path), "aggregation_sha256": ckpt.sha256,
                "checkpoint_step": ckpt.step, "checkpoint_config": ckpt.config}


class DHF(_DHFBase):
    """Diffusion Hyperfeatures ("Ours"): 12 layers × 11 inversion timesteps through the aggregation network."""

    name = "dhf"
    # rough s/image (24 GB-class GPU, desktop CPU): 50 UNet calls at 512 px (the 11-step inversion)
    cost_estimate = {"image": (3.5, 200.0)}
    description = "Diffusion Hyperfeatures (Ours): SD-1.5, 12 layers x 11 inversion steps, aggregation network"

    def setup(self) -> None:
        self.extractor = self.make_extractor()
        self.indices = self.save_indices()
        channels = self.extractor.layer_channels(self.layers)
        self.network = self.build_network(channels, len(self.indices))

    def inversion_plan(self, images) -> InversionPlan:
        from .network import StreamingAggregator

        agg = StreamingAggregator(self.network)
        return InversionPlan(tuple(self.indices), tuple(self.layers), agg, agg.result)

    def extract_raw(self, images):
        """The network's input, materialised: B × (S · ΣC) × R × R, timestep-major (slot s, then layer)."""
        import torch

        self.ensure_ready()
        channels = self.network.layer_channels
        offsets = [sum(channels[:n]) for n in range(len(channels))]
        per_t = sum(channels)
        R = self.extractor.output_resolution
        out = torch.empty((images.shape[0], len(self.indices) * per_t, R, R), dtype=torch.float32)

        def consume(slot, position, feat):
            c0 = slot * per_t + offsets[position]
            out[:, c0:c0 + channels[position]] = feat.to("cpu")

        self.extractor.invert(images, save_indices=tuple(self.indices), layers=tuple(self.layers), consume=consume)
        return out

    def run_info(self) -> dict[str, Any]:
        from corrbench_sd.extractor import latent_rule

        info: dict[str, Any] = {"sd_model": str(self.config["model"]), **self._checkpoint_info(),
                                "latent": latent_rule(str(self.config["latent"]), int(self.config["seed"]))}
        net = getattr(self, "network", None)
        if net is not None:
            import torch

            weights = net.mixing_softmax().detach().cpu()
            top = torch.argsort(weights, descending=True)[:5].tolist()
            info.update(
                save_indices=list(self.indices),
                unet_timesteps=[slot_info(s * len(self.layers), save_indices=self.indices, layers=self.layers,
                                          num_steps=int(self.config["num_steps"])).unet_timestep
                                for s in range(len(self.indices))],
                layers=[list(layer) for layer in self.layers],
                layer_channels=list(net.layer_channels),
                projection_dim=net.projection_dim,
                top_mixing_slots=[slot_info(i, save_indices=self.indices, layers=self.layers,
                                            num_steps=int(self.config["num_steps"]),
                                            weight=float(weights[i])).as_dict() for i in top],
            )
        return info


class DHFOneStep(DHF):
    """Ours-One-Step: 12 layers of the single clean pass (UNet t = −1 on the clean latent)."""

    name = "dhf-one-step"
    cost_estimate = {"image": (0.2, 8.0)}  # rough s/image (GPU, CPU): one UNet call (the clean pass)
    description = "Ours-One-Step: SD-1.5, 12 layers of the clean pass (t=-1), aggregation network"
    released_file = dhf_weights.RELEASED_FILES["dhf-one-step"]
    tiny_uses_checkpoint = False  # the tiny checkpoint has three slots; one-step needs a one-slot network

    def save_indices(self) -> tuple[int, ...]:
        clean = (int(self.config["num_steps"]) - 1,)
        ckpt = self.checkpoint
        if ckpt is not None:
            stored = ckpt.config.get("save_timestep")
            # the official one-step config writes [0] (a 1-step scheduler); corrbench writes the clean index
            if ckpt.num_timesteps != 1 or (isinstance(stored, (list, tuple)) and [int(k) for k in stored]
                                           not in ([0], list(clean))):
                raise WeightsError(f"{self.weights_path}: a network of {ckpt.num_timesteps} timestep(s) with "
                                   f"save_timestep {stored}, not the single clean pass; use method dhf for it")
        return clean


class DHFSD21(DHF):
    """Ours-SDv2-1: as Ours on stabilityai/stable-diffusion-2-1-base."""

    name = "dhf-sd21"
    description = "Ours-SDv2-1: SD-2.1-base, 12 layers x 11 inversion steps, aggregation network"
    released_file = dhf_weights.RELEASED_FILES["dhf-sd21"]

    default_config: dict[str, Any] = {**DHF.default_config, "model": SD21}


class _PrunedBase(_DHFBase):
    """One (timestep, layer) slot of the "Ours" network: chosen by mixing-weight argmax or by config."""

    # rough s/image (GPU, CPU): the inversion runs up to the slot, counted as the full 50 UNet calls
    cost_estimate = {"image": (3.0, 200.0)}

    default_config: dict[str, Any] = {
        **_DHFBase.default_config,
        "slot": Option("argmax", "json", "argmax (largest mixing weight), [timestep_slot, layer] or a slot index",
                       check=_slot_value),
    }

    def choose_slot(self) -> SlotInfo:
        import torch

        indices = self.save_indices()
        n_layers = len(self.layers)
        index = parse_slot(self.config["slot"], len(indices), n_layers, f"{self.name}.slot")
        self.slot_rule = "argmax of the softmax mixing weights" if index is None else "explicit (config)"
        weight = None
        if self.checkpoint is not None:
            ckpt = self.checkpoint
            if len(ckpt.layer_channels) != n_layers:
                raise WeightsError(f"{self.weights_path} has {len(ckpt.layer_channels)} layers, expected {n_layers}")
            weights = torch.softmax(ckpt.state_dict["mixing_weights"].float(), dim=0)
            if index is None:
                index = int(torch.argmax(weights))
            weight = float(weights[index])
        elif index is None:
            # an untrained network's mixing weights are all 1 (the official initialisation): argmax is slot 0
            index = 0
            weight = 1.0 / (len(indices) * n_layers)
        return slot_info(index, save_indices=indices, layers=self.layers, num_steps=int(self.config["num_steps"]),
                         weight=weight)

    def setup(self) -> None:
        self.extractor = self.make_extractor()
        self.slot = self.choose_slot()
        self.block = self.layers[self.slot.layer]

    def _raw_map_plan(self, finish) -> InversionPlan:
        """The slot's raw map; ``finish(map)`` makes the method's output of it."""
        found = {}
        return InversionPlan((self.slot.save_index,), (self.block,), lambda s, l, feat: found.__setitem__("map", feat),
                             lambda: finish(found["map"]))

    def run_info(self) -> dict[str, Any]:
        info = {"sd_model": str(self.config["model"]), **self._checkpoint_info()}
        info.pop("checkpoint_config", None)
        if getattr(self, "slot", None) is not None:
            info["slot"] = self.slot.as_dict()
            info["slot_rule"] = self.slot_rule
        return info


class SDLayerPruned(_PrunedBase):
    """SD-Layer-Pruned: the raw conv2 map of the slot the trained network weights most."""

    name = "sd-layer-pruned"
    description = "SD-Layer-Pruned: raw SD feature of the (timestep, layer) slot with the largest dhf mixing weight"
    # a raw map has up to 1,280 channels (21 MB per image in float32): cached as float16 like the SD raw rows
    cache_dtype = "float16"

    def inversion_plan(self, images) -> InversionPlan:
        return self._raw_map_plan(lambda raw: raw)


class DHFPruned(_PrunedBase):
    """Ours-Pruned: one slot through a bottleneck.

    ``mode=bottleneck`` (default): the argmax (or ``slot``) map of the "Ours" network through that
    network's trained bottleneck for its layer. ``mode=retrain``: the map and bottleneck of a network
    trained on that single map (``corrbench train dhf --slot ...``), given as ``retrained=PATH``.
    """

    name = "dhf-pruned"
    description = "Ours-Pruned: the largest-weight (timestep, layer) slot through its trained dhf bottleneck"
    default_config: dict[str, Any] = {
        **_PrunedBase.default_config,
        "mode": Option("bottleneck", str, "bottleneck = the Ours network's bottleneck; retrain = a single-slot "
                       "network given by retrained", choices=("bottleneck", "retrain")),
        "retrained": Option("", "path", "checkpoint of `corrbench train dhf --slot ...`, for mode=retrain"),
    }
    MODES = ("bottleneck", "retrain")

    def __init__(self, config: dict[str, Any] | None = None, device: str = "cpu"):
        super().__init__(config, device)
        if self.config["mode"] not in self.MODES:
            raise UsageError(f"dhf-pruned.mode={self.config['mode']!r}: one of {', '.join(self.MODES)}")
        if self.config["mode"] == "retrain" and not self.config["retrained"]:
            raise UsageError("dhf-pruned.mode=retrain needs dhf-pruned.retrained=PATH, a checkpoint of "
                             "`corrbench train dhf --slot ...`")

    @cached_property
    def retrained(self):
        from .checkpoint import load_checkpoint

        path = dhf_weights.resolve(self.config["retrained"], dhf_weights.RELEASED_FILES["dhf"])
        if path is None:
            raise UsageError("dhf-pruned.retrained must be a checkpoint file, not 'random'")
        ckpt = load_checkpoint(path)
        cfg = ckpt.config
        if len(ckpt.layer_channels) != 1 or ckpt.num_timesteps != 1 or not cfg.get("layers") \
                or not cfg.get("save_timestep"):
            raise WeightsError(f"{path} is not a single-map network from `corrbench train dhf --slot` (it has "
                               f"{len(ckpt.layer_channels)} layer(s) × {ckpt.num_timesteps} timestep(s); its config "
                               "must state 'layers' and 'save_timestep')")
        return ckpt

    def weights_identity(self) -> str:
        if self.config["mode"] != "retrain":
            return super().weights_identity()
        return f"retrained=sha256:{self.retrained.sha256}|sd={self.sd_weights_identity()}"

    def setup(self) -> None:
        if self.config["mode"] == "bottleneck":
            super().setup()
            channels = self.extractor.layer_channels(self.layers)
            network = self.build_network(channels, len(self.save_indices()))
            self.bottleneck = network.bottleneck_layers[self.slot.layer]
            return
        from .slots import SlotInfo

        ckpt = self.retrained
        self.extractor = self.make_extractor()
        self.block = tuple(int(v) for v in ckpt.config["layers"][0])
        k = int(ckpt.config["save_timestep"][0])
        recorded = ckpt.config.get("pruned_slot")
        if isinstance(recorded, dict) and recorded.get("save_index") == k and recorded.get("module") == \
                f"up_blocks.{self.block[0]}.resnets.{self.block[1]}":
            self.slot = SlotInfo(**recorded)
        else:  # a retrained file without corrbench's record: name the map, slot numbering unknown
            self.slot = SlotInfo(-1, -1, self.layers.index(self.block), self.layers.index(self.block) + 1,
                                 f"up_blocks.{self.block[0]}.resnets.{self.block[1]}", k,
                                 slot_info(0, save_indices=(k,), num_steps=int(self.config["num_steps"])).unet_timestep)
        self.slot_rule = "retrained single-map network"
        channels = self.extractor.layer_channels((self.block,))
        if ckpt.layer_channels != channels:
            raise WeightsError(f"{ckpt.path} was trained on {ckpt.layer_channels[0]} channels, sd.model="
                               f"{self.config['model']} gives {channels[0]} at {self.slot.module}")
        self.bottleneck = ckpt.build().to(self.device).eval().bottleneck_layers[0]

    def inversion_plan(self, images) -> InversionPlan:
        # the slot's softmax weight is a positive scalar: it cannot change a cosine match, so it is left out
        return self._raw_map_plan(self.bottleneck)

    def run_info(self) -> dict[str, Any]:
        if self.config["mode"] != "retrain":
            return {**super().run_info(), "mode": "bottleneck"}
        info = {"sd_model": str(self.config["model"]), "mode": "retrain",
                "retrained_weights": str(self.retrained.path), "retrained_sha256": self.retrained.sha256,
                "retrained_step": self.retrained.step}
        if getattr(self, "slot", None) is not None:
            info["slot"] = self.slot.as_dict()
            info["slot_rule"] = self.slot_rule
        return info
