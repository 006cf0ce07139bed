"""``corrbench reproduce <table>``: re-run a published comparison table beside its published numbers.

A table is plugin data (:class:`TableSpec`, registered through the ``register_tables`` hook); the core
knows only the contracts: each row's method is asked for its ``requirements()`` and ``cost_estimate``,
each dataset for its ``requirements()`` and ``pair_counts()`` (docs/plugins.md). Each table's committed
``benchmarks/baselines/<baseline>.json`` is the same data as a file (``paper_baseline()`` writes it; a
test keeps the two identical). Protocol: docs/reproduce.md.

A run goes through three stages, each of which can stop it before any benchmark work is done:

1. **plan** (:func:`make_plan`, all that ``--dry-run`` does): rows, their resolved configs, the weights and
   data each needs and whether they are present (looked up locally, never downloaded), a time estimate.
   Rows whose plugin is not installed are marked *missing plugin* and are reported in the table.
2. **acquire** (:func:`acquire`): datasets are prepared and every row's model is set up (weights loaded,
   or downloaded when not cached and allowed). Everything that fails is listed in one error.
3. **run** (:func:`run_table`): one ``run_benchmark`` call per dataset with every runnable row; a row that
   fails is isolated and reported as *failed*.

Modules: :mod:`.spec` (the table contract and baseline file), :mod:`.plan` (plan, acquire),
:mod:`.run`, :mod:`.render` (verdicts and output formats).
"""

from __future__ import annotations

from ..requirements import DOWNLOAD, MISSING, NOT_NEEDED, PRESENT, UNCHECKED, Requirement
from .plan import (S_PER_IMAGE_DEFAULT, S_PER_PAIR_DEFAULT, DatasetPlan, Plan, RowPlan, acquire, check_blocking,
                   dataset_requirements, descriptor_requirements, estimate_seconds, make_plan, parse_assignments)
from .render import Outcome
from .run import run_table
from .spec import (ALPHA, BASELINE_FORMAT, DEFAULT_TOLERANCE, NORMS, DatasetSpec, Row, TableSpec,
                   default_baseline_path, get_table, metric_key, paper_baseline, table_names, write_paper_baseline)

__all__ = [
    "ALPHA", "BASELINE_FORMAT", "DEFAULT_TOLERANCE", "DOWNLOAD", "MISSING", "NORMS", "NOT_NEEDED", "PRESENT",
    "S_PER_IMAGE_DEFAULT", "S_PER_PAIR_DEFAULT", "UNCHECKED", "DatasetPlan", "DatasetSpec", "Outcome", "Plan",
    "Requirement", "Row", "RowPlan", "TableSpec", "acquire", "check_blocking", "dataset_requirements",
    "default_baseline_path", "descriptor_requirements", "estimate_seconds", "get_table", "make_plan", "metric_key",
    "paper_baseline", "parse_assignments", "run_table", "table_names", "write_paper_baseline",
]
