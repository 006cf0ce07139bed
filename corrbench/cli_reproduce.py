"""Click commands ``corrbench reproduce <table>``, ``corrbench compare`` and ``corrbench regress``.

They are added to the core group with ``cli.add_command(reproduce)``, ``cli.add_command(compare)`` and
``cli.add_command(regress)``. Errors are :class:`~corrbench.errors.CorrbenchError` and are printed as one
line by ``corrbench.cli.main``; :func:`standalone` does the same for ``python -m corrbench.regress``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click



def _auto_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TableGroup(click.Group):
    """``corrbench reproduce <table>``: one subcommand per table registered by a plugin (``register_tables``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from .reproduce import table_names

        return sorted(set(super().list_commands(ctx)) | set(table_names()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        found = super().get_command(ctx, name)
        if found is not None:
            return found
        from .plugins import get_host

        tables = get_host().tables
        if name not in tables:
            return None
        entry = tables.entry(name)
        return table_command(entry.name, entry.description)


@click.group(cls=TableGroup)
def reproduce() -> None:
    """Re-run a published comparison table and print it beside the published numbers.

    Each table is registered by a plugin (`corrbench reproduce --help` lists them); every table takes the
    same options.
    """


def table_command(name: str, description: str = "") -> click.Command:
    """The ``corrbench reproduce <name>`` command of the registered table ``name``."""

    @click.command(name, help=(description or f"Re-run the table {name}.")
                   + "\n\nRows and datasets are the table's; see `--dry-run` for the plan.")
    @click.option("--datasets", default=None, help="Comma-separated dataset ids of the table (default: all).")
    @click.option("--rows", default=None, help="Only these rows (comma-separated method ids); default: all.")
    @click.option("--data-root", "data_roots", multiple=True, metavar="DATASET=DIR",
                  help="Dataset folder, e.g. spair=/data/SPair-71k,cub=/data/CUB_200_2011 (repeatable).")
    @click.option("--split", "splits", multiple=True, metavar="DATASET=SPLIT",
                  help="Another split than the paper's (e.g. spair=test); the table is then marked.")
    @click.option("--set", "overrides", multiple=True, metavar="NAME.KEY=VALUE",
                  help="Config override passed to every row that takes it, as in `corrbench run` (repeatable).")
    @click.option("--device", default="auto", show_default=True,
                  help="auto (cuda when available), cpu, cuda, cuda:N.")
    @click.option("--batch-size", type=int, default=8, show_default=True)
    @click.option("--limit", type=int, default=None, help="Only the first N pairs of each dataset (smoke runs).")
    @click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
                  help=f"Output folder (default corrbench-results/{name}-<time>).")
    @click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
                  help="Feature cache shared by the rows (default $CORRBENCH_CACHE or the user cache).")
    @click.option("--tolerance", type=float, default=2.0, show_default=True,
                  help="A row is 'reproduced' when every cell is within this many PCK points of the paper.")
    @click.option("--dry-run", is_flag=True, help="Print the plan (rows, configs, weights, data, time) and stop.")
    @click.option("--quiet", is_flag=True, help="No progress bars.")
    def command(datasets, rows, data_roots, splits, overrides, device, batch_size, limit, out_dir, cache_dir,
                tolerance, dry_run, quiet) -> None:
        import datetime as _dt

        from .reproduce import get_table, make_plan, run_table

        plan = make_plan(get_table(name), datasets=datasets, rows=rows, data_roots=list(data_roots),
                         splits=list(splits), overrides=list(overrides), device=_auto_device(device), limit=limit,
                         cache_dir=cache_dir)
        if dry_run:
            click.echo(plan.render(), nl=False)
            return
        if out_dir is None:
            out_dir = Path("corrbench-results") / f"{name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        outcome = run_table(plan, data_roots=list(data_roots), batch_size=batch_size, out_dir=out_dir,
                            tolerance=tolerance, progress=not quiet, echo=lambda s: click.echo(s, err=True))
        if not outcome.reporting:  # a non-zero rank under torchrun: rank 0 prints and writes
            return
        click.echo(outcome.markdown(), nl=False)
        click.echo(f"\ntables: {out_dir}/table.md, table.csv, table.tex; runs: "
                   + ", ".join(f"{d}: {p}" for d, p in outcome.run_dirs.items()))

    return command


