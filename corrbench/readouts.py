"""Readouts: how a pair's two feature maps become predicted target keypoints (a plugin contract).

A readout is a named, registered object (hook ``register_readouts``), chosen per method by its
``default_readout`` and overridable for a whole run with ``--readout NAME`` and
``--set readout.key=value``. It is recorded by name, version and settings in ``results.json`` and in
the key of cached predictions. The core registers two, through the same hook a third party uses:

* ``nn`` — the exact nearest-neighbour readout (:func:`corrbench.readout.nn_transfer`): the source
  feature sampled bilinearly at the keypoint, cosine similarity with the target map upsampled to every
  target pixel, argmax. It reports each match's margins for the regression lane.
* ``pair-conditioned`` — the method's own :meth:`PairConditionedDescriptor.transfer` (DHPF's gates and
  Hough matching, HPF's RHM): the method *is* its readout.

Plugins add others (the DINO plugin registers ``patch-centre``). A readout sees the descriptor, so it
can ask it for matching features (:meth:`Descriptor.readout_features`, e.g. DINO's log-binning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import UsageError
from .options import coerce_config, declare

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
    """N×2 float64 predicted points (x, y) in the target load frame, and optionally N×2 match margins
    (``[local, far]`` cosine gaps, see :func:`corrbench.readout.match_margins`) for the regression lane."""

    points: "torch.Tensor"
    margins: "torch.Tensor | None" = None


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


class NearestNeighbour(Readout):
    """Exact nearest neighbour: cosine argmax over every target pixel of the bilinearly upsampled map."""

    name = "nn"
    description = "cosine nearest neighbour over every pixel of the bilinearly upsampled target map (exact)"

    def prepare_target(self, descriptor, target_map, target_grid, target_load_hw):
        from .readout import target_norms

        return target_norms(descriptor.readout_features(target_map), target_grid, target_load_hw)

    def transfer(self, x: ReadoutInput) -> ReadoutOutput:
        from .readout import nn_transfer

        d = x.descriptor
        points, margins = nn_transfer(d.readout_features(x.source_map), d.readout_features(x.target_map),
                                      x.source_grid, x.target_grid, x.source_load_hw, x.target_load_hw,
                                      x.source_points, target_norm=x.target_prepared, return_margin=True)
        return ReadoutOutput(points, margins)


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


__all__ = ["NearestNeighbour", "PairConditioned", "Readout", "ReadoutInput", "ReadoutOutput", "make_readout"]
