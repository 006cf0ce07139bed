"""The ``dino`` and ``dinov2*`` methods: dino-vit-features descriptors on timm ViTs.

Their default readout is ``patch-centre`` (registered by this plugin, :class:`.readout.PatchCentre`):
the dino-vit-features recipe predicts the centre of the best target *patch*, which the core's
pixel-level nearest-neighbour readout does not. ``predict_mode=upsample_nn`` (or ``--readout nn``)
reads the same binned descriptors out with the core's ``nn`` readout
(docs/protocol.md#nearest-neighbour-readout) instead.

What is cached per image is the facet map *before* log-binning (384 channels for ViT-S). Binning is a
fixed, parameter-free pooling (:mod:`.binning`), applied when a pair is matched: the 6,528-channel
binned map of a 224×298 image is ~100 MB in float32, 17× the facet map. The patch-centre readout
never builds it (:func:`.readout.binned_patch_centre_transfer` sums per-bin products of the pooled
maps instead); ``upsample_nn`` bins both maps and hands them to the core readout. ``corrbench extract``
therefore exports the facet map; apply :func:`corrbench_dino.binning.log_bin` to get the binned
descriptor.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch

from corrbench.api import Descriptor, FeatureGrid, Preprocess
from corrbench.errors import UsageError
from corrbench.options import Option
from corrbench.requirements import Requirement

from . import models, weights
from .binning import log_bin, num_bins
from .readout import binned_patch_centre_transfer, patch_centre_transfer
from .vit import FACETS, POS_INTERP, ViTFacets

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREDICT_MODES = ("patch_center", "upsample_nn")
RESIZE_MODES = ("short_side", "square")


class DinoDescriptor(Descriptor):
    """DINO ViT-S/8, key facet of block 9, stride 4, log-binned: dino-vit-features' correspondence recipe."""

    name = "dino"
    description = "DINO ViT-S/8 key facet, block 9, stride 4, log-binned (dino-vit-features recipe)"
    version = "1"
    default_config: ClassVar[dict[str, Any]] = {
        "model": Option("dino_vits8", str, "torch.hub name, or a timm name such as vit_small_patch8_224.dino"),
        "weights": Option("pretrained", "path", "pretrained, random (an untrained network) or a PATH to a checkpoint"),
        "layer": Option(9, int, "0-based block index; negative counts from the end"),
        "facet": Option("key", str, "which ViT facet of the block is the descriptor", choices=FACETS),
        "stride": Option(4, int, "patch-embedding stride in pixels; must divide the patch size", min=1),
        "bin": Option(True, bool, "log-binning of the facet map: 17 bins at hierarchy 2"),
        "hierarchy": Option(2, int, "levels of the log-binning", min=1),
        "load_size": Option(224, int, "load size in pixels: short side, or both sides with resize_mode=square",
                            min=1),
        "resize_mode": Option("short_side", str, "short_side keeps the aspect ratio with LANCZOS; square stretches",
                              choices=RESIZE_MODES),
        "predict_mode": Option("patch_center", str, "patch_center = dino-vit-features readout; upsample_nn = the "
                               "core nearest-neighbour readout", choices=PREDICT_MODES),
        "pos_interp": Option("dino", str, "position-embedding resampling: DINO's bicubic formula or timm's",
                             choices=POS_INTERP),
    }
    preprocess: ClassVar[Preprocess] = Preprocess(load_size=224, resize="short_side", resample="lanczos",
                                                  mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def __init__(self, config: dict[str, Any] | None = None, device: str = "cpu"):
        super().__init__(config, device)
        c = self.config
        self.spec = models.resolve(c["model"])
        for key, allowed in (("facet", FACETS), ("predict_mode", PREDICT_MODES), ("resize_mode", RESIZE_MODES),
                             ("pos_interp", POS_INTERP)):
            if c[key] not in allowed:
                raise UsageError(f"{self.name}.{key}={c[key]!r} is not one of {', '.join(allowed)}")
        for key in ("layer", "stride", "hierarchy", "load_size"):
            if not isinstance(c[key], int) or isinstance(c[key], bool):
                raise UsageError(f"{self.name}.{key}={c[key]!r} must be an integer")
        if not isinstance(c["bin"], bool):
            raise UsageError(f"{self.name}.bin={c['bin']!r} must be true or false")
        if c["bin"] and c["hierarchy"] < 1:
            raise UsageError(f"{self.name}.hierarchy={c['hierarchy']!r} must be at least 1")
        self.vit: ViTFacets | None = None
        self._binned: list[tuple[torch.Tensor, torch.Tensor]] = []  # (map, binned map) of the last two maps

    # -- configuration --------------------------------------------------------------------------
    def preprocessing(self) -> Preprocess:
        return replace(self.preprocess, load_size=int(self.config["load_size"]), resize=self.config["resize_mode"])

    def weights_identity(self) -> str:
        return weights.weights_identity(self.spec, self.config["weights"])

    #: rough seconds per image (24 GB-class GPU, desktop CPU) for `corrbench reproduce`'s estimate
    cost_estimate: ClassVar[dict[str, tuple[float, float]]] = {"image": (0.05, 1.5)}

    def requirements(self) -> list[Requirement]:
        """The ViT weights: none (random), the timm hub file (looked up in the Hugging Face cache) or a file."""
        from corrbench.requirements import NOT_NEEDED, PRESENT, fetchable, file_requirement, hf_cached

        w, spec, key = str(self.config["weights"]), self.spec, self.name
        what = f"ViT {spec.timm_name}"
        if w == "random":
            return [Requirement("weights", what + " (random)", "timm architecture", NOT_NEEDED)]
        if w == "pretrained":
            found = hf_cached(spec.hf_hub_id, ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"])
            if found:
                return [Requirement("weights", what, found, PRESENT)]
            return [Requirement("weights", what, f"hf://{spec.hf_hub_id}", fetchable(),
                                f"not in the Hugging Face cache; timm downloads it on first use, or pass "
                                f"--set {key}.weights=PATH")]
        return [file_requirement(what, w, f"pass --set {key}.weights=PATH")]

    @classmethod
    def tiny_config(cls, workdir):
        # timm's tiny test ViT (patch 16) with random weights on a 64 px input
        return {"model": "test_vit", "weights": "random", "load_size": 64, "layer": 4}

    # -- extraction -----------------------------------------------------------------------------
    def setup(self) -> None:
        model = weights.build(self.spec, self.config["weights"], key=self.name).to(self.device)
        vit = ViTFacets(model, int(self.config["stride"]), self.config["pos_interp"])
        vit.block_index(int(self.config["layer"]))  # a bad layer fails before any image is read
        self.vit = vit

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        return self.vit.facet(images, int(self.config["layer"]), self.config["facet"])

    def feature_grid(self, load_hw: tuple[int, int], feat_hw: tuple[int, int]) -> FeatureGrid:
        self.ensure_ready()
        return FeatureGrid.patches(self.vit.stride, self.vit.patch)

    # -- matching -------------------------------------------------------------------------------
    def descriptors(self, fmap: torch.Tensor) -> torch.Tensor:
        """The matching descriptor of a cached C×h×w facet map: log-binned when ``bin`` is on."""
        if not self.config["bin"]:
            return fmap
        for src, binned in self._binned:
            if src is fmap:
                return binned
        binned = log_bin(fmap.unsqueeze(0).float(), int(self.config["hierarchy"]))[0]
        # the runner walks pairs grouped by source image: keeping the last two avoids re-binning it
        self._binned = [(fmap, binned)] + self._binned[:1]
        return binned

    @property
    def default_readout(self) -> str:
        return "patch-centre" if self.config["predict_mode"] == "patch_center" else "nn"

    def readout_features(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.descriptors(fmap)

    def patch_centre_transfer(self, source_map: torch.Tensor, target_map: torch.Tensor, source_grid: FeatureGrid,
                              target_grid: FeatureGrid, source_points: torch.Tensor) -> torch.Tensor:
        """The ``patch-centre`` readout on the cached facet maps (binned on the fly, or never built)."""
        if self.config["bin"]:  # same argmax as on the binned maps, without building them
            return binned_patch_centre_transfer(source_map, target_map, source_grid, target_grid, source_points,
                                                int(self.config["hierarchy"]))
        return patch_centre_transfer(source_map, target_map, source_grid, target_grid, source_points)

    def run_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"timm_model": self.spec.timm_name, "hf_hub_id": self.spec.hf_hub_id,
                                "release_checkpoint": self.spec.release_url or None,
                                "cached_map": "facet before log-binning (binning is applied when matching)"}
        if self.vit is not None:
            dim = self.vit.dim * (num_bins(int(self.config["hierarchy"])) if self.config["bin"] else 1)
            info.update({"patch": self.vit.patch, "stride": self.vit.stride,
                         "block": self.vit.block_index(int(self.config["layer"])), "blocks": self.vit.depth,
                         "descriptor_dim": dim})
        return info


class DinoV2Descriptor(DinoDescriptor):
    """DINOv2 ViT-S/14, token facet of the last block, stride 14, no binning (the sd-dino setting at 224)."""

    name = "dinov2"
    description = "DINOv2 ViT-S/14 token facet of the last block, stride 14 (224 load, patch-centre readout)"
    default_config: ClassVar[dict[str, Any]] = {
        **DinoDescriptor.default_config,
        "model": "dinov2_vits14", "layer": -1, "facet": "token", "stride": 14, "bin": False,
    }
    @classmethod
    def tiny_config(cls, workdir):
        # the test ViT's patch is 16 pixels: DINOv2's stride 14 does not divide it
        return {**super().tiny_config(workdir), "stride": 8}

    #: ``--set dinov2.<key>=...`` reaches every DINOv2 size; ``model`` stays per method
    config_namespaces: ClassVar[dict[str, tuple[str, ...]]] = {
        "dinov2": tuple(k for k in default_config if k != "model"),
    }


def _dinov2_variant(method: str, model: str, label: str) -> type[DinoV2Descriptor]:
    return type(f"DinoV2_{method.replace('-', '_')}", (DinoV2Descriptor,), {
        "__module__": __name__,
        "__doc__": f"DINOv2 {label}, token facet of the last block, stride 14.",
        "name": method,
        "description": f"DINOv2 {label} token facet of the last block, stride 14 (224 load, patch-centre readout)",
        "default_config": {**DinoV2Descriptor.default_config, "model": model},
    })


DinoV2Base = _dinov2_variant("dinov2-b", "dinov2_vitb14", "ViT-B/14")
DinoV2Large = _dinov2_variant("dinov2-l", "dinov2_vitl14", "ViT-L/14")
DinoV2Giant = _dinov2_variant("dinov2-g", "dinov2_vitg14", "ViT-g/14")
DinoV2SmallReg = _dinov2_variant("dinov2-reg", "dinov2_vits14_reg", "ViT-S/14 with 4 registers")
DinoV2BaseReg = _dinov2_variant("dinov2-b-reg", "dinov2_vitb14_reg", "ViT-B/14 with 4 registers")
DinoV2LargeReg = _dinov2_variant("dinov2-l-reg", "dinov2_vitl14_reg", "ViT-L/14 with 4 registers")
DinoV2GiantReg = _dinov2_variant("dinov2-g-reg", "dinov2_vitg14_reg", "ViT-g/14 with 4 registers")

#: method name → class, for the plugin's registration and the tests
METHODS: dict[str, type[DinoDescriptor]] = {
    cls.name: cls for cls in (DinoDescriptor, DinoV2Descriptor, DinoV2Base, DinoV2Large, DinoV2Giant,
                              DinoV2SmallReg, DinoV2BaseReg, DinoV2LargeReg, DinoV2GiantReg)
}
