"""Click commands that read finished runs: ``report`` (tables, or the HTML report), ``plot matches``, ``leaderboard``.

Added to the core group in :mod:`corrbench.cli`; plugins add their own ``plot`` subcommands to the same
``plot`` group (the DHF plugin: ``plot mixing-weights``).
"""

from __future__ import annotations

from pathlib import Path

import click

from .errors import UsageError


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "latex"]), default="md", show_default=True,
              help="Format of the printed table (without --html).")
@click.option("--cost", is_flag=True, help="Add the seconds-per-image column.")
@click.option("--html", "html_file", type=click.Path(path_type=Path), default=None,
              help="Write the self-contained HTML report of the runs to this file instead of printing tables.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def report(run_dirs: tuple[Path, ...], fmt: str, cost: bool, html_file: Path | None, quiet: bool) -> None:
    """Re-render the table of finished runs, or write their HTML report (--html FILE)."""
    if html_file is not None:
        from .report import write_report

        write_report(list(run_dirs), html_file, progress=not quiet)
        click.echo(f"report: {html_file}")
        return
    from .results import headline_table, load_run, render

    for n, run_dir in enumerate(run_dirs):
        results, summary = load_run(run_dir)
        costs = {m: r.get("cost", {}) for m, r in results.get("methods", {}).items()} if cost else None
        if len(run_dirs) > 1:
            click.echo(("\n" if n else "") + f"{run_dir}:")
        click.echo(render(headline_table(summary, costs), fmt), nl=False)


@click.group()
def plot() -> None:
    """Draw pictures of runs (and, through plugins, of checkpoints)."""


@plot.command("matches")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), required=True, help="A corrbench run folder.")
@click.option("--pair", "pair_id", required=True, help="Pair id (as in predictions.jsonl).")
@click.option("--method", default=None, help="Method, when the run has several.")
@click.option("--out", "out_file", type=click.Path(path_type=Path), default=None,
              help="Output image (default RUN/matches-<method>-<pair>.png).")
@click.option("--alpha", type=float, default=0.1, show_default=True)
@click.option("--norm", type=click.Choice(["bbox", "img"]), default="bbox", show_default=True)
def plot_matches(run_dir: Path, pair_id: str, method: str | None, out_file: Path | None, alpha: float,
                 norm: str) -> None:
    """Source and target with ground-truth and predicted keypoints, coloured by correctness."""
    from .plots import load_predictions
    from .plots import plot_matches as draw

    if not alpha > 0:
        raise UsageError(f"--alpha must be positive, got {alpha}")
    if out_file is None:
        row, _ = load_predictions(run_dir, pair_id, method)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{row['method']}-{pair_id}")
        out_file = Path(run_dir) / f"matches-{safe}.png"
    info = draw(run_dir, pair_id, out_file, method=method, alpha=alpha, norm=norm)
    click.echo(f"wrote {info['file']}: {sum(info['correct'])}/{len(info['correct'])} correct at "
               f"PCK@{alpha:g} ({norm})")


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "html"]), default="md", show_default=True)
@click.option("--out", "out_file", type=click.Path(path_type=Path), default=None, help="Write here instead of stdout.")
@click.option("--allow-mixed", is_flag=True, help="Rank runs of different protocols, datasets or splits together.")
@click.option("--resamples", type=int, default=2000, show_default=True, help="Resamples of each paired test.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the paired tests.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def leaderboard(run_dirs: tuple[Path, ...], fmt: str, out_file: Path | None, allow_mixed: bool, resamples: int,
                seed: int, quiet: bool) -> None:
    """Rank the methods of runs of one protocol, with CIs and paired tests between neighbours."""
    from .errors import CorrbenchError
    from .leaderboard import build, render

    text = render(build(list(run_dirs), allow_mixed=allow_mixed, resamples=resamples, seed=seed,
                        progress=not quiet), fmt)
    if out_file is None:
        click.echo(text, nl=False)
        return
    try:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CorrbenchError(f"cannot write {out_file}: {exc.strerror or exc}") from exc
    click.echo(f"leaderboard: {out_file}")
