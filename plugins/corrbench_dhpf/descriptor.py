"""The ``dhpf`` and ``hpf`` methods: hyperpixel features of a frozen ResNet, matched pair by pair.

Both are :class:`~corrbench.PairConditionedDescriptor` s. ``extract`` caches, per image, the candidate
maps at their native resolutions (packed, see :mod:`.packing`); ``transfer`` builds the pair's
hyperimages and either runs the method's own matcher (``readout=full``: appearance score, Regularized
Hough Matching, neighbour-averaged keypoint transfer) or hands the L2-normalised hyperimages to the
harness' nearest-neighbour readout (``readout=nn``, :func:`corrbench.readout.nn_transfer`).

- ``dhpf`` (Min et al., ECCV 2020): ImageNet-V1 ResNet-101, 34 candidate layers, learned 1×1 feature
  transforms and pair-conditioned gates from the authors' checkpoint, 240×240 square input, 60×60
  hyperimage, score ReLU(cos)², mutual-NN re-weighting before transfer (docs/methods.md#dhpf-and-hpf).
- ``hpf`` (Min et al., ICCV 2019): the same backbone with the published, fixed layer list on raw
  (pre-ReLU) features, no learned part: long side 300, hyperimage on the first layer's grid, score
  ReLU(cos)³, boxes pruned at the border, no mutual-NN step (docs/methods.md#dhpf-and-hpf).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from corrbench.api import FeatureGrid, PairConditionedDescriptor, Preprocess
from corrbench.errors import UsageError
from corrbench.hashing import sha256_file_memo
from corrbench.options import Option
from corrbench.requirements import Requirement

from . import backbone as bb
from . import learner as ln
from . import rhm
from .packing import pack, unpack

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
READOUTS = ("full", "nn")
#: options HPF and DHPF share
BACKBONE = Option("resnet101", str, "torchvision ResNet: resnet101 (34 candidate layers) or resnet50 (17)",
                  choices=tuple(bb.BLOCKS))
READOUT = Option("full", str, "full = RHM and the method's keypoint transfer; nn = the core nearest-neighbour "
                 "readout on the hyperimages", choices=READOUTS)
RHM = Option(True, bool, "Regularized Hough Matching on the appearance scores")
NCELLS = Option(8192, int, "Hough-space bins", min=1)


def _file_identity(spec: str) -> str:
    """``file:<sha256>`` of a weights file (memoised per path, size and mtime), or the path if it is missing."""
    path = Path(spec).expanduser()
    if not path.is_file():
        return f"file:{path}"
    return f"file:{sha256_file_memo(path)}"


def backbone_requirement(backbone: str, spec: str, key: str, option: str = "backbone_weights") -> Requirement:
    """The ResNet weights: none (random), torchvision's ImageNet-V1 file (torch hub cache) or a local file."""
    from corrbench.requirements import MISSING, NOT_NEEDED, PRESENT, fetchable, file_requirement

    if spec == "random":
        return Requirement("weights", f"torchvision {backbone} (random)", "seeded", NOT_NEEDED)
    if spec != "pretrained":
        return file_requirement(f"{backbone} backbone weights", spec, f"pass --set {key}.{option}=PATH")
    import torchvision

    enum = {"resnet50": torchvision.models.ResNet50_Weights,
            "resnet101": torchvision.models.ResNet101_Weights}.get(backbone)
    if enum is None:
        return Requirement("weights", f"torchvision {backbone}", backbone, MISSING,
                           f"{key}.backbone must be resnet50 or resnet101")
    url = enum.IMAGENET1K_V1.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return Requirement("weights", f"torchvision {backbone} ImageNet-V1", str(path),
                       PRESENT if path.is_file() else fetchable(),
                       "" if path.is_file() else f"not in the torch hub cache; downloaded from {url}")


