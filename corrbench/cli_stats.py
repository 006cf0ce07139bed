"""``corrbench paired``: is method A better than method B on the same pairs, and by how much?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .errors import CorrbenchError, UsageError


def method_predictions(run_dir: Path, method: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One method's predictions.jsonl rows and the run's results.json (one-line errors naming the file)."""
    from .plots import read_predictions
    from .results import load_run

    results, _ = load_run(run_dir)
    if method not in results.get("methods", {}):
        raise UsageError(f"{run_dir}: no method {method!r} in this run; methods: "
                         f"{', '.join(results.get('methods', {})) or '(none)'}")
    rows = [r for r in read_predictions(run_dir) if r.get("method") == method]
    if not rows:
        raise CorrbenchError(f"{Path(run_dir) / 'predictions.jsonl'}: no predictions of method {method!r}")
    return rows, results


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-a", "method_a", required=True, help="Method A (from the first run).")
@click.option("-b", "method_b", required=True, help="Method B (from the second run, else the first).")
@click.option("--alpha", type=float, default=0.1, show_default=True)
@click.option("--norm", type=click.Choice(["bbox", "img"]), default=None,
              help="Reference length (default: the run protocol's headline norm).")
@click.option("--average", type=click.Choice(["point", "image"]), default=None,
              help="Pooled per keypoint or mean per image (default: the protocol's; 'category' runs use point).")
@click.option("--resamples", type=int, default=2000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--allow-mixed-protocols", "allow_mixed", is_flag=True,
              help="Test even when the two runs were measured under different protocols.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def paired(runs, method_a, method_b, alpha, norm, average, resamples, seed, allow_mixed, as_json) -> None:
    """Paired test of method A against method B on the pairs both evaluated (RUN, or RUN_A RUN_B).

    Prints Δ = PCK(A) − PCK(B), its paired-bootstrap 95 % interval (pairs resampled within categories)
    and a two-sided sign-flip permutation p-value.
    """
    from .compare import protocol_label
    from .stats import paired_difference

    if len(runs) > 2:
        raise UsageError("give one run folder (two methods of it) or two (method A of the first, B of the second)")
    if resamples < 100:
        raise UsageError(f"--resamples must be at least 100, got {resamples}")
    if not 0 < alpha <= 1:
        raise UsageError(f"--alpha {alpha}: expected a number in (0, 1]")
    run_a, run_b = runs[0], runs[-1]
    if run_a == run_b and method_a == method_b:
        raise UsageError("-a and -b name the same method of the same run")
    rows_a, res_a = method_predictions(run_a, method_a)
    rows_b, res_b = method_predictions(run_b, method_b)
    pa, pb = protocol_label(res_a.get("protocol")), protocol_label(res_b.get("protocol"))
    if pa != pb and not allow_mixed:
        raise UsageError(f"{run_a} was measured under protocol {pa!r}, {run_b} under {pb!r}; "
                         "a paired test needs one protocol (--allow-mixed-protocols to test anyway)")
    da, db = res_a.get("dataset", {}), res_b.get("dataset", {})
    if (da.get("name"), da.get("split")) != (db.get("name"), db.get("split")):
        raise UsageError(f"the runs evaluated different data: {da.get('name')}/{da.get('split')} and "
                         f"{db.get('name')}/{db.get('split')}")
    headline = (res_a.get("protocol") or {}).get("headline") or {}
    norm = norm or str(headline.get("metric", "pck@0.10_bbox")).rpartition("_")[2]
    average = average or ("image" if headline.get("average") == "image" else "point")
    compare = (res_a.get("protocol") or {}).get("compare", "le")
    out = paired_difference(rows_a, rows_b, alpha=alpha, norm=norm, average=average, resamples=resamples, seed=seed,
                            compare=compare)
    out.update({"a": method_a, "b": method_b, "protocol": pa})
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    lo, hi = out["ci95"]
    verdict = "separated" if out["p"] < 0.05 and (lo > 0 or hi < 0) else "not separated"
    click.echo(f"{method_a} − {method_b}: Δ PCK@{alpha:g} {norm} ({average}) = {out['delta']:+.2f} points, "
               f"95 % CI [{lo:+.2f}, {hi:+.2f}], p = {out['p']:.4f} ({out['n_pairs']} pairs; {verdict} at 0.05)")
