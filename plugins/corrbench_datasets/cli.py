"""``corrbench data download|verify|info NAME``: get, check and describe datasets.

Datasets are resolved through the plugin host, so these commands work for any registered dataset
that implements ``download()`` / ``verify_layout()`` / ``info()``.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import click

from corrbench.errors import DataError, UsageError


def _parse_sets(name: str, items: tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` or ``<name>.key=value`` → the dataset's config, parsed and checked as ``run --set`` does."""
    from corrbench.config import parse_overrides, resolve_overrides
    from corrbench.plugins import get_host

    entry = get_host().datasets.entry(name)
    # a bare key is the dataset's (keys have no dots; a dotted one names its target, as with `run --set`)
    qualified = [item if "." in item.partition("=")[0] or "=" not in item else f"{entry.name}.{item.strip()}"
                 for item in items]
    overrides = {}
    for key, value in parse_overrides(qualified).items():
        prefix, _, sub = key.rpartition(".")
        overrides[f"{entry.name}.{sub}" if prefix == name else key] = value  # an alias → the dataset's name
    _, config = resolve_overrides(overrides, {}, (entry.name, entry.load()))
    return config


def _dataset(name: str, root: Path | None, split: str | None = None, config: dict[str, Any] | None = None):
    from corrbench.plugins import get_host

    cls = get_host().datasets.get(name)
    return cls(root=root, split=split, config=config or {})


def _print_mapping(d: dict[str, Any], indent: int = 0) -> None:
    pad = "  " * indent
    for k, v in d.items():
        if isinstance(v, dict):
            click.echo(f"{pad}{k}:")
            _print_mapping(v, indent + 1)
        elif isinstance(v, (list, tuple)):
            click.echo(f"{pad}{k}: {', '.join(map(str, v)) if v else '(none)'}")
        else:
            click.echo(f"{pad}{k}: {v}")


_root_option = click.option("--data-root", "--root", "root", type=click.Path(path_type=Path), default=None,
                            help="Dataset folder (default: $CORRBENCH_DATA/<name> or the user cache).")
_set_option = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                           help="Dataset config, e.g. --set pairs=FILE (repeatable).")


@click.group("data")
def data() -> None:
    """Download, verify and describe datasets."""


@data.command("download")
@click.argument("name")
@_root_option
@click.option("--url", default=None, help="Download from this URL instead of the official one (a mirror).")
@click.option("--sha256", default=None, help="Expected sha256 of the archive.")
@click.option("--keep-archive", is_flag=True, help="Keep the downloaded archive after installing it.")
@click.option("--no-progress", "--quiet", "-q", "no_progress", is_flag=True, help="No progress bar.")
def download_cmd(name: str, root: Path | None, url: str | None, sha256: str | None, keep_archive: bool,
                 no_progress: bool) -> None:
    """Download NAME into its dataset folder (resumable, checksummed, extracted safely)."""
    ds = _dataset(name, root)
    wanted = {"url": url, "sha256": sha256, "keep_archive": keep_archive or None,
              "progress": False if no_progress else None}
    kwargs = {k: v for k, v in wanted.items() if v is not None}
    params = inspect.signature(ds.download).parameters
    unsupported = [k for k in kwargs if k not in params]
    if unsupported:
        raise UsageError(f"dataset {name!r} does not accept --{unsupported[0].replace('_', '-')} for download")
    result = ds.download(**kwargs) or {}
    status = result.get("status", "done") if isinstance(result, dict) else "done"
    click.echo(f"{name}: {status} at {ds.root}")
    if isinstance(result, dict):
        for key in ("sha256", "pair_list", "dhf_lists"):
            if key in result:
                click.echo(f"  {key}: {result[key]}")


@data.command("verify")
@click.argument("name")
@_root_option
@click.option("--split", "splits", multiple=True, help="Split(s) to read in full (default: the standard ones).")
@_set_option
def verify_cmd(name: str, root: Path | None, splits: tuple[str, ...], sets: tuple[str, ...]) -> None:
    """Check NAME's layout and counts, then read every pair and check its images exist."""
    config = _parse_sets(name, sets)
    ds = _dataset(name, root, config=config)
    problems: list[str] = []
    if hasattr(ds, "verify_layout"):
        report = ds.verify_layout()
        problems.extend(report.get("problems", []))
        if report.get("counts"):
            click.echo(f"{name} at {ds.root}")
            _print_mapping({"counts": report["counts"]}, 1)
        for note in report.get("notes", []):
            click.echo(f"  note: {note}")
    if not problems:  # reading pairs makes sense only once the layout is there
        for split in splits or getattr(ds, "verify_splits", (ds.split,)):
            found = _dataset(name, root, split=split, config=config).validate()
            click.echo(f"  split {split}: {'ok' if not found else f'{len(found)} problem(s)'}")
            problems.extend(found)
    for p in problems[:50]:
        click.echo(f"  problem: {p}")
    if len(problems) > 50:
        click.echo(f"  ... and {len(problems) - 50} more")
    if problems:
        raise DataError(f"{name}: {len(problems)} problem(s) found in {ds.root}")
    click.echo(f"{name}: ok")


@data.command("info")
@click.argument("name")
@_root_option
@_set_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info_cmd(name: str, root: Path | None, sets: tuple[str, ...], as_json: bool) -> None:
    """Show NAME's folder, splits, counts, source and licence."""
    info = _dataset(name, root, config=_parse_sets(name, sets)).info()
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
    else:
        _print_mapping(info)
