"""Plan and acquire: what a table run needs, checked before any benchmark work.

**plan** (:func:`make_plan`, all that ``--dry-run`` does): the rows, their resolved configs, the weights
and data each needs (``Descriptor.requirements()`` / ``Dataset.requirements()``, looked up locally, never
downloaded) and a time estimate (``Descriptor.cost_estimate``). Rows whose plugin is not installed are
marked *missing plugin* and reported in the table.

**acquire** (:func:`acquire`): datasets are prepared (``Dataset.prepare``: pair lists fetched and
checksummed, generated lists written) and every row's model is set up (weights loaded, or downloaded when
not cached and allowed). Everything that fails is listed in one error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..errors import CorrbenchError, DataError, MissingDataError, UsageError, WeightsError
from ..requirements import MISSING, PRESENT, UNCHECKED, Requirement
from .spec import DatasetSpec, Row, TableSpec, get_table

# --------------------------------------------------------------------------------------------------
# Requirements: asked of each row's descriptor and each dataset, never known here
# --------------------------------------------------------------------------------------------------


def _unchecked(what: str, where: str, exc: BaseException) -> Requirement:
    return Requirement("weights", what, where, UNCHECKED, f"could not check ({type(exc).__name__}: {exc})")


def descriptor_requirements(method: str, descriptor: Any) -> list[Requirement]:
    """``descriptor.requirements()``; a plugin error there is reported as *not checked*, never fatal."""
    try:
        return list(descriptor.requirements())
    except Exception as exc:  # a plugin changed its keys or modules: say so, do not guess
        return [_unchecked(f"weights of {method}", type(descriptor).__module__.split(".")[0], exc)]


def dataset_requirements(ds: Any) -> list[Requirement]:
    """``ds.requirements()``: what a dataset instance needs on disk, checked without downloading anything."""
    try:
        return list(ds.requirements())
    except Exception as exc:
        return [Requirement("data", f"{ds.name} dataset", str(getattr(ds, "root", "-")), UNCHECKED,
                            f"could not check ({type(exc).__name__}: {exc})")]


# --------------------------------------------------------------------------------------------------
# Time estimate (order of magnitude; not measured here)
# --------------------------------------------------------------------------------------------------
#: generic rough seconds of work (24 GB-class GPU, desktop CPU) when a method's ``cost_estimate`` is silent
S_PER_IMAGE_DEFAULT = (0.5, 10.0)
#: per pair of readout (224² cosine NN per keypoint)
S_PER_PAIR_DEFAULT = (0.02, 0.5)


def _cost_of(method: str | type | None) -> Mapping[str, Sequence[float]]:
    cls = method
    if isinstance(method, str):
        from ..plugins import get_host

        try:
            cls = get_host().methods.get(method)
        except Exception:  # not registered or not importable: the generic figures
            return {}
    return getattr(cls, "cost_estimate", None) or {}


def estimate_seconds(method: str | type, images: int, pairs: int, device: str) -> float:
    """Rough seconds to extract ``images`` images and read out ``pairs`` pairs with ``method`` (a name or class)."""
    gpu = str(device).startswith("cuda")
    cost = _cost_of(method)
    img = tuple(cost.get("image", S_PER_IMAGE_DEFAULT))[0 if gpu else 1]
    pair = tuple(cost.get("pair", S_PER_PAIR_DEFAULT))[0 if gpu else 1]
    return img * images + pair * pairs


def _fmt_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------
@dataclass
class RowPlan:
    row: Row
    cls: type | None = None
    problem: str = ""  # why the row cannot run (plugin missing)
    config: dict[str, Any] = field(default_factory=dict)  # resolved, user overrides applied
    overridden: dict[str, Any] = field(default_factory=dict)  # keys that differ from the method's defaults
    requirements: list[Requirement] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # dataset → estimate

    @property
    def available(self) -> bool:
        return self.cls is not None


@dataclass
class DatasetPlan:
    spec: DatasetSpec
    split: str
    root: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    requirements: list[Requirement] = field(default_factory=list)
    pairs: int = 0
    images: int = 0
    counted: bool = False  # pairs/images counted from the list rather than the protocol's figures
    cls: type | None = None
    problem: str = ""


@dataclass
class Plan:
    table: TableSpec
    rows: list[RowPlan]
    datasets: list[DatasetPlan]
    overrides: dict[str, Any]
    device: str
    limit: int | None
    cache_dir: Path

    def requirements(self) -> list[Requirement]:
        """Every requirement once, with the rows that need it."""
        merged: dict[tuple[str, str, str], Requirement] = {}
        for rp in self.rows:
            for req in rp.requirements:
                key = (req.kind, req.what, req.where)
                if key not in merged:
                    merged[key] = Requirement(req.kind, req.what, req.where, req.status, req.fix, [], req.seconds)
                merged[key].rows.append(rp.row.method)
        for dp in self.datasets:
            for req in dp.requirements:
                merged.setdefault((req.kind, req.what, req.where), req)
        return list(merged.values())

    def blocking(self) -> list[Requirement]:
        return [r for r in self.requirements() if r.blocking]

    def total_seconds(self) -> float:
        return sum(sum(rp.seconds.values()) for rp in self.rows)

    def paper_protocol(self) -> bool:
        """True when nothing deviates from the table's protocol (no overrides, paper splits, no limit)."""
        return (not self.overrides and self.limit is None
                and all(dp.split == dp.spec.split for dp in self.datasets))

    def render(self) -> str:
        t = self.table
        lines = [f"Plan: {t.title}", f"  device {self.device}; feature cache {self.cache_dir}"
                 + (f"; --limit {self.limit} pairs per dataset" if self.limit else "")]
        if self.overrides:
            lines.append("  overrides: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in self.overrides.items()))
        if not self.paper_protocol():
            lines.append("  NOTE: this is not the paper protocol (overrides, another split or --limit): numbers "
                         "will not be comparable with the paper")
        lines.append("")
        lines.append("Datasets:")
        for dp in self.datasets:
            if dp.problem:
                lines.append(f"  {dp.spec.name}: {dp.problem}")
                continue
            count = "" if dp.counted else " (protocol figures; counted once the list is present)"
            lines.append(f"  {dp.spec.label} [{dp.spec.name}] split {dp.split}"
                         + ("" if dp.split == dp.spec.split else f" (paper: {dp.spec.split})")
                         + f": {dp.pairs} pairs, {dp.images} images{count}")
            lines.append(f"    protocol: {dp.spec.protocol}")
            if dp.config:
                lines.append(f"    config: {json.dumps(dp.config, default=str)}")
        lines.append("")
        lines.append("Rows:")
        for i, rp in enumerate(self.rows, 1):
            r = rp.row
            head = f"  {i}. {r.label} [{r.method}] {r.layers}, trained: {r.trained}"
            if not rp.available:
                lines.append(head + f" -- MISSING PLUGIN: {rp.problem}")
                continue
            est = ", ".join(f"{d} ~{_fmt_duration(s)}" for d, s in rp.seconds.items())
            lines.append(head + (f" (estimate: {est})" if est else ""))
            lines.append(f"     config: {json.dumps(rp.config, default=str, sort_keys=True)}")
            if rp.overridden:
                lines.append(f"     overridden: {json.dumps(rp.overridden, default=str, sort_keys=True)}")
            if r.protocol:
                lines.append(f"     protocol: {r.protocol}")
            if r.note:
                lines.append(f"     paper recipe: {r.note}")
        lines.append("")
        lines.append("Weights and data:")
        reqs = self.requirements()
        if not reqs:
            lines.append("  (nothing)")
        for req in reqs:
            who = f" (rows: {', '.join(req.rows)})" if req.rows else ""
            took = f" (~{_fmt_duration(req.seconds)} to get)" if req.seconds and req.status != PRESENT else ""
            lines.append(f"  [{req.status}] {req.kind}: {req.what} -- {req.where}{who}{took}")
            if req.fix and req.status != PRESENT:
                lines.append(f"      {req.fix}")
        lines.append("")
        total = self.total_seconds()
        runnable = sum(rp.available for rp in self.rows)
        lines.append(f"Estimated time: ~{_fmt_duration(total)} on {self.device} for {runnable} of {len(self.rows)} "
                     "rows (rough figures for a 24 GB-class GPU or a desktop CPU, not measurements; rows that "
                     "share one extraction pass count it once; cached features are not counted as saved)")
        lines.extend(t.plan_notes)
        blocking = self.blocking()
        if blocking:
            lines.append(f"Missing ({len(blocking)}): the run would stop before any work:")
            lines.extend(f"  - {r.what}: {r.where}. {r.fix}" for r in blocking)
        missing_rows = [rp.row.method for rp in self.rows if not rp.available]
        if missing_rows:
            lines.append(f"Rows without a plugin (reported as missing in the table): {', '.join(missing_rows)}")
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table.name, "device": self.device, "limit": self.limit, "cache_dir": str(self.cache_dir),
            "overrides": self.overrides, "paper_protocol": self.paper_protocol(),
            "datasets": [{"name": dp.spec.name, "split": dp.split, "root": str(dp.root) if dp.root else None,
                          "config": dp.config, "pairs": dp.pairs, "images": dp.images, "problem": dp.problem or None}
                         for dp in self.datasets],
            "rows": [{"label": rp.row.label, "method": rp.row.method, "protocol": rp.row.protocol,
                      "available": rp.available,
                      "problem": rp.problem or None, "config": rp.config, "overridden": rp.overridden,
                      "estimate_seconds": rp.seconds} for rp in self.rows],
            "requirements": [{"kind": r.kind, "what": r.what, "where": r.where, "status": r.status, "fix": r.fix,
                              "rows": r.rows, **({"seconds": r.seconds} if r.seconds is not None else {})}
                             for r in self.requirements()],
            "estimate_seconds": self.total_seconds(),
        }


