"""Readouts: how a pair's two feature maps become predicted target keypoints (a plugin contract).

A readout is a named, registered object (hook ``register_readouts``), chosen per method by its
``default_readout`` and overridable for a whole run with ``--readout NAME`` and
``--set readout.key=value``. It is recorded by name, version and settings in ``results.json`` and in
the key of cached predictions. The core registers these, through the same hook a third party uses:

* ``nn`` — the exact nearest-neighbour readout (:func:`corrbench.readout.nn_transfer`): the source
  feature sampled bilinearly at the keypoint, cosine similarity with the target map upsampled to every
  target pixel, argmax. It reports each match's margins for the regression lane.
* ``pair-conditioned`` — the method's own :meth:`PairConditionedDescriptor.transfer` (DHPF's gates and
  Hough matching, HPF's RHM): the method *is* its readout.

* ``mutual-nn`` — ``nn`` plus a cycle check: the predicted pixel's descriptor matched back into the
  source must land within ``radius`` of the keypoint, otherwise the keypoint is *rejected*
  (:attr:`ReadoutOutput.rejected`; the runner counts it as a miss).
* ``soft-argmax``, ``window-soft-argmax``, ``kernel-soft-argmax`` — the expected pixel under
  softmax(cosine / temperature) over that same exact cosine map: everywhere, in a window around the
  argmax, or weighted by a Gaussian around it (sub-pixel predictions; settings via ``--set readout.*``).

Plugins add others (the DINO plugin registers ``patch-centre``). A readout sees the descriptor, so it
can ask it for matching features (:meth:`Descriptor.readout_features`, e.g. DINO's log-binning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import UsageError
from .options import Option, coerce_config, declare

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .api import Descriptor, FeatureGrid


@dataclass
class ReadoutInput:
    """One pair, as a readout receives it. Points are N×2 (x, y) in the source load frame."""

    descriptor: "Descriptor"
    source_map: "torch.Tensor"
    target_map: "torch.Tensor"
    source_grid: "FeatureGrid"
    target_grid: "FeatureGrid"
    source_load_hw: tuple[int, int]
    target_load_hw: tuple[int, int]
    source_points: "torch.Tensor"
    #: what :meth:`Readout.prepare_target` returned for this target (computed once per target image)
    target_prepared: Any = None


@dataclass
class ReadoutOutput:
    """N×2 float64 predicted points (x, y) in the target load frame, optionally N×2 match margins
    (``[local, far]`` cosine gaps, see :func:`corrbench.readout.match_margins`) for the regression lane,
    and optionally which keypoints the readout rejects (``rejected``)."""

    points: "torch.Tensor"
    margins: "torch.Tensor | None" = None
    #: N bools, True for a keypoint the readout refuses to predict (``mutual-nn``'s failed cycle check);
    #: its point is still given, and the runner scores it as a miss. None: every keypoint is kept.
    rejected: "torch.Tensor | None" = None


class Readout:
    """Base class of a readout. Subclasses set ``name`` and implement :meth:`transfer`.

    ``default_config`` declares the settings (``--set readout.key=value``), plain values or
    :class:`corrbench.Option` s, as for descriptors. Bump ``version`` when the same settings would
    predict other points: cached predictions are keyed by it.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    default_config: ClassVar[dict[str, Any]] = {}
    #: True when :meth:`transfer` may reject keypoints (:attr:`ReadoutOutput.rejected`): the runner's
    #: prediction cache keeps points only, so it recomputes such a readout's output instead of reusing them
    may_reject: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declare(cls)

    def __init__(self, config: dict[str, Any] | None = None):
        unknown = set(config or {}) - set(self.default_config)
        if unknown:
            raise UsageError(f"readout {self.name!r} has no setting(s) {', '.join(sorted(unknown))}; "
                             f"valid: {', '.join(sorted(self.default_config)) or '(none)'}")
        self.config: dict[str, Any] = {**self.default_config, **coerce_config(self, config, "readout")}

    def check(self, descriptor: "Descriptor") -> None:
        """Raise :class:`UsageError` when this readout cannot read out ``descriptor``'s maps."""

    def prepare_target(self, descriptor: "Descriptor", target_map: "torch.Tensor", target_grid: "FeatureGrid",
                       target_load_hw: tuple[int, int]) -> Any:
        """Work that depends on the target image alone, done once per target (default: nothing)."""
        return None

    def transfer(self, x: ReadoutInput) -> ReadoutOutput:
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What predictions depend on besides the features: recorded in results.json and the cache key."""
        return {"readout": self.name, "version": self.version, "config": dict(sorted(self.config.items()))}


class _CosineMap(Readout):
    """Readouts over the exact cosine map of the upsampled target: its per-pixel norms are computed once per target."""

    def prepare_target(self, descriptor, target_map, target_grid, target_load_hw):
        from .readout import target_norms

        return target_norms(descriptor.readout_features(target_map), target_grid, target_load_hw)


class NearestNeighbour(_CosineMap):
    """Exact nearest neighbour: cosine argmax over every target pixel of the bilinearly upsampled map."""

    name = "nn"
    description = "cosine nearest neighbour over every pixel of the bilinearly upsampled target map (exact)"

    def transfer(self, x: ReadoutInput) -> ReadoutOutput:
        from .readout import nn_transfer

        d = x.descriptor
        points, margins = nn_transfer(d.readout_features(x.source_map), d.readout_features(x.target_map),
                                      x.source_grid, x.target_grid, x.source_load_hw, x.target_load_hw,
                                      x.source_points, target_norm=x.target_prepared, return_margin=True)
        return ReadoutOutput(points, margins)


class MutualNearestNeighbour(_CosineMap):
    """``nn`` plus a cycle check: a keypoint whose match does not map back near it is rejected.

    The predicted target pixel's descriptor (the bilinearly upsampled target map there) is matched back
    over every pixel of the upsampled source map, by the same exact separable algebra as the forward
    match; the keypoint is kept when that backward nearest neighbour lies within ``radius`` source load
    pixels of the keypoint's (rounded, clipped) pixel. Points and margins are ``nn``'s, unchanged.

    The source map's per-pixel norms are needed for the backward match; the runner reads a source's
    pairs one after another from the same cached tensor, so the norms of the last source are kept
    (keyed by that tensor's identity, which a cached map never changes in place).
    """

    name = "mutual-nn"
    may_reject = True
    description = "nn plus a cycle check: keypoints whose match maps back farther than radius are rejected (exact)"
    default_config = {"radius": Option(None, float, "largest source load-pixel distance of the backward match "
                                                    "from the keypoint (default: one source feature-cell stride)",
                                       min=0, nullable=True)}

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__(config)
        self._last_source: tuple[Any, ...] | None = None

    def radius(self, source_grid: "FeatureGrid") -> float:
        r = self.config["radius"]
        return float(max(source_grid.stride_x, source_grid.stride_y)) if r is None else float(r)

    def _source_norms(self, x: ReadoutInput, source_features: "torch.Tensor") -> "torch.Tensor":
        import weakref

        from .readout import target_norms

        key = (x.source_grid, tuple(x.source_load_hw))
        last = self._last_source
        if last is not None and last[0]() is x.source_map and last[1]() is x.descriptor and last[2] == key:
            return last[3]
        norms = target_norms(source_features, x.source_grid, x.source_load_hw)
        self._last_source = (weakref.ref(x.source_map), weakref.ref(x.descriptor), key, norms)
        return norms

    def transfer(self, x: ReadoutInput) -> ReadoutOutput:
        from .readout import mutual_nn_transfer

        d = x.descriptor
        src = d.readout_features(x.source_map)
        points, margins, _, rejected = mutual_nn_transfer(
            src, d.readout_features(x.target_map), x.source_grid, x.target_grid, x.source_load_hw,
            x.target_load_hw, x.source_points, self.radius(x.source_grid), target_norm=x.target_prepared,
            source_norm=self._source_norms(x, src))
        return ReadoutOutput(points, margins, rejected)


class _Soft(_CosineMap):
    """Shared part of the soft readouts: the exact cosine map of :class:`NearestNeighbour`, then weights."""

    def weights(self, cos: "torch.Tensor") -> "torch.Tensor":
        """N×H×W non-negative weights summing to 1 per keypoint, from N×H×W cosines."""
        raise NotImplementedError

    def transfer(self, x: ReadoutInput) -> ReadoutOutput:
        import torch

        from .readout import cosine_maps

        d = x.descriptor
        cos = cosine_maps(d.readout_features(x.source_map), d.readout_features(x.target_map), x.source_grid,
                          x.target_grid, x.source_load_hw, x.target_load_hw, x.source_points, x.target_prepared)
        p = self.weights(cos)
        H, W = cos.shape[-2:]
        ys = torch.arange(H, dtype=torch.float64)
        xs = torch.arange(W, dtype=torch.float64)
        points = torch.stack([(p.sum(dim=1) * xs).sum(dim=1), (p.sum(dim=2) * ys).sum(dim=1)], dim=1)
        return ReadoutOutput(points)

    @staticmethod
    def _argmax_xy(cos: "torch.Tensor") -> "tuple[torch.Tensor, torch.Tensor]":
        W = cos.shape[-1]
        idx = cos.reshape(cos.shape[0], -1).argmax(dim=1)
        return idx % W, idx // W

    @staticmethod
    def _offsets(cos: "torch.Tensor", ax: "torch.Tensor", ay: "torch.Tensor") -> "tuple[torch.Tensor, torch.Tensor]":
        import torch

        H, W = cos.shape[-2:]
        dx = torch.arange(W, dtype=torch.float64)[None, None, :] - ax[:, None, None].double()
        dy = torch.arange(H, dtype=torch.float64)[None, :, None] - ay[:, None, None].double()
        return dx, dy


_TEMPERATURE = Option(0.02, float, "softmax temperature on cosine similarities (smaller: closer to the argmax)",
                      min=1e-6)


class SoftArgmax(_Soft):
    """The expected pixel under softmax(cosine / temperature) over the whole target map."""

    name = "soft-argmax"
    description = "expected pixel under softmax(cosine / temperature) over every target pixel"
    default_config = {"temperature": _TEMPERATURE}

    def weights(self, cos):
        import torch

        n = cos.shape[0]
        return torch.softmax(cos.reshape(n, -1) / float(self.config["temperature"]), dim=1).reshape(cos.shape)


class WindowSoftArgmax(_Soft):
    """Soft-argmax restricted to a square window around the argmax (GeoAware-SC's readout)."""

    name = "window-soft-argmax"
    description = "soft-argmax within a (2·radius+1)² window around the argmax (GeoAware-SC style)"
    default_config = {"temperature": _TEMPERATURE,
                      "radius": Option(7, int, "half-width of the window in target load pixels", min=0)}

    def weights(self, cos):
        import torch

        ax, ay = self._argmax_xy(cos)
        dx, dy = self._offsets(cos, ax, ay)
        r = int(self.config["radius"])
        inside = (dx.abs() <= r) & (dy.abs() <= r)
        logits = (cos / float(self.config["temperature"])).masked_fill(~inside, float("-inf"))
        n = cos.shape[0]
        return torch.softmax(logits.reshape(n, -1), dim=1).reshape(cos.shape)


class KernelSoftArgmax(_Soft):
    """Softmax weights times a Gaussian kernel centred on the argmax, renormalised (SFNet's kernel soft-argmax)."""

    name = "kernel-soft-argmax"
    description = "softmax weights times a Gaussian (sigma) around the argmax, renormalised (SFNet style)"
    default_config = {"temperature": _TEMPERATURE,
                      "sigma": Option(5.0, float, "standard deviation of the kernel in target load pixels", min=1e-6)}

    def weights(self, cos):
        import torch

        ax, ay = self._argmax_xy(cos)
        dx, dy = self._offsets(cos, ax, ay)
        sigma = float(self.config["sigma"])
        n = cos.shape[0]
        p = torch.softmax(cos.reshape(n, -1) / float(self.config["temperature"]), dim=1).reshape(cos.shape)
        p = p * torch.exp(-(dx ** 2 + dy ** 2) / (2 * sigma * sigma))
        return p / p.reshape(n, -1).sum(dim=1).clamp_min(1e-300)[:, None, None]


class PairConditioned(Readout):
    """The method's own pair-conditioned transfer (:meth:`PairConditionedDescriptor.transfer`)."""

    name = "pair-conditioned"
    description = "the method's own pair-conditioned transfer (DHPF/HPF: gated hyperpixels, Hough matching)"

    def check(self, descriptor) -> None:
        from .api import PairConditionedDescriptor

        if not isinstance(descriptor, PairConditionedDescriptor):
            raise UsageError(f"readout 'pair-conditioned' needs a method with its own transfer; "
                             f"{descriptor.name!r} has none (try --readout nn)")

    def transfer(self, x: ReadoutInput) -> ReadoutOutput:
        import torch

        with torch.inference_mode():
            points = x.descriptor.transfer(x.source_map, x.target_map, x.source_grid, x.target_grid,
                                           x.source_load_hw, x.target_load_hw, x.source_points)
        return ReadoutOutput(points)


def make_readout(name: str, config: dict[str, Any] | None = None) -> Readout:
    """A registered readout by name, configured (settings checked)."""
    from .plugins import get_host

    cls = get_host().readouts.entry(name).load()
    return cls(config)


__all__ = ["KernelSoftArgmax", "MutualNearestNeighbour", "NearestNeighbour", "PairConditioned", "Readout", "ReadoutInput",
           "ReadoutOutput", "SoftArgmax", "WindowSoftArgmax", "make_readout"]
