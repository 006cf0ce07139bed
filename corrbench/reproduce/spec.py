"""The table contract: :class:`TableSpec`, :class:`Row`, :class:`DatasetSpec`, and the paper baseline file.

A published comparison table is plugin data: a plugin registers its :class:`TableSpec` through the
``register_tables`` hook (docs/plugins.md) and ``corrbench reproduce <name>`` re-runs it (docs/reproduce.md).
The core names no table, method or dataset: a table's rows and datasets are looked up in the registries.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..compare import CELLS_FORMAT as BASELINE_FORMAT  # a published table has cells, no keypoint records
from ..compare import PAPER_TOLERANCE as DEFAULT_TOLERANCE  # noqa: F401  (re-exported)
ALPHA = 0.10
NORMS = ("img", "bbox")


def metric_key(norm: str, alpha: float = ALPHA) -> str:
    """The results.json metric name of PCK@alpha pooled per keypoint (``pck@0.10_img``)."""
    from ..metrics import metric_key as key

    return key(alpha, norm)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset column group of a table, as the paper evaluated it."""

    name: str  # corrbench dataset id (a registered dataset)
    label: str
    split: str  # the paper's split
    protocol: str  # how the paper's pairs were chosen, in words
    pairs: int  # pairs of the paper protocol (for the time estimate when the list is not present)
    images: int  # distinct images (an upper bound where unknown)


@dataclass(frozen=True)
class Row:
    """One row of a table: a registered method and the numbers the paper reports for it."""

    label: str  # as printed in the paper
    method: str  # corrbench method id (a registered method)
    layers: str  # the paper's setting column (layers × timesteps in the DHF table)
    trained: str
    paper: Mapping[str, Mapping[str, float]]  # dataset → norm → PCK@alpha (%)
    note: str = ""  # the recipe used to reproduce the row
    #: evaluation protocol preset the row is run under (``RunOptions.protocol``, e.g. ``dift``); None: the default
    protocol: str | None = None


@dataclass(frozen=True)
class TableSpec:
    """A published table: rows, datasets, metric, the published numbers and their source.

    ``baseline``: file stem of its committed ``benchmarks/baselines/<baseline>.json`` (default: ``name``);
    ``plan_notes``: lines printed at the end of the ``--dry-run`` plan (memory needs, hardware);
    ``deviations_doc``: where the deviations are documented (shown with them in table.md).
    """

    name: str
    title: str
    source: str
    datasets: Mapping[str, DatasetSpec]
    rows: tuple[Row, ...]
    metric: Mapping[str, Any]
    deviations: tuple[str, ...] = ()
    baseline: str = ""
    plan_notes: tuple[str, ...] = ()
    deviations_doc: str = ""

    @property
    def description(self) -> str:  # what `corrbench plugins` / the registry show
        return self.title

    @property
    def alpha(self) -> float:
        return float(self.metric.get("alpha", ALPHA))

    @property
    def norms(self) -> tuple[str, ...]:
        return tuple(self.metric.get("norms", NORMS))

    @property
    def baseline_name(self) -> str:
        return self.baseline or self.name


def paper_baseline(table: TableSpec) -> dict[str, Any]:
    """The table as a ``corrbench-baseline/1`` object (what ``benchmarks/baselines/<baseline>.json`` holds)."""
    return {
        "format": BASELINE_FORMAT,
        "name": table.name,
        "title": table.title,
        "source": table.source,
        "metric": dict(table.metric),
        "datasets": {d.name: {"label": d.label, "split": d.split, "pairs": d.pairs, "protocol": d.protocol}
                     for d in table.datasets.values()},
        "rows": [{"label": r.label, "method": r.method, "layers_x_timesteps": r.layers, "trained": r.trained,
                  "recipe": r.note, "metrics": {ds: {metric_key(n, table.alpha): v for n, v in norms.items()}
                                                for ds, norms in r.paper.items()}}
                 for r in table.rows],
    }


def default_baseline_path(name: str) -> Path:
    """``benchmarks/baselines/<name>.json`` of the source checkout this module lives in."""
    return Path(__file__).resolve().parents[2] / "benchmarks" / "baselines" / f"{name}.json"


def get_table(name: str | TableSpec) -> TableSpec:
    """A registered table by name (``register_tables``), or ``name`` itself when it is a :class:`TableSpec`."""
    if isinstance(name, TableSpec):
        return name
    from ..plugins import get_host

    table = get_host().tables.get(str(name))
    if not isinstance(table, TableSpec):
        from ..errors import CorrbenchError

        raise CorrbenchError(f"table {name!r} is registered as {type(table).__name__}, not a TableSpec")
    return table


def table_names() -> list[str]:
    """The registered tables."""
    from ..plugins import get_host

    return get_host().tables.names()


def write_paper_baseline(table: str | TableSpec, path: str | os.PathLike | None = None) -> Path:
    """(Re)write ``benchmarks/baselines/<baseline>.json`` from a registered table."""
    from ..fsmode import atomic_write_bytes

    table = get_table(table)
    target = Path(path) if path else default_baseline_path(table.baseline_name)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, (json.dumps(paper_baseline(table), indent=2, ensure_ascii=False) + "\n").encode())
    return target