class _Hyperpixels(PairConditionedDescriptor):
    """What HPF and DHPF share: backbone, packing, bin-id cache and the two readouts."""

    cache_dtype = "float32"  # the gates compare logits: keep the cached pools exact
    score_exponent: ClassVar[int] = 2
    score_eps: ClassVar[float] = 1e-3

    def __init__(self, config: dict[str, Any] | None = None, device: str = "cpu"):
        super().__init__(config, device)
        c = self.config
        bb.check_backbone(c["backbone"])
        if c["readout"] not in READOUTS:
            raise UsageError(f"{self.name}.readout={c['readout']!r} is not one of {', '.join(READOUTS)}")
        for key in ("load_size", "ncells"):
            if not isinstance(c[key], int) or isinstance(c[key], bool) or c[key] < 1:
                raise UsageError(f"{self.name}.{key}={c[key]!r} must be a positive integer")
        for key in ("rhm", "mutual_nn"):
            if not isinstance(c[key], bool):
                raise UsageError(f"{self.name}.{key}={c[key]!r} must be true or false")
        self.net: torch.nn.Module | None = None
        self._bins: dict[tuple, tuple[torch.Tensor, int, int]] = {}

    # -- shared pieces ----------------------------------------------------------------------------
    def _parse_ids(self, value: Any, key: str) -> list[int]:
        n = len(bb.candidate_channels(self.config["backbone"]))
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        try:
            ids = sorted({int(v) for v in value})
        except (TypeError, ValueError):
            raise UsageError(f"{self.name}.{key}={value!r}: expected a list of layer ids") from None
        if not ids or ids[0] < 0 or ids[-1] >= n:
            raise UsageError(f"{self.name}.{key}={value!r}: ids must be within 0..{n - 1} "
                             f"for {self.config['backbone']}")
        return ids

    def _bin_ids(self, src_centres, tgt_centres, src_hw, tgt_hw, key) -> tuple[torch.Tensor, int, int]:
        # DHPF's frame is fixed, so one table (3,600² ids) serves every pair; HPF's depends on the sizes
        if key not in self._bins:
            if len(self._bins) >= 2:
                self._bins.pop(next(iter(self._bins)))
            self._bins[key] = rhm.bin_ids(src_centres, tgt_centres, (src_hw[1], src_hw[0]), (tgt_hw[1], tgt_hw[0]),
                                          int(self.config["ncells"]))
        return self._bins[key]

    def _match(self, hs: torch.Tensor, ht: torch.Tensor, s_centres, t_centres, s_hw, t_hw, rf: int, key,
               points: torch.Tensor) -> torch.Tensor:
        """The method's own matcher on N×C / M×C hyperpixels with their centres."""
        corr = rhm.appearance(hs, ht, self.score_exponent, self.score_eps)
        if self.config["rhm"]:
            ids, nx, ny = self._bin_ids(s_centres, t_centres, s_hw, t_hw, key)
            corr = corr * rhm.geometric_score(corr, ids, nx, ny)
        if self.config["mutual_nn"]:
            corr = rhm.mutual_nn(corr)
        return rhm.transfer_keypoints(corr, s_centres, t_centres, rf, points)

    @staticmethod
    def _nn(hyper_s: torch.Tensor, hyper_t: torch.Tensor, grid: FeatureGrid, s_hw, t_hw, points) -> torch.Tensor:
        from corrbench.readout import nn_transfer

        # each hyperpixel is L2-normalised first, as when DHPF's hyperimage is used as a descriptor (A10)
        return nn_transfer(F.normalize(hyper_s, dim=0), F.normalize(hyper_t, dim=0), grid, grid, s_hw, t_hw, points)


