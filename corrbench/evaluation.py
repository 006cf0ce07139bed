"""The Python API for notebooks: ``corrbench.evaluate`` and ``corrbench.get_method``.

::

    import corrbench, torch

    result = corrbench.evaluate(["dsift", my_module, my_function], "synthetic", limit=20)
    result.summary          # pandas: one row per method × metric × norm × average × α
    print(result.to_markdown())

``methods`` may mix registered names (``"dsift"``), :class:`~corrbench.Descriptor` instances
(``corrbench.get_method("dino", layer=11)``), a plain ``torch.nn.Module`` and a plain callable
``images → B×C×h×w``. The same runner as ``corrbench run`` does the work, so the numbers are the
CLI's numbers. A module is cached under a digest of its state dict (retraining it never reuses old
features); a plain callable has no weights the core can see, so it is recomputed every time unless
it is wrapped with :func:`as_descriptor` and told it is ``weight_free``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from .api import Descriptor, Preprocess
from .errors import UsageError


def get_method(name: str, device: str = "cpu", **config: Any) -> Descriptor:
    """A registered method, configured with ``config`` (checked as ``--set`` values are)."""
    from .plugins import get_host

    cls = get_host().methods.entry(name).load()
    return cls(config=config, device=device)


class ModuleDescriptor(Descriptor):
    """A ``torch.nn.Module`` (or a callable) mapping a B×3×H×W batch in [0, 1] to B×C×h×w features."""

    name = "module"

    def __init__(self, fn: Callable, name: str, preprocess: Preprocess | None = None, weight_free: bool = False,
                 device: str = "cpu"):
        super().__init__({}, device)
        self.name = name  # an instance attribute: each wrapped object is its own method
        self.fn = fn
        self.weight_free = weight_free
        if preprocess is not None:
            self.preprocess = preprocess

    def setup(self) -> None:
        import torch

        if isinstance(self.fn, torch.nn.Module):
            self.fn.to(self.device).eval()

    def weight_modules(self):
        import torch

        if isinstance(self.fn, torch.nn.Module):
            return {"module": self.fn}
        owner = getattr(self.fn, "__self__", None)  # a bound method of a module: that module's weights
        return {"module": owner} if isinstance(owner, torch.nn.Module) else {}

    def extract(self, images):
        return self.fn(images)


def as_descriptor(obj: Any, name: str | None = None, *, preprocess: Preprocess | None = None,
                  weight_free: bool = False, device: str = "cpu") -> Descriptor:
    """A name, Descriptor, ``nn.Module`` or callable as a :class:`Descriptor` for :func:`evaluate`."""
    if isinstance(obj, str):
        return get_method(obj, device=device)
    if isinstance(obj, Descriptor):
        return obj
    if not callable(obj):
        raise UsageError(f"a method must be a registered name, a Descriptor, an nn.Module or a callable, "
                         f"got {type(obj).__name__}")
    label = name or getattr(obj, "__name__", None) or type(obj).__name__
    return ModuleDescriptor(obj, str(label).lower().replace("_", "-"), preprocess, weight_free, device)


@dataclass
class Result:
    """What :func:`evaluate` returns: the run's tables as pandas DataFrames, and its ``results.json``."""

    summary: pd.DataFrame
    breakdown: pd.DataFrame
    predictions: pd.DataFrame
    results: dict[str, Any]
    table: pd.DataFrame
    out_dir: Path | None = None

    def to_markdown(self) -> str:
        """The headline table (methods as rows, PCK@0.1 img and bbox, seconds per image)."""
        from .results import render

        return render(self.table, "md")

    def metric(self, method: str, key: str = "pck@0.10_bbox") -> float:
        """One headline number, e.g. ``result.metric("dsift", "pck@0.10_img")``."""
        return self.results["methods"][method]["metrics"][key]


def evaluate(methods: Any, dataset: str = "synthetic", split: str | None = None, *,
             data_root: str | os.PathLike | None = None, limit: int | None = None, device: str = "cpu",
             batch_size: int = 8, out_dir: str | os.PathLike | None = None,
             cache_dir: str | os.PathLike | None = None, no_cache: bool = False,
             overrides: Sequence[str] | dict[str, Any] | None = None, skip_invalid: bool = False,
             compare: str | None = None, readout: str | None = None, protocol: str | None = None,
             flip: bool | None = None, resamples: int = 1000, progress: bool = False) -> Result:
    """Evaluate ``methods`` on ``dataset`` exactly as ``corrbench run`` does; return a :class:`Result`.

    ``methods``: one item or a list of registered names, Descriptors, ``nn.Module``\\ s and callables.
    ``overrides``: ``--set`` values for the registered names (``["dsift.stride=4"]`` or a dict).
    ``out_dir``: also write the run folder (results.json, summary.csv, ...), as the CLI does.
    ``readout``: a registered readout for every method (default: the protocol's, else each method's own).
    ``protocol``: a registered preset (``"geoaware"``...; default ``"dhf"``); ``compare``/``flip`` override it.
    """
    from .runner import run_benchmark

    items = [methods] if isinstance(methods, str) or not isinstance(methods, (list, tuple)) else list(methods)
    resolved = [m.strip() if isinstance(m, str) else as_descriptor(m, device=device) for m in items]
    run = run_benchmark(resolved, dataset, split=split, data_root=data_root, overrides=overrides, limit=limit,
                        device=device, batch_size=batch_size, out_dir=out_dir, cache_dir=cache_dir,
                        no_cache=no_cache, skip_invalid=skip_invalid, compare=compare, readout=readout,
                        protocol=protocol, flip=flip, resamples=resamples, progress=progress)
    return Result(run.summary, run.breakdown, pd.DataFrame(run.predictions), run.results, run.table, run.out_dir)


__all__ = ["ModuleDescriptor", "Result", "as_descriptor", "evaluate", "get_method"]