@click.command()
@click.argument("baseline", type=click.Path(path_type=Path))
@click.argument("results", type=click.Path(path_type=Path))
@click.option("--tolerance", type=float, default=1.0, show_default=True,
              help="A cell fails when it drops by more than this many PCK points.")
@click.option("--metrics", default=None,
              help="Comma-separated metric names or wildcards: pck@0.10_img, 'pck@0.10_*', img, bbox.")
@click.option("--methods", default=None, help="Comma-separated methods to compare (default: all).")
@click.option("--two-sided", is_flag=True, help="Also fail when a cell rises by more than the tolerance.")
@click.option("--allow-missing", is_flag=True, help="Do not fail on baseline cells absent from the results.")
@click.option("--format", "fmt", type=click.Choice(["md", "csv"]), default="md", show_default=True)
@click.option("--changes-only", is_flag=True, help="Show only the cells that are not 'ok'.")
@click.option("--allow-mixed-protocols", "allow_mixed", is_flag=True,
              help="Compare even when the two sides were measured under different --protocol presets.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the PASS/FAIL summary line (and notes).")
@click.pass_context
def compare(ctx, baseline, results, tolerance, metrics, methods, two_sided, allow_missing, fmt, changes_only,
            allow_mixed, quiet) -> None:
    """Compare RESULTS with BASELINE cell by cell; exit status 1 when a cell drops by more than the tolerance.

    Each of BASELINE and RESULTS is a run folder, a folder of run folders (`corrbench reproduce` output)
    or a baseline JSON file (benchmarks/baselines/*.json).
    """
    from .compare import compare_paths

    split = (lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None)  # noqa: E731
    cmp = compare_paths(baseline, results, tolerance=tolerance, metrics=split(metrics), methods=split(methods),
                        two_sided=two_sided, allow_missing=allow_missing, allow_mixed=allow_mixed)
    if not quiet:
        click.echo(f"baseline: {baseline}\nresults:  {results}\n")
        click.echo(cmp.render(fmt, "changes" if changes_only else "all"), nl=False)
    for note in cmp.notes:
        click.echo(f"note: {note}")
    click.echo(cmp.summary_line())
    if not cmp.ok:
        ctx.exit(1)


@click.command()
@click.option("--update", is_flag=True, help="Write the lane's numbers to the baseline file instead of checking.")
@click.option("--baseline", type=click.Path(path_type=Path), default=None,
              help="Baseline file (default benchmarks/baselines/ci-synthetic.json of this checkout).")
@click.option("--tolerance", type=float, default=None,
              help="Allowed change in PCK points, either direction (default: the lane's, see regress.py).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None, help="Keep the run folder here.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None, help="Where the synthetic data lives.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the PASS/FAIL summary line.")
@click.pass_context
def regress(ctx, update, baseline, tolerance, out_dir, data_root, quiet) -> None:
    """The CI regression lane: a small deterministic run compared with committed PCK numbers."""
    from . import regress as lane

    last = []  # with --quiet only the last line (the summary) is shown
    ok = lane.main(update=update, baseline=baseline, tolerance=tolerance, out_dir=out_dir, data_root=data_root,
                   echo=last.append if quiet else click.echo)
    if quiet and last:
        click.echo(last[-1])
    if not ok:
        ctx.exit(1)


def standalone(command: click.Command, argv: list[str] | None = None, prog: str = "corrbench") -> None:
    """Run one command outside the corrbench group, with the core CLI's error handling and exit statuses."""
    from .cli import invoke

    sys.exit(invoke(command, argv, prog))
