"""What every ``timm:<model>`` and ``hf:<repo>`` method shares: settings, token handling and facet hooks.

A backbone subclass says how to build its network (:meth:`Backbone.build_model`), where its transformer
blocks are and how many prefix tokens (CLS, registers) precede the patch tokens. The base class then
captures the chosen blocks' outputs (``facet=token``) or their attention projections
(``facet=key/value/query``) with forward hooks, drops the prefix tokens, reshapes the patch tokens to the
patch grid, optionally L2-normalises each layer and concatenates the layers along channels.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from corrbench.api import Descriptor, FeatureGrid, Preprocess
from corrbench.errors import UsageError
from corrbench.options import Option

WEIGHTS = ("pretrained", "random")
FACETS = ("token", "key", "value", "query")
#: seed of the random initialisation for ``weights=random``
RANDOM_SEED = 0


def shared_options() -> dict[str, Option]:
    return {
        "weights": Option("pretrained", str, "pretrained (the published weights) or random (seeded, untrained)",
                          choices=WEIGHTS),
        "layers": Option([], "json", "0-based block indices to read, e.g. 8,11 (negative: from the end); "
                         "empty: the last block", check=_layer_list),
        "resolution": Option(0, int, "input side in pixels, rounded to a multiple of the patch; 0: the model's own",
                             min=0),
        "facet": Option("token", str, "block output (token) or its attention key/value/query projection",
                        choices=FACETS),
        "drop_registers": Option(True, bool, "drop CLS/register tokens before reshaping; false appends their mean "
                                 "to every cell"),
        "l2_per_layer": Option(False, bool, "L2-normalise each layer's map before concatenating the layers"),
    }


def _layer_list(value: Any) -> list[int]:
    """``8``, ``"8,11"``, ``[8, 11]`` → ``[8, 11]`` (a single index is a one-layer list)."""
    if isinstance(value, str):
        value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        value = [value]
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).strip().lstrip("-").isdigit():
            raise ValueError("block indices: an integer or a comma list such as 8,11 (negative counts from the end)")
        out.append(int(v))
    return out


def round_to_multiple(size: int, multiple: int) -> int:
    """``size`` rounded to the nearest multiple of ``multiple`` (at least one multiple)."""
    return max(multiple, int(math.floor(size / multiple + 0.5)) * multiple)


class Capture:
    """Forward hooks that keep the outputs of some modules for one forward pass.

    ``stop_after`` ends the forward pass (by raising :class:`_Enough`) once every wanted output is in,
    so reading block 3 of 24 does not run blocks 4–24.
    """

    class _Enough(Exception):
        pass

    def __init__(self, modules: list[Any]):
        self.modules = modules
        self.outputs: dict[int, Any] = {}

    def run(self, forward, *args, **kwargs) -> list[Any]:
        handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]
        self.outputs = {}
        try:
            forward(*args, **kwargs)
        except Capture._Enough:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [i for i in range(len(self.modules)) if i not in self.outputs]
        if missing:
            raise RuntimeError(f"modules {missing} were not called by the forward pass")
        return [self.outputs[i] for i in range(len(self.modules))]

    def _hook(self, index: int):
        def hook(module, inputs, output):
            self.outputs[index] = output[0] if isinstance(output, (tuple, list)) else output
            if len(self.outputs) == len(self.modules):
                raise Capture._Enough
        return hook


class Backbone(Descriptor):
    """Dense features of any ViT or CNN backbone (see docs/backbones.md). Subclassed per family."""

    #: the family's shared ``--set`` namespace (``timm``, ``hf``)
    family: ClassVar[str] = ""
    default_readout: ClassVar[str] = "nn"

    def __init__(self, config: dict[str, Any] | None = None, device: str = "cpu"):
        super().__init__(config, device)
        self.model = None
        self._layer_indices: list[int] | None = None

    # -- what a family provides -------------------------------------------------------------------
    def build_model(self):
        """The network in eval mode with the configured weights."""
        raise NotImplementedError

    def patch_size(self) -> int:
        """The patch size (ViT) or the coarsest stride (CNN): the input side is rounded to a multiple of it."""
        raise NotImplementedError

    def native_resolution(self) -> int:
        raise NotImplementedError

    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        raise NotImplementedError

    def blocks(self) -> list[Any]:
        """The transformer blocks, in order (a CNN family overrides :meth:`layer_maps` instead)."""
        raise NotImplementedError

    def num_prefix_tokens(self) -> int:
        raise NotImplementedError

    def projection(self, block, facet: str):
        """The block's attention ``facet`` projection (a module whose output is B×N×C), or None."""
        raise NotImplementedError

    def forward(self, images):
        """Run the network on a normalised batch (the hooks collect what is needed)."""
        raise NotImplementedError

    # -- preprocessing ----------------------------------------------------------------------------
    def input_size(self) -> int:
        """The square input side: ``resolution`` (or the model's own) rounded to a multiple of the patch."""
        wanted = int(self.config["resolution"]) or self.native_resolution()
        return round_to_multiple(wanted, self.patch_size())

    def preprocessing(self) -> Preprocess:
        mean, std = self.normalisation()
        return Preprocess(load_size=self.input_size(), resize="square", resample="bicubic",
                          mean=tuple(mean), std=tuple(std))

    def feature_grid(self, load_hw, feat_hw) -> FeatureGrid:
        H, W = load_hw
        h, w = feat_hw
        p = self.patch_size()
        if (h, w) == (H // p, W // p) and self.is_token_model():
            # a ViT: cell (i, j) is the centre of patch (i, j); the last H % p rows are not covered
            return FeatureGrid.patches(p, p)
        if H % h == 0 and W % w == 0 and H // h == W // w:
            return FeatureGrid.patches(H // h, H // h)  # a CNN map that tiles the image exactly
        return FeatureGrid.spanning(load_hw, feat_hw)

    def is_token_model(self) -> bool:
        """True for a token model (its map is the patch grid, floor(H / patch) × floor(W / patch))."""
        return True

    # -- extraction -------------------------------------------------------------------------------
    def setup(self) -> None:
        self.model = self.build_model()
        self.layer_indices()  # a bad layer fails before any image is read
        if self.config["facet"] != "token":
            for block in [self.blocks()[i] for i in self.layer_indices()]:
                if self.projection(block, self.config["facet"]) is None:
                    raise UsageError(f"{self.name}: facet={self.config['facet']!r} is not available: the model's "
                                     "blocks expose no attention projection for it; use facet=token")

    def depth(self) -> int:
        return len(self.blocks())

    def layer_indices(self) -> list[int]:
        if self._layer_indices is None:
            n = self.depth()
            asked = list(self.config["layers"]) or [-1]
            out = []
            for i in asked:
                if not -n <= int(i) < n:
                    raise UsageError(f"{self.name}: layers={asked} has {i}, but the model has {n} blocks "
                                     f"(0..{n - 1}, or -{n}..-1 from the end)")
                out.append(int(i) % n)
            self._layer_indices = out
        return self._layer_indices

    def extract(self, images):
        import torch

        maps = self.layer_maps(images)
        if self.config["l2_per_layer"]:
            maps = [torch.nn.functional.normalize(m, dim=1) for m in maps]
        return torch.cat(maps, dim=1).float() if len(maps) > 1 else maps[0].float()

    def layer_maps(self, images) -> list:
        """One B×C×h×w map per configured layer."""
        blocks = self.blocks()
        facet = self.config["facet"]
        indices = self.layer_indices()
        modules = [blocks[i] if facet == "token" else self.projection(blocks[i], facet) for i in indices]
        order = sorted(range(len(indices)), key=lambda k: indices[k])  # the hook that fires last stops the pass
        tokens = Capture([modules[k] for k in order]).run(self.forward, images)
        by_layer = {k: t for k, t in zip(order, tokens)}
        h, w = images.shape[-2] // self.patch_size(), images.shape[-1] // self.patch_size()
        return [self.tokens_to_map(by_layer[k], h, w) for k in range(len(indices))]

    def tokens_to_map(self, tokens, h: int, w: int):
        """B×N×C tokens → B×C×h×w: prefix tokens dropped (or averaged into every cell), patches reshaped."""
        import torch

        n_prefix = self.num_prefix_tokens()
        B, N, C = tokens.shape
        if N - n_prefix != h * w:
            raise UsageError(f"{self.name}: {N} tokens with {n_prefix} prefix token(s) do not make a {h}×{w} "
                             "patch grid; the model may not support this input size")
        grid = tokens[:, n_prefix:].reshape(B, h, w, C).permute(0, 3, 1, 2)
        if self.config["drop_registers"] or n_prefix == 0:
            return grid.contiguous()
        prefix = tokens[:, :n_prefix].mean(dim=1)[:, :, None, None].expand(B, C, h, w)
        return torch.cat([grid, prefix], dim=1).contiguous()

    def run_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"input_size": self.input_size(), "patch": self.patch_size()}
        if self.model is not None:
            info.update({"blocks": self.depth(), "layers": self.layer_indices(),
                         "prefix_tokens": self.num_prefix_tokens()})
        return info


def seeded(build):
    """``build()`` under a fixed torch seed, without disturbing the caller's random state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return build()


def with_config(cls: type, name: str, attrs: dict[str, Any]) -> type:
    """A subclass of ``cls`` named ``name`` (the family member's full method name)."""
    return type(name, (cls,), {"__module__": cls.__module__, "__qualname__": name, "name": name, **attrs})