class DHPFDescriptor(_Hyperpixels):
    """DHPF: gated ResNet-101 hypercolumns, Regularized Hough Matching (authors' learner, local file)."""

    name = "dhpf"
    description = "Dynamic Hyperpixel Flow: ResNet-101, 34 gated layers, RHM (authors' checkpoint from a local path)"
    version = "1"
    default_config: ClassVar[dict[str, Any]] = {
        "weights": Option(None, "path", "PATH to the authors' learner checkpoint (required), or random"),
        "backbone": BACKBONE,
        "backbone_weights": Option("auto", "path", "auto (pretrained, or random when weights=random), pretrained, "
                                   "random or a PATH"),
        "load_size": Option(240, int, "side of the square input; the hyperimage is load_size/4 on a side",
                            min=4, multiple_of=4),
        "selection": Option("gated", "json", "gated (pair-conditioned, the method), all, or a list of layer ids"),
        "readout": READOUT,
        "rhm": RHM,
        "mutual_nn": Option(True, bool, "mutual-nearest-neighbour re-weighting before the transfer"),
        "ncells": NCELLS,
    }
    preprocess: ClassVar[Preprocess] = Preprocess(load_size=240, resize="square", resample="bilinear",
                                                  mean=IMAGENET_MEAN, std=IMAGENET_STD)
    RF, JUMP = 11, 4

    def __init__(self, config: dict[str, Any] | None = None, device: str = "cpu"):
        super().__init__(config, device)
        if self.config["load_size"] % 4:
            raise UsageError(f"dhpf.load_size={self.config['load_size']} must be divisible by 4")
        sel = self.config["selection"]
        self.fixed_ids = None if sel in ("gated", "all") else self._parse_ids(sel, "selection")
        self.channels = bb.candidate_channels(self.config["backbone"])
        self.ids = self.fixed_ids or list(range(len(self.channels)))  # the layers cached per image
        self.learner: ln.Learner | None = None
        self._selected: list[int] = []
        self._hits: Counter[int] = Counter()

    def preprocessing(self) -> Preprocess:
        return Preprocess(load_size=int(self.config["load_size"]), resize="square", resample="bilinear",
                          mean=IMAGENET_MEAN, std=IMAGENET_STD)

    @classmethod
    def tiny_config(cls, workdir):
        return {"weights": "random", "backbone": "resnet50", "load_size": 96}

    def _backbone_weights(self) -> str:
        spec = str(self.config["backbone_weights"])
        if spec == "auto":
            return "random" if str(self.config["weights"]) == "random" else "pretrained"
        return spec

    def weights_identity(self) -> str:
        w = self.config["weights"]
        learner = "missing" if w in (None, "") else "random" if w == "random" else _file_identity(str(w))
        bw = self._backbone_weights()
        back = f"torchvision:{self.config['backbone']}:IMAGENET1K_V1" if bw == "pretrained" else \
            "random" if bw == "random" else _file_identity(bw)
        return f"learner={learner};backbone={back}"

    #: rough seconds (24 GB-class GPU, desktop CPU) per image and per pair (RHM is pair-conditioned)
    cost_estimate: ClassVar[dict[str, tuple[float, float]]] = {"image": (0.05, 1.5), "pair": (0.1, 3.0)}

    def requirements(self) -> list[Requirement]:
        """The authors' learner checkpoint (a local file, or random) and the ResNet backbone weights."""
        from corrbench.requirements import MISSING, NOT_NEEDED, file_requirement

        w = self.config.get("weights")
        if w in (None, ""):
            out = [Requirement("weights", "DHPF learner checkpoint", "(not set)", MISSING,
                               f"no local file given; {ln.how_to_get()}")]
        elif str(w) == "random":
            out = [Requirement("weights", "DHPF learner (random, untrained)", "seeded", NOT_NEEDED)]
        else:
            out = [file_requirement("DHPF learner checkpoint", str(w), ln.how_to_get())]
        return out + [backbone_requirement(str(self.config.get("backbone", "resnet101")), self._backbone_weights(),
                                           self.name)]

    def setup(self) -> None:
        self.learner = ln.build(self.channels, self.config["weights"]).to(self.device)
        self.net = bb.build_resnet(self.config["backbone"], self._backbone_weights()).to(self.device)

    # -- per image --------------------------------------------------------------------------------
    def _layout(self, load_hw: tuple[int, int]) -> list[tuple[int, ...]]:
        shapes = bb.layer_shapes(self.config["backbone"], load_hw, self.ids)
        cft = [(c // 8, h, w) for c, h, w in shapes]
        pools = [(c,) for c, _, _ in shapes] if self.config["selection"] == "gated" else []
        return cft + pools

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        maps = bb.candidate_maps(self.net, images, self.ids)
        parts = [self.learner.cft(i, maps[i]) for i in self.ids]
        if self.config["selection"] == "gated":
            parts += [maps[i].mean(dim=(2, 3)) for i in self.ids]
        return pack(parts)

    def feature_grid(self, load_hw: tuple[int, int], feat_hw: tuple[int, int]) -> FeatureGrid:
        return FeatureGrid(self.JUMP, self.JUMP, 0.0, 0.0)  # hyperpixel centres: 4·index (A6)

    # -- per pair ---------------------------------------------------------------------------------
    def select(self, src_pools: list[torch.Tensor], tgt_pools: list[torch.Tensor]) -> list[int]:
        """Positions in ``self.ids`` of the layers the gates switch on for this pair (layer 0 if none)."""
        on = [k for k, i in enumerate(self.ids) if self.learner.gate(i, src_pools[k] + tgt_pools[k])]
        return on or [0]  # DHPF's base map when every gate is off

    def hyperimages(self, source_map: torch.Tensor, target_map: torch.Tensor, load_hw: tuple[int, int]
                    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """The pair's two D×s×s hyperimages (s = load_size/4) and the candidate ids they use."""
        n = len(self.ids)
        src = unpack(source_map, self._layout(load_hw), "dhpf map")
        tgt = unpack(target_map, self._layout(load_hw), "dhpf map")
        chosen = self.select(src[n:], tgt[n:]) if self.config["selection"] == "gated" else list(range(n))
        side = load_hw[0] // 4

        def hyper(parts):
            return torch.cat([F.interpolate(parts[k][None].float(), size=(side, side), mode="bilinear",
                                            align_corners=True)[0] for k in chosen])

        return hyper(src), hyper(tgt), [self.ids[k] for k in chosen]

    def transfer(self, source_map, target_map, source_grid, target_grid, source_load_hw, target_load_hw,
                 source_points):
        if tuple(source_load_hw) != tuple(target_load_hw) or source_load_hw[0] != source_load_hw[1]:
            raise UsageError(f"dhpf works on square {self.config['load_size']}² inputs, got {source_load_hw} "
                             f"and {target_load_hw}")
        self.ensure_ready()
        hs, ht, used = self.hyperimages(source_map, target_map, tuple(source_load_hw))
        self._selected.append(len(used))
        self._hits.update(used)
        points = torch.as_tensor(source_points).to(hs.device)
        if self.config["readout"] == "nn":
            grid = FeatureGrid(self.JUMP, self.JUMP, 0.0, 0.0)
            return self._nn(hs, ht, grid, source_load_hw, target_load_hw, points)
        side = hs.shape[-1]
        centres = rhm.cell_centres((side, side), self.JUMP, device=hs.device)
        D = hs.shape[0]
        return self._match(hs.reshape(D, -1).T, ht.reshape(D, -1).T, centres, centres, source_load_hw,
                           target_load_hw, self.RF, ("dhpf", side), points)

    def run_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backbone": f"torchvision {self.config['backbone']}", "candidate_layers": len(self.channels),
            "cft_dims": sum(self.channels[i] // 8 for i in self.ids), "hyperimage_side": self.config["load_size"] // 4,
            "learner_checkpoints": ln.CHECKPOINTS,
        }
        if self._selected:
            info["layers_per_pair"] = {"mean": sum(self._selected) / len(self._selected), "min": min(self._selected),
                                       "max": max(self._selected), "pairs": len(self._selected)}
            info["layer_selection_rate"] = {str(i): self._hits[i] / len(self._selected) for i in sorted(self._hits)}
        return info


#: HPF's published layer ids (hpf README; docs/methods.md#dhpf-and-hpf), by backbone and the benchmark
#: they were searched on
HPF_LAYERS = {
    "resnet50": {"spair": (0, 9, 10, 11, 12, 13), "pfpascal": (2, 7, 11, 12, 13)},
    "resnet101": {"spair": (0, 8, 20, 21, 26, 28, 29, 30), "pfpascal": (2, 17, 21, 22, 25, 26, 28)},
}
#: jump and receptive field of the hyperpixel boxes, indexed by the first (smallest) id
HPF_JUMP = (4, 4, 4, 4, 8, 8, 8, 8, 16, 16)
HPF_RF = (11, 19, 27, 35, 43, 59, 75, 91, 107, 139)


class HPFDescriptor(_Hyperpixels):
    """HPF: the published fixed ResNet layer selection on ImageNet weights, Regularized Hough Matching."""

    name = "hpf"
    description = "Hyperpixel Flow: ImageNet ResNet-101, the published SPair-71k layer list, RHM (no learned part)"
    version = "1"
    score_exponent = 3
    score_eps = 0.0
    default_config: ClassVar[dict[str, Any]] = {
        "weights": Option("pretrained", "path", "backbone weights: pretrained (torchvision ImageNet-V1), random "
                          "or a PATH"),
        "backbone": BACKBONE,
        "layers": Option("spair", "json", "spair or pfpascal (the published lists for the backbone), or a list "
                         "of layer ids"),
        "load_size": Option(300, int, "long side in pixels (HPF downsizes images whose long side exceeds it)", min=1),
        "readout": READOUT,
        "rhm": RHM,
        "mutual_nn": Option(False, bool, "mutual-nearest-neighbour re-weighting before the transfer"),
        "prune": Option(True, bool, "drop boxes sticking out of the image by more than one jump"),
        "ncells": NCELLS,
    }
    preprocess: ClassVar[Preprocess] = Preprocess(load_size=300, resize="long_side", resample="bilinear",
                                                  mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def __init__(self, config: dict[str, Any] | None = None, device: str = "cpu"):
        super().__init__(config, device)
        layers = self.config["layers"]
        named = HPF_LAYERS[self.config["backbone"]]
        self.ids = list(named[layers]) if isinstance(layers, str) and layers in named else \
            self._parse_ids(layers, "layers")
        if self.ids[0] >= len(HPF_JUMP):
            raise UsageError(f"hpf.layers={layers!r}: the smallest id must be at most {len(HPF_JUMP) - 1} "
                             f"(HPF's box geometry is defined for those)")
        if not isinstance(self.config["prune"], bool):
            raise UsageError(f"hpf.prune={self.config['prune']!r} must be true or false")
        self.jump, self.rf = HPF_JUMP[self.ids[0]], HPF_RF[self.ids[0]]

    def weights_identity(self) -> str:
        w = str(self.config["weights"])
        return f"torchvision:{self.config['backbone']}:IMAGENET1K_V1" if w == "pretrained" else \
            "random" if w == "random" else _file_identity(w)

    def requirements(self) -> list[Requirement]:
        """The ResNet backbone weights (``weights``: pretrained, random or a PATH)."""
        return [backbone_requirement(str(self.config["backbone"]), str(self.config["weights"]), self.name, "weights")]

    @classmethod
    def tiny_config(cls, workdir):
        return {"weights": "random", "backbone": "resnet50", "load_size": 96}

    def setup(self) -> None:
        self.net = bb.build_resnet(self.config["backbone"], str(self.config["weights"])).to(self.device)

    def _layout(self, load_hw):
        return [tuple(s) for s in bb.layer_shapes(self.config["backbone"], load_hw, self.ids)]

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        maps = bb.candidate_maps(self.net, images, self.ids)
        return pack([maps[i] for i in self.ids])

    def feature_grid(self, load_hw, feat_hw) -> FeatureGrid:
        return FeatureGrid(self.jump, self.jump, 0.0, 0.0)

    def hyperimage(self, packed: torch.Tensor, load_hw: tuple[int, int]) -> torch.Tensor:
        """D×h×w: every layer upsampled (align_corners=True) to the first layer's grid, concatenated."""
        parts = unpack(packed, self._layout(load_hw), "hpf map")
        size = tuple(parts[0].shape[-2:])
        return torch.cat([F.interpolate(p[None].float(), size=size, mode="bilinear", align_corners=True)[0]
                          for p in parts])

    def transfer(self, source_map, target_map, source_grid, target_grid, source_load_hw, target_load_hw,
                 source_points):
        hs, ht = self.hyperimage(source_map, source_load_hw), self.hyperimage(target_map, target_load_hw)
        points = torch.as_tensor(source_points).to(hs.device)
        if self.config["readout"] == "nn":
            grid = FeatureGrid(self.jump, self.jump, 0.0, 0.0)
            return self._nn(hs, ht, grid, source_load_hw, target_load_hw, points)
        D = hs.shape[0]
        sc = rhm.cell_centres(tuple(hs.shape[-2:]), self.jump, device=hs.device)
        tc = rhm.cell_centres(tuple(ht.shape[-2:]), self.jump, device=ht.device)
        sf, tf = hs.reshape(D, -1).T, ht.reshape(D, -1).T
        if self.config["prune"]:
            ks = rhm.keep_inside(rhm.boxes(sc, self.rf), source_load_hw, self.jump)
            kt = rhm.keep_inside(rhm.boxes(tc, self.rf), target_load_hw, self.jump)
            sc, sf, tc, tf = sc[ks], sf[ks], tc[kt], tf[kt]
        key = ("hpf", tuple(source_load_hw), tuple(target_load_hw))
        return self._match(sf, tf, sc, tc, source_load_hw, target_load_hw, self.rf, key, points)

    def run_info(self) -> dict[str, Any]:
        return {"backbone": f"torchvision {self.config['backbone']}", "layers": self.ids, "jump": self.jump,
                "receptive_field": self.rf}
