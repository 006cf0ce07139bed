"""Run a planned table: acquire, one ``run_benchmark`` call per dataset with every runnable row, tabulate.

One call per dataset means each unique image is decoded and hashed once and shared extraction passes
(``Descriptor.shared_pass``) run once per batch; features go to the shared content-addressed cache, so a
rerun (or a row re-run after a failure) only reads them back. A row that fails is isolated (each row is
then run alone against the cache) and reported as *failed*.
"""

from __future__ import annotations

import math
import os
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

from ..distributed import DistContext, init_from_env
from ..errors import UsageError
from .plan import Plan, acquire, check_blocking, parse_assignments
from .render import Outcome
from .spec import DEFAULT_TOLERANCE, metric_key


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


def _protocol_option(protocol: str | None) -> dict[str, Any]:
    """``protocol=...`` for run_benchmark when the row names one and this corrbench's RunOptions has the field."""
    from dataclasses import fields

    from ..runner import RunOptions

    if protocol is None or "protocol" not in {f.name for f in fields(RunOptions)}:
        return {}
    return {"protocol": protocol}


def _protocol_groups(plan: Plan, failures: dict[str, str]):
    """(dataset plan, protocol, {method: class}, several protocols?) for each dataset and row protocol."""
    for dp in plan.datasets:
        groups: dict[str | None, dict[str, Any]] = {}
        for rp in plan.rows:
            if rp.available and rp.row.method not in failures:
                groups.setdefault(rp.row.protocol, {})[rp.row.method] = rp.cls
        for protocol, methods in groups.items():
            yield dp, protocol, methods, len(groups) > 1


def run_table(plan: Plan, *, data_roots: Any = None, batch_size: int = 8, out_dir: str | os.PathLike | None = None,
              tolerance: float = DEFAULT_TOLERANCE, progress: bool = True,
              echo: Callable[[str], None] | None = None) -> Outcome:
    """Acquire, run every runnable row per dataset, and write the table (when ``out_dir`` is given)."""
    if tolerance < 0 or not math.isfinite(tolerance):
        raise UsageError(f"--tolerance must be a non-negative number of PCK points, got {tolerance}")
    roots = parse_assignments(data_roots, "--data-root")
    check_blocking(plan)
    # under torchrun: join the group once, so every run_benchmark below shares it; rank 0 writes the table
    ctx, _ = init_from_env(plan.device)
    try:
        outcome = _run_table(plan, roots, batch_size, out_dir, tolerance, progress, echo, ctx)
    finally:
        ctx.close()
    return outcome


def _run_table(plan: Plan, roots: dict[str, Any], batch_size: int, out_dir: str | os.PathLike | None,
               tolerance: float, progress: bool, echo: Callable[[str], None] | None, ctx: DistContext) -> Outcome:
    from ..runner import run_benchmark

    echo = echo if ctx.is_main else None
    failures: dict[str, str] = {}
    acquire(plan, roots, failures, echo)

    by_method = {rp.row.method: rp for rp in plan.rows}
    out = Path(out_dir) if out_dir else None
    ours: dict[tuple[str, str, str], float] = {}
    dataset_failures: dict[tuple[str, str], str] = {}
    run_dirs: dict[str, str] = {}
    for dp, protocol, methods, several in _protocol_groups(plan, failures):
        kwargs = dict(dataset=dp.spec.name, split=dp.split, data_root=roots.get(dp.spec.name), limit=plan.limit,
                      device=plan.device, batch_size=batch_size, cache_dir=plan.cache_dir, progress=progress,
                      **_protocol_option(protocol))
        # rows under different protocols run (and are written) separately
        where = f"{dp.spec.name}/{protocol or 'default'}" if several else dp.spec.name

        def overrides_for(names: Iterable[str]) -> dict[str, Any]:
            """The plan's resolved configs as method-qualified keys, plus the dataset's config."""
            over = {f"{n}.{k}": v for n in names for k, v in by_method[n].overridden.items()}
            over.update({f"{dp.spec.name}.{k}": v for k, v in dp.config.items()})
            return over

        if echo:
            echo(f"{where}: running {', '.join(methods)}")
        good = list(methods)
        result = None
        try:
            result = run_benchmark(good, overrides=overrides_for(good),
                                   out_dir=out / where if out else None, **kwargs)
        except Exception as first:  # isolate the failing row(s): run each alone (features come from the cache)
            if echo:
                echo(f"{dp.spec.name}: a row failed ({_first_line(first)}); running rows one by one")
            good = []
            for name in methods:
                try:
                    run_benchmark([name], overrides=overrides_for([name]), out_dir=None, **kwargs)
                    good.append(name)
                except Exception as exc:
                    dataset_failures[(name, dp.spec.name)] = _first_line(exc)
                    if echo:
                        echo(f"{dp.spec.name}: {name} failed: {_first_line(exc)}")
                        if os.environ.get("CORRBENCH_DEBUG"):
                            echo(traceback.format_exc())
            if good:
                result = run_benchmark(good, overrides=overrides_for(good),
                                       out_dir=out / where if out else None, **kwargs)
        if result is None or not result.results:  # nothing ran, or a non-zero rank (rank 0 scores)
            continue
        if result.out_dir is not None:
            run_dirs[where] = str(result.out_dir)
        dp.pairs, dp.images, dp.counted = result.results["dataset"]["n_pairs"], result.results["dataset"]["n_images"], True
        for method, entry in result.results["methods"].items():
            for norm in plan.table.norms:
                value = entry["metrics"].get(metric_key(norm, plan.table.alpha))
                if value is not None:
                    ours[(method, dp.spec.name, norm)] = float(value)
    # a row that failed on every dataset is a failed row
    for rp in plan.rows:
        m = rp.row.method
        if rp.available and m not in failures and plan.datasets and \
                all((m, dp.spec.name) in dataset_failures for dp in plan.datasets):
            failures[m] = "; ".join(f"{d}: {v}" for (mm, d), v in dataset_failures.items() if mm == m)
    outcome = Outcome(plan, tolerance, ours, failures, dataset_failures, run_dirs, reporting=ctx.is_main)
    if out is not None and ctx.is_main:
        outcome.write(out)
    return outcome