def parse_assignments(items: Iterable[str] | Mapping[str, Any] | None, what: str) -> dict[str, str]:
    """``spair=DIR,cub=DIR`` (also repeated) → {"spair": "DIR", "cub": "DIR"}."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return {str(k): str(v) for k, v in items.items()}
    out: dict[str, str] = {}
    for item in items:
        for part in str(item).split(","):
            if not part.strip():
                continue
            name, eq, value = part.partition("=")
            if not eq or not name.strip() or not value.strip():
                raise UsageError(f"{what} {part!r}: expected DATASET=VALUE, e.g. spair=/data/SPair-71k")
            out[name.strip()] = value.strip()
    return out


def _split_names(value: str | Sequence[str] | None, known: Sequence[str], what: str) -> list[str]:
    if value is None:
        return list(known)
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UsageError(f"{what} {','.join(unknown) or '(empty)'}: choose from {', '.join(known)}")
    return [n for n in known if n in names]  # the table's order


def _scale_to_limit(pairs: int, images: int, limit: int | None) -> tuple[int, int]:
    if limit is None or limit >= pairs:
        return pairs, images
    return limit, min(images, 2 * limit)


def _pair_counts(ds: Any) -> tuple[int, int] | None:
    try:
        counts = ds.pair_counts()
    except Exception:  # an estimate only: the protocol figures stand
        return None
    return (int(counts[0]), int(counts[1])) if counts else None


def _for_other_rows(key: str, value: Any, classes: Mapping[str, type], table: TableSpec,
                    selected: Sequence[str], host: Any, aliases: Mapping[str, str]) -> bool:
    """True when ``key`` fits none of the selected rows but some row of the table left out by ``--rows``."""
    from ..config import resolve_overrides

    try:
        resolve_overrides({key: value}, classes, None, aliases)
        return False
    except UsageError:
        pass
    others = {}
    for row in table.rows:
        if row.method not in selected:
            try:
                others[row.method] = host.methods.entry(row.method).load()
            except Exception:  # a missing plugin cannot take the key either
                continue
    for method, cls in others.items():
        try:
            resolve_overrides({key: value}, {method: cls}, None, aliases)
            return True
        except UsageError:
            continue
    return False


def make_plan(table: TableSpec | str, datasets: str | Sequence[str] | None = None,
              rows: str | Sequence[str] | None = None, data_roots: Any = None, splits: Any = None,
              overrides: Any = None, device: str = "cpu", limit: int | None = None,
              cache_dir: str | os.PathLike | None = None) -> Plan:
    """Resolve rows, configs, requirements and estimates of ``table`` (a :class:`TableSpec` or a registered
    table name); reads nothing big and downloads nothing."""
    from ..config import parse_overrides, resolve_overrides
    from ..plugins import get_host
    from ..runner import default_cache_dir

    table = get_table(table)
    host = get_host()
    ds_names = _split_names(datasets, list(table.datasets), "--datasets")
    row_names = _split_names(rows, [r.method for r in table.rows], "--rows")
    roots = parse_assignments(data_roots, "--data-root")
    split_map = parse_assignments(splits, "--split")
    for what, mapping in (("--data-root", roots), ("--split", split_map)):
        unknown = sorted(set(mapping) - set(table.datasets))
        if unknown:
            raise UsageError(f"{what} names {', '.join(unknown)}; the table's datasets are {', '.join(table.datasets)}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    parsed = parse_overrides(overrides)
    aliases = host.methods.aliases()

    row_plans: list[RowPlan] = []
    for row in table.rows:
        if row.method not in row_names:
            continue
        rp = RowPlan(row)
        try:
            rp.cls = host.methods.entry(row.method).load()
        except CorrbenchError as exc:  # not registered, or its plugin fails to import
            rp.problem = str(exc)
        except Exception as exc:  # a broken plugin must not take the whole table down
            rp.problem = f"{type(exc).__name__}: {exc}"
        row_plans.append(rp)
    classes = {rp.row.method: rp.cls for rp in row_plans if rp.available}

    ds_plans: list[DatasetPlan] = []
    for name in ds_names:
        spec = table.datasets[name]
        dp = DatasetPlan(spec, split_map.get(name, spec.split))
        try:
            dp.cls = host.datasets.entry(name).load()
        except Exception as exc:
            dp.problem = f"dataset plugin missing: {exc}"
            dp.requirements.append(Requirement("data", f"{name} dataset plugin", name, MISSING, str(exc)))
            ds_plans.append(dp)
            continue
        ds_plans.append(dp)

    # dataset keys go to their dataset; every other key is resolved once against all available rows together,
    # exactly as `corrbench run --methods <those rows>` would (a typo is an error, never a silent default)
    ds_classes = {dp.spec.name: dp.cls for dp in ds_plans if dp.cls is not None}
    missing_rows = {rp.row.method for rp in row_plans if not rp.available}
    method_over: dict[str, Any] = {}
    dataset_over: dict[str, dict[str, Any]] = {}
    for key, value in parsed.items():
        name = key.rpartition(".")[0]
        if name in table.datasets:
            if name in ds_classes:
                dataset_over.setdefault(name, {})[key] = value
        elif aliases.get(name, name) in missing_rows:  # a key for a row whose plugin is missing cannot apply
            continue
        elif _for_other_rows(key, value, classes, table, row_names, host, aliases):
            continue  # meant for rows of the table left out with --rows: not a typo
        else:
            method_over[key] = value
    method_cfgs, _ = resolve_overrides(method_over, classes, None, aliases)

    for dp in ds_plans:
        if dp.cls is None:
            continue
        _, dp.config = resolve_overrides(dataset_over.get(dp.spec.name, {}), {}, (dp.spec.name, dp.cls), aliases)
        try:
            ds = dp.cls(root=roots.get(dp.spec.name), split=dp.split, config=dp.config)
        except CorrbenchError as exc:
            dp.problem = str(exc)
            dp.requirements.append(Requirement("data", f"{dp.spec.name} dataset", "-", MISSING, str(exc)))
            continue
        dp.root = Path(ds.root)
        dp.requirements = dataset_requirements(ds)
        dp.pairs, dp.images = dp.spec.pairs, dp.spec.images
        if not any(r.blocking for r in dp.requirements) and (counts := _pair_counts(ds)):
            (dp.pairs, dp.images), dp.counted = counts, True
        dp.pairs, dp.images = _scale_to_limit(dp.pairs, dp.images, limit)

    passes: dict[Any, list[RowPlan]] = {}  # rows that share one extraction pass (e.g. one SD inversion)
    for rp in row_plans:
        if not rp.available:
            continue
        rp.overridden = dict(method_cfgs[rp.row.method])
        rp.config = {**rp.cls.default_config, **rp.overridden}
        for dp in ds_plans:
            if not dp.problem:
                rp.seconds[dp.spec.name] = estimate_seconds(rp.cls, dp.images, dp.pairs, device)
        try:  # making a descriptor loads nothing
            descriptor = rp.cls(config=rp.overridden, device=device)
        except CorrbenchError as exc:  # a config it refuses (an unknown model name...): the run would stop
            rp.requirements = [Requirement("weights", f"{rp.row.method} configuration", rp.row.method, MISSING,
                                           str(exc))]
            continue
        except Exception as exc:  # a plugin bug: reported when the row is set up
            rp.requirements = [_unchecked(f"weights of {rp.row.method}", rp.cls.__module__.split(".")[0], exc)]
            continue
        rp.requirements = descriptor_requirements(rp.row.method, descriptor)
        try:
            shared = descriptor.shared_pass()
        except Exception:
            shared = None
        if shared is not None:
            passes.setdefault(shared, []).append(rp)
    for members in passes.values():
        # the run extracts them together: the pass is counted once, on its most expensive member
        lead = max(members, key=lambda rp: sum(rp.seconds.values()))
        for rp in members:
            if rp is not lead:
                rp.seconds = {name: estimate_seconds(rp.cls, 0, dp.pairs, device)
                              for dp in ds_plans if (name := dp.spec.name) in rp.seconds}

    return Plan(table, row_plans, ds_plans, parsed, device, limit,
                Path(cache_dir) if cache_dir else default_cache_dir())


# --------------------------------------------------------------------------------------------------
# Acquire: prepare datasets and set every row's model up before any benchmark work
# --------------------------------------------------------------------------------------------------
def _stop(problems: Sequence[str], plan: Plan) -> None:
    data = any(p.startswith("data") for p in problems)
    msg = (f"{len(problems)} thing(s) needed by `corrbench reproduce {plan.table.name}` are missing; nothing was "
           "run:\n" + "\n".join(f"  - {p}" for p in problems))
    raise (MissingDataError if data else WeightsError)(msg)


def check_blocking(plan: Plan) -> None:
    problems = [f"{r.kind}: {r.what} ({r.where}): {r.fix}" for r in plan.blocking()]
    problems += [f"data: {dp.spec.name}: {dp.problem}" for dp in plan.datasets if dp.problem
                 and not any(r.blocking for r in dp.requirements)]
    if problems:
        _stop(problems, plan)


def acquire(plan: Plan, data_roots: Mapping[str, str], failures: dict[str, str],
            echo: Callable[[str], None] | None = None) -> None:
    """Prepare each dataset and set each row up; user-facing problems stop the run (one message),
    other errors mark the row failed in ``failures`` (it is reported, not run)."""
    problems: list[str] = []
    for dp in plan.datasets:
        try:
            ds = dp.cls(root=data_roots.get(dp.spec.name), split=dp.split, config=dp.config)
            ds.prepare()
            if not dp.counted and (counts := _pair_counts(ds)):
                dp.pairs, dp.images = _scale_to_limit(*counts, plan.limit)
                dp.counted = True
        except CorrbenchError as exc:
            problems.append(f"data: {dp.spec.name}: {exc}")
    for rp in plan.rows:
        if not rp.available:
            continue
        if echo:
            echo(f"setting up {rp.row.method}")
        try:
            descriptor = rp.cls(config=rp.overridden, device=plan.device)
            descriptor.ensure_ready()
            del descriptor
        except (WeightsError, DataError, UsageError) as exc:
            problems.append(f"weights/config: {rp.row.method}: {exc}")
        except Exception as exc:  # a plugin bug: the row fails, the others still run
            failures[rp.row.method] = f"setup failed: {type(exc).__name__}: {exc}"
    if problems:
        _stop(problems, plan)
