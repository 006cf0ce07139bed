"""SD+DINO (Zhang et al., "A Tale of Two Features", NeurIPS 2023), zero-shot: the ``sd-dino`` method.

Per image (:meth:`SDDino.extract`, cached like any map; docs/methods.md#sddino):

* SD-1.5 at 960 px: VAE posterior mean × scaling factor, one noising step at t = 100 with ODISE's *shared*
  noise (a 1 × 4 × 64 × 64 draw of a CPU generator seeded 42, bicubically resized to the latent), one UNet
  call with the empty prompt, and three decoder maps: the inputs of LDM ``output_blocks`` 2, 5 and 8, i.e.
  the outputs of diffusers' ``up_blocks[0].resnets[1]`` (s5, 1/64 of the image), ``up_blocks[1].attentions[1]``
  (s4, 1/32) and ``up_blocks[2].attentions[1]`` (s3, 1/16);
* DINOv2 ViT-B/14 at 840 px: the tokens of block 11 (no final norm), a 60 × 60 grid at 840 px.

The four parts are stored losslessly in one C × g × g map (g = the s3 side): s5 and s4 are folded into
channels with ``pixel_shuffle`` (factor 4 and 2), s3 and the DINO tokens are stored as they are.

Per pair (:meth:`SDDino.transfer`, the ``pair-conditioned`` readout): each SD part is reduced by a PCA fitted
jointly on the source's and the target's tokens ("co-PCA", to 256 dims each), s5 is resized bilinearly to s4's
grid and that pair to s3's grid, giving [s3, s4, s5]; the SD part and the DINO part are each L2-normalised per
location, weighted by α and 1 − α (α = 0.5) and concatenated; the keypoints are then transferred by the
core's nearest-neighbour rule on that fused map.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from corrbench.api import FeatureGrid, PairConditionedDescriptor, Preprocess
from corrbench.errors import UsageError, WeightsError
from corrbench.options import Option

from .configs import SD15
from .methods import SD_SHARED_OPTIONS, SDDescriptor, _as_int

#: the SD maps, named as in sd-dino (ODISE): module whose output is kept, and its fold factor in the packed map
SD_BLOCKS = ("up_blocks.0.resnets.1", "up_blocks.1.attentions.1", "up_blocks.2.attentions.1")  # s5, s4, s3
FOLDS = (4, 2, 1)
PART_NAMES = ("s5", "s4", "s3")
DINO_MODEL = "vit_base_patch14_dinov2.lvd142m"
#: seed of the random DINO weights of ``sd-dino.dino_weights=random``
DINO_RANDOM_SEED = 12352


def _dims(value: Any) -> list[int]:
    if not isinstance(value, list) or len(value) != 3 or any(int(v) < 1 for v in value):
        raise ValueError("three positive PCA dimensions for s5, s4, s3, e.g. [256, 256, 256]")
    return [int(v) for v in value]


def _three(value: Any) -> list[float]:
    if not isinstance(value, list) or len(value) != 3:
        raise ValueError("three weights for s3, s4, s5, e.g. [1, 1, 1]")
    return [float(v) for v in value]


# --------------------------------------------------------------------------------------------------
# The per-pair steps (plain functions: the reference tests call them one by one)
# --------------------------------------------------------------------------------------------------
def pack(s5, s4, s3, dino):
    """B × (C5/16 + C4/4 + C3 + Cd) × g × g from the four B × C × h × w parts (s5 at g/4, s4 at g/2)."""
    import torch
    import torch.nn.functional as F

    return torch.cat([F.pixel_shuffle(s5, 4), F.pixel_shuffle(s4, 2), s3, dino], dim=1)


def unpack(packed, channels: Sequence[int]) -> list:
    """The inverse of :func:`pack` for one C × g × g map; ``channels`` = (C5, C4, C3, Cd)."""
    import torch.nn.functional as F

    c5, c4, c3, cd = (int(c) for c in channels)
    sizes = (c5 // 16, c4 // 4, c3, cd)
    parts, start = [], 0
    for n, size in enumerate(sizes):
        parts.append(packed[start:start + size])
        start += size
    return [F.pixel_unshuffle(parts[0][None], 4)[0], F.pixel_unshuffle(parts[1][None], 2)[0], parts[2], parts[3]]


def co_pca(a, b, dim: int):
    """Project two C × h × w maps on the top ``dim`` principal directions of their tokens pooled together.

    The tokens of both maps (h·w each) are centred on their joint mean and projected on the leading right
    singular vectors of that joint matrix (float64, exact); ``dim`` is capped at min(C, tokens). The
    projection is computed from whichever of the C × C scatter matrix and the N × N Gram matrix is smaller
    (its eigendecomposition gives the same subspace as an SVD at a fraction of the cost: the three
    reductions of an SPair-size pair take 3.4 s instead of 9 s on one CPU core, measured). Returns two
    ``dim`` × h × w float64 maps.
    """
    import torch

    C = a.shape[0]
    X = torch.cat([a.reshape(C, -1).T, b.reshape(C, -1).T]).double()
    Xc = X - X.mean(dim=0, keepdim=True)
    N = Xc.shape[0]
    q = min(int(dim), C, N)
    if N >= C:  # eigenvectors of the scatter matrix are the right singular vectors (ascending order)
        _, vectors = torch.linalg.eigh(Xc.T @ Xc)
        Y = (Xc @ vectors[:, -q:].flip(1)).T
    else:  # Xc = U S Vᵀ: the projection Xc V is U S, from the Gram matrix's eigenpairs (U, S²)
        values, U = torch.linalg.eigh(Xc @ Xc.T)
        Y = (U[:, -q:] * values[-q:].clamp_min(0).sqrt()).flip(1).T
    na = a.shape[1] * a.shape[2]
    return Y[:, :na].reshape(q, *a.shape[1:]), Y[:, na:].reshape(q, *b.shape[1:])


def sd_descriptor(p5, p4, p3, weights: Sequence[float]):
    """[s3, s4, s5] at s3's grid: s5 → s4's grid, [s4, s5] → s3's grid (bilinear, align_corners=False),
    each block times its weight (``weights`` in that order)."""
    import torch
    import torch.nn.functional as F

    def up(x, like):
        return F.interpolate(x[None], size=tuple(like.shape[-2:]), mode="bilinear", align_corners=False)[0]

    s45 = torch.cat([p4, up(p5, p4)])
    out = torch.cat([p3, up(s45, p3)])
    w3, w4, w5 = (float(w) for w in weights)
    n3, n4 = p3.shape[0], p4.shape[0]
    scale = torch.cat([out.new_full((n3,), w3), out.new_full((n4,), w4), out.new_full((p5.shape[0],), w5)])
    return out * scale[:, None, None]


def fuse(sd, dino, alpha: float):
    """[α · sd/‖sd‖, (1 − α) · dino/‖dino‖], each part normalised per location (over channels)."""
    import torch
    import torch.nn.functional as F

    return torch.cat([float(alpha) * F.normalize(sd, dim=0), (1.0 - float(alpha)) * F.normalize(dino, dim=0)])


def ods_noise(latent_hw: tuple[int, int], seed: int = 42, base: int = 64):
    """ODISE's shared noise: randn(1, 4, base, base) from a CPU generator seeded ``seed``, bicubically
    resized (align_corners=False) to the latent grid when it differs."""
    import torch
    import torch.nn.functional as F

    noise = torch.randn((1, 4, base, base), generator=torch.Generator("cpu").manual_seed(int(seed)))
    if tuple(latent_hw) != (base, base):
        noise = F.interpolate(noise, size=tuple(latent_hw), mode="bicubic", align_corners=False)
    return noise


class _Stop(Exception):
    pass


class SDDino(SDDescriptor, PairConditionedDescriptor):
    """SD-1.5 decoder maps + DINOv2-B/14 tokens, co-PCA per pair, normalised, weighted and concatenated."""

    name = "sd-dino"
    description = "SD+DINO zero-shot (Zhang et al. 2023): SD-1.5 s3/s4/s5 co-PCA'd per pair + DINOv2-B/14 tokens"
    default_readout = "pair-conditioned"
    version = "1"
    preprocess = Preprocess(load_size=960, resize="square", resample="lanczos")
    cache_dtype = "float16"
    # rough s/image (GPU, CPU): one UNet call at 960 px and a ViT-B at 840 px; per pair: three joint PCAs
    cost_estimate = {"image": (0.5, 30.0), "pair": (0.3, 4.5)}
    default_config: dict[str, Any] = {
        **SD_SHARED_OPTIONS,
        "model": Option(SD15, "str", "hub id or local diffusers folder of the SD weights"),
        "image_size": Option(960, int, "SD input side in pixels (a multiple of 64)", min=64, multiple_of=64),
        "load_size": Option(960, int, "square test-time load size in pixels", min=1),
        "latent": Option("mode", str, "mode = the VAE posterior mean (ODISE's choice); sample = seeded draw",
                         choices=("sample", "mode")),
        "timestep": Option(100, int, "timestep of the single noising step and UNet call", min=0, max=999),
        "noise_seed": Option(42, int, "seed of ODISE's shared noise (one draw for every image)", min=0),
        "condition": Option("none", str, "UNet conditioning: none = empty prompt; clip-image = ODISE's implicit "
                            "captioner (refused: its trained weights are not available)",
                            choices=("none", "clip-image")),
        "pca_dims": Option([256, 256, 256], "json", "co-PCA dimensions of s5, s4, s3", check=_dims),
        "layer_weights": Option([1.0, 1.0, 1.0], "json", "weights of the s3, s4, s5 blocks of the SD part",
                                check=_three),
        "alpha": Option(0.5, float, "fusion weight: alpha * SD part, (1 - alpha) * DINO part", min=0.0, max=1.0),
        "dino_model": Option(DINO_MODEL, str, "timm name (arch.tag) of the DINOv2 model"),
        "dino_weights": Option("pretrained", str, "pretrained (Hugging Face cache / download) or random",
                               choices=("pretrained", "random")),
        "dino_size": Option(840, int, "DINOv2 input side in pixels (resized from the load size)", min=14,
                            multiple_of=14),
        "dino_layer": Option(11, int, "block whose output tokens are taken (0-based; -1 = last)", min=-1),
        "dino_arch": Option({}, "json", "timm create_model overrides (embed_dim, depth, ...; tiny tests only)"),
    }

    def validate_config(self) -> None:
        if self.config["condition"] == "clip-image":
            raise UsageError("sd-dino.condition=clip-image needs ODISE's trained implicit-captioner weights (CLIP "
                             "image embedding projected into the UNet's text and time conditioning), which corrbench "
                             "cannot load; use sd-dino.condition=none (docs/methods.md#sddino)")
        if not isinstance(self.config["dino_arch"], dict):
            raise UsageError(f"sd-dino.dino_arch must be a JSON object, got {self.config['dino_arch']!r}")
        self.timestep = _as_int(self.config["timestep"], "sd-dino.timestep")
        self.dims = _dims(list(self.config["pca_dims"]))
        self.layer_weights = _three(list(self.config["layer_weights"]))
        self._dino_identity: str | None = None

    def shared_pass(self):  # one noised UNet call with its own settings: nothing to share with an inversion
        return None

    def extract_raw(self, images):
        raise UsageError("method 'sd-dino' has no raw feature export (--raw)")

    # -- models ------------------------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.dino = self._build_dino()
        unet = self.extractor.unet
        self.sd_channels = [self._out_channels(unet.get_submodule(p)) for p in SD_BLOCKS]
        if self.sd_channels[0] % 16 or self.sd_channels[1] % 4:
            raise UsageError(f"sd-dino packs s5/s4 by pixel_shuffle: their channels {self.sd_channels[:2]} must be "
                             "multiples of 16 and 4")

    @staticmethod
    def _out_channels(module) -> int:
        for attr in ("out_channels", "in_channels"):
            if isinstance(getattr(module, attr, None), int):
                return int(getattr(module, attr))
        raise UsageError(f"cannot tell the channels of {type(module).__name__}")

    def _build_dino(self):
        import torch
        import timm

        kwargs = dict(img_size=int(self.config["dino_size"]), num_classes=0, **self.config["dino_arch"])
        name = str(self.config["dino_model"])
        if self.config["dino_weights"] == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(DINO_RANDOM_SEED)
                model = timm.create_model(name.split(".")[0], pretrained=False, **kwargs)
        else:
            try:
                model = timm.create_model(name, pretrained=True, **kwargs)
            except Exception as exc:
                raise WeightsError(f"DINOv2 weights timm/{name} are not available ({type(exc).__name__}: "
                                   f"{str(exc)[:200]}); download them with `hf download timm/{name}` on a machine "
                                   "with Hugging Face access, or use --set sd-dino.dino_weights=random for an "
                                   "offline smoke test") from None
        return model.to(self.device).eval().requires_grad_(False)

    def dino_identity(self) -> str:
        if self._dino_identity is None:
            name = str(self.config["dino_model"])
            if self.config["dino_weights"] == "random":
                arch = json.dumps(self.config["dino_arch"], sort_keys=True)
                self._dino_identity = f"random:timm:{name}:{arch}:seed{DINO_RANDOM_SEED}"
            else:
                revision = _hub_revision(f"timm/{name}")
                if revision is None:
                    self.ensure_ready()  # loads (downloads when allowed) or raises how to get them
                    revision = _hub_revision(f"timm/{name}")
                if revision is None:
                    raise WeightsError(f"DINOv2 weights timm/{name} are not in the Hugging Face cache")
                self._dino_identity = f"hub:timm/{name}@{revision}"
        return self._dino_identity

    def weights_identity(self) -> str:
        return f"sd={super().weights_identity()};dino={self.dino_identity()}"

    def requirements(self):
        from corrbench.requirements import NOT_NEEDED, PRESENT, Requirement, fetchable, hf_cached

        reqs = super().requirements()
        name = str(self.config["dino_model"])
        what = f"DINOv2 {name}"
        if self.config["dino_weights"] == "random":
            reqs.append(Requirement("weights", what + " (random weights)", f"timm:{name}", NOT_NEEDED))
        elif hf_cached(f"timm/{name}", ["model.safetensors", "pytorch_model.bin"]):
            reqs.append(Requirement("weights", what, f"hf://timm/{name} (cached)", PRESENT))
        else:
            reqs.append(Requirement("weights", what, f"hf://timm/{name}", fetchable(),
                                    f"not in the Hugging Face cache; `hf download timm/{name}`"))
        return reqs

    # -- per image ------------------------------------------------------------------------------------------
    def sd_parts(self, image) -> list:
        """[s5, s4, s3] (each 1 × C × h × w float32) of one 3 × H × W image in [0, 1]."""
        import math

        import torch
        import torch.nn.functional as F

        from .dift import noise_level

        comps = self.extractor.components
        unet, vae = comps.unet, comps.vae
        size = _as_int(self.config["image_size"], "sd.image_size")
        x = image[None].to(self.device, torch.float32) * 2.0 - 1.0
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        dist = vae.encode(x.to(vae.dtype).contiguous()).latent_dist
        z = dist.mean.float()
        if self.config["latent"] == "sample":
            from .extractor import posterior_seed

            gen = torch.Generator("cpu").manual_seed(posterior_seed(image, int(self.config["seed"])))
            z = z + dist.std.float() * torch.randn(z.shape[1:], generator=gen).to(z.device)
        z = z * comps.scaling_factor
        a = noise_level(self.timestep)
        noise = ods_noise(tuple(z.shape[-2:]), int(self.config["noise_seed"])).to(z.device)
        x_t = z * math.sqrt(a) + noise * math.sqrt(1.0 - a)
        kept: dict[int, Any] = {}

        def hook(n):
            def fn(module, args, output):
                out = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
                kept[n] = out.float()
                if n == len(SD_BLOCKS) - 1:
                    raise _Stop
            return fn

        handles = [unet.get_submodule(p).register_forward_hook(hook(n)) for n, p in enumerate(SD_BLOCKS)]
        try:
            context = comps.text_embeddings([""])
            t = torch.full((1,), float(self.timestep), device=x_t.device, dtype=torch.float32)
            try:
                unet(x_t.to(unet.dtype), t, encoder_hidden_states=context)
            except _Stop:
                pass
        finally:
            for h in handles:
                h.remove()
        return [kept[n] for n in range(len(SD_BLOCKS))]

    def dino_tokens(self, image):
        """1 × D × g × g: block ``dino_layer``'s tokens (no final norm) of the image resized to ``dino_size``."""
        import torch
        import torch.nn.functional as F

        side = int(self.config["dino_size"])
        x = image[None].to(self.device, torch.float32)
        if x.shape[-2:] != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False, antialias=True)
        mean = torch.tensor((0.485, 0.456, 0.406), device=x.device).view(1, 3, 1, 1)
        std = torch.tensor((0.229, 0.224, 0.225), device=x.device).view(1, 3, 1, 1)
        layer = int(self.config["dino_layer"])
        depth = len(self.dino.blocks)
        layer = depth - 1 if layer == -1 else layer
        if not 0 <= layer < depth:
            raise UsageError(f"sd-dino.dino_layer={layer} does not exist: the ViT has {depth} blocks")
        (tokens,) = self.dino.forward_intermediates((x - mean) / std, indices=[layer], norm=False,
                                                    output_fmt="NCHW", intermediates_only=True)
        return tokens.float()

    def extract(self, images):
        import torch
        import torch.nn.functional as F

        outs = []
        for image in images:
            s5, s4, s3 = self.sd_parts(image)
            dino = self.dino_tokens(image)
            if dino.shape[-2:] != s3.shape[-2:]:  # e.g. another dino_size: brought to the SD grid
                dino = F.interpolate(dino, size=tuple(s3.shape[-2:]), mode="bilinear", align_corners=False)
            outs.append(pack(s5, s4, s3, dino)[0])
        return torch.stack(outs)

    # -- per pair -------------------------------------------------------------------------------------------
    def readout_features(self, fmap):
        # the cached map holds the raw parts; the descriptor exists only per pair, after the co-PCA
        raise UsageError("sd-dino builds its descriptor per pair (co-PCA of source and target), so it needs its "
                         "own readout: use --readout pair-conditioned (its default), not a per-image readout")

    def channels(self, packed_channels: int) -> tuple[int, int, int, int]:
        self.ensure_ready()
        c5, c4, c3 = self.sd_channels
        return c5, c4, c3, packed_channels - c5 // 16 - c4 // 4 - c3

    def fused_pair(self, source_map, target_map):
        """The fused descriptor maps (float64) of a pair's two packed maps."""
        chans = self.channels(source_map.shape[0])
        ps, pt = unpack(source_map.double(), chans), unpack(target_map.double(), chans)
        reduced = [co_pca(ps[n], pt[n], self.dims[n]) for n in range(3)]
        sd_s = sd_descriptor(reduced[0][0], reduced[1][0], reduced[2][0], self.layer_weights)
        sd_t = sd_descriptor(reduced[0][1], reduced[1][1], reduced[2][1], self.layer_weights)
        alpha = float(self.config["alpha"])
        return fuse(sd_s, ps[3], alpha), fuse(sd_t, pt[3], alpha)

    def transfer(self, source_map, target_map, source_grid: FeatureGrid, target_grid: FeatureGrid,
                 source_load_hw, target_load_hw, source_points):
        import torch

        from corrbench.readout import nn_transfer

        fs, ft = self.fused_pair(source_map, target_map)
        points = torch.as_tensor(source_points)
        return nn_transfer(fs, ft, source_grid, target_grid, tuple(source_load_hw), tuple(target_load_hw), points)

    def run_info(self) -> dict[str, Any]:
        info = {**super().run_info(), "timestep": self.timestep, "sd_blocks": dict(zip(PART_NAMES, SD_BLOCKS)),
                "pca": f"joint over source+target tokens per pair (exact, float64), dims {self.dims} (s5, s4, s3)",
                "layer_weights_s3_s4_s5": self.layer_weights, "alpha": float(self.config["alpha"]),
                "condition": self.config["condition"], "noise": f"ODISE shared noise, seed {self.config['noise_seed']}",
                "dino": {"model": str(self.config["dino_model"]), "weights": self.dino_identity(),
                         "size": int(self.config["dino_size"]), "layer": int(self.config["dino_layer"]),
                         "facet": "token"}}
        return info

    @classmethod
    def tiny_config(cls, workdir):
        cfg = super().tiny_config(workdir)
        cfg.update(image_size=128, dino_size=112, dino_weights="random", dino_layer=1, pca_dims=[4, 4, 4],
                   dino_arch={"embed_dim": 16, "depth": 2, "num_heads": 2})
        return cfg


def _hub_revision(repo: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    for name in ("config.json", "model.safetensors"):
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str) and "snapshots" in found.split("/"):
            parts = found.split("/")
            return parts[parts.index("snapshots") + 1]
    return None
