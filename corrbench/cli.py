"""The ``corrbench`` command line. User errors print one line (``--debug`` shows the traceback)."""

from __future__ import annotations

import datetime as _dt
import json
import sys
from pathlib import Path

import click

from .errors import CorrbenchError, UsageError, describe_os_error

DEFAULT_METHODS = "dsift,colour-patch"
DEFAULT_DATASET = "synthetic"


def default_out_dir(dataset: str, split: str | None) -> Path:
    """``corrbench-results/<dataset>-<split>-<time>``, the split as the dataset resolves it (its default)."""
    from .plugins import get_host

    if split is None:
        try:
            split = get_host().datasets.entry(dataset).load().default_split
        except CorrbenchError:
            split = "default"  # an unknown dataset: run_benchmark reports it with the list of known ones
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("corrbench-results") / f"{dataset}-{split}-{stamp}"


def _echo_table(table) -> None:
    from .results import render

    if table is not None and not table.empty:
        click.echo(render(table, "md"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.version_option(package_name="corrbench")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Benchmark dense image descriptors on semantic keypoint correspondence."""
    ctx.ensure_object(dict)["debug"] = debug


@cli.command()
@click.option("--methods", "-m", default=DEFAULT_METHODS, show_default=True, help="Comma-separated method names.")
@click.option("--dataset", "-d", default=DEFAULT_DATASET, show_default=True)
@click.option("--split", default=None, help="Dataset split (default: the dataset's test split).")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Dataset folder (else $CORRBENCH_DATA/<dataset>, else the user cache).")
@click.option("--limit", type=int, default=None, help="Use only the first N pairs (smoke runs).")
@click.option("--sample", type=int, default=None, metavar="N",
              help="Evaluate a seeded sample of N pairs, stratified by category (see --seed).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample.")
@click.option("--alpha", "alphas", default=None, metavar="A,B,...",
              help="PCK thresholds as fractions of the reference length (default: the protocol's; 0.1 always).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Images per descriptor call.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder (default corrbench-results/<dataset>-<split>-<time>, split as resolved).")
@click.option("--set", "overrides", multiple=True, metavar="NAME.KEY=VALUE",
              help="Override a config value of a method, the dataset or a shared namespace (repeatable).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Feature cache (default $CORRBENCH_CACHE or the user cache).")
@click.option("--no-cache", is_flag=True, help="Do not read or keep cached features.")
@click.option("--skip-invalid", is_flag=True, help="Skip (and count) malformed pairs instead of stopping.")
@click.option("--compare", type=click.Choice(["le", "lt"]), default=None,
              help="A keypoint is correct when dist ≤ αL (le) or dist < αL (lt) (default: the protocol's).")
@click.option("--readout", default=None, metavar="NAME",
              help="Read every method out with this registered readout (default: the protocol's, else each "
                   "method's own; `corrbench list readouts`). Its settings: --set readout.KEY=VALUE.")
@click.option("--protocol", default=None, metavar="NAME",
              help="A published evaluation protocol: every knob at once (default dhf; `corrbench list protocols`).")
@click.option("--flip/--no-flip", default=None,
              help="Average each method's features with those of the mirrored image (default: the protocol's).")
@click.option("--resamples", type=int, default=1000, show_default=True,
              help="Bootstrap resamples behind the 95 % confidence intervals.")
@click.option("--report/--no-report", "html_report", default=True, show_default=True, envvar="CORRBENCH_REPORT",
              show_envvar=True, help="Write the run's HTML report, RUN/report.html (docs/reports.md).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or status lines; only the table and errors.")
def run(methods, dataset, split, data_root, limit, sample, seed, alphas, device, batch_size, out_dir, overrides,
        cache_dir, no_cache, skip_invalid, compare, readout, protocol, flip, resamples, html_report, quiet) -> None:
    """Evaluate METHODS on a dataset and write a results folder."""
    from .runner import run_benchmark

    if out_dir is None:
        out_dir = default_out_dir(dataset, split)
    result = run_benchmark(methods, dataset, split=split, data_root=data_root, overrides=list(overrides),
                           limit=limit, device=device, batch_size=batch_size, out_dir=out_dir, cache_dir=cache_dir,
                           no_cache=no_cache, skip_invalid=skip_invalid, compare=compare, alphas=alphas,
                           sample=sample, seed=seed, readout=readout, protocol=protocol, flip=flip,
                           resamples=resamples, progress=not quiet,
                           echo=None if quiet else (lambda s: click.echo(s, err=True)))
    if not result.results:  # a non-zero rank of a distributed run: rank 0 reports
        return
    ds = result.results["dataset"]
    proto = result.results["protocol"]
    average = {"point": "pooled per keypoint", "image": "mean per image",
               "category": "mean over categories"}[proto["headline"]["average"]]
    changed = f" + {', '.join(proto['overrides'])} changed" if proto.get("overrides") else ""
    click.echo(f"\n{ds['name']} / {ds['split']}: {ds['n_pairs']} pairs, "
               f"{next(iter(result.results['methods'].values()))['n_keypoints']} keypoints"
               + (f", {len(ds['skipped'])} skipped" if ds["skipped"] else "")
               + f"  (protocol {proto['name']}{changed}: PCK@0.1 in %, {average}; 95 % bootstrap CI)")
    _echo_table(result.table)
    click.echo(f"results: {result.out_dir}")
    html_file = Path(result.out_dir) / "report.html"
    if html_report:
        _write_run_report(Path(result.out_dir), html_file, progress=not quiet)
        click.echo(f"report: {html_file}")
    elif not quiet:
        click.echo(f"report: corrbench report {result.out_dir} --html {html_file}", err=True)


def _write_run_report(run_dir: Path, html_file: Path, progress: bool) -> None:
    """The run's own report, after its results are safely on disk: a failure here says that they are."""
    from .report import write_report

    try:
        write_report([run_dir], html_file, progress=progress)
    except CorrbenchError as exc:  # write_report turns a refused write into one, naming the file
        raise CorrbenchError(f"the results are complete in {run_dir}, but its report was not written: {exc} "
                             f"(retry with `corrbench report {run_dir} --html {html_file}`)") from exc


@cli.command("list")
@click.argument("kind", type=click.Choice(["methods", "datasets", "readouts", "protocols", "all"]), default="all")
@click.argument("pattern", required=False)
@click.option("--options", "show_options", is_flag=True,
              help="Also list each one's config keys (--set NAME.KEY=VALUE): type, default, doc, choices or range.")
def list_(kind: str, pattern: str | None, show_options: bool) -> None:
    """List registered methods, datasets and readouts (PATTERN: shell wildcard, e.g. 'sd-*')."""
    from .plugins import get_host

    host = get_host()
    for title, registry in (("methods", host.methods), ("datasets", host.datasets), ("readouts", host.readouts),
                            ("protocols", host.protocols)):
        if kind not in (title, "all"):
            continue
        entries, notes = registry.listing(pattern)  # families: one row, or their matching members
        click.echo(f"{title}:")
        width = max((len(e.name) for e in entries), default=0)
        for e in entries:
            alias = f" (aliases: {', '.join(e.aliases)})" if e.aliases else ""
            click.echo(f"  {e.name.ljust(width)}  {e.description}{alias}  [{e.plugin}]")
            if show_options:
                for line in _options_lines(e, indent="      "):
                    click.echo(line)
        for note in notes:
            click.echo(f"  {note}")
        if not entries:
            click.echo("  (none)")


def _options_lines(entry, indent: str) -> list[str]:
    """A registered class's config keys (``key  type  default  doc  [constraints]``) and namespaces."""
    from .options import options_of

    try:
        cls = entry.load()
    except Exception as exc:  # a plugin whose backend is not installed still lists the others
        return [f"{indent}(options unavailable: {exc})"]
    options = options_of(cls)
    if not options:
        return [f"{indent}(no options)"]
    rows = [(key, opt.type, opt.default_text(), opt.doc, opt.constraint()) for key, opt in options.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for key, type_, default, doc, constraint in rows:
        text = f"{indent}{key.ljust(widths[0])}  {type_.ljust(widths[1])}  {default.ljust(widths[2])}  {doc}"
        lines.append((text + (f"  [{constraint}]" if constraint else "")).rstrip())
    for ns, keys in (getattr(cls, "config_namespaces", None) or {}).items():
        lines.append(f"{indent}namespace {ns}: --set {ns}.KEY reaches {', '.join(keys)}")
    return lines


@cli.command()
@click.argument("name")
def info(name: str) -> None:
    """Describe one method, dataset, readout or protocol: description, plugin, aliases, settings."""
    from .plugins import get_host

    host = get_host()
    registries = (("method", host.methods), ("dataset", host.datasets), ("readout", host.readouts),
                  ("protocol", host.protocols))
    found = [(kind, registry.entry(name)) for kind, registry in registries if name in registry]
    if not found:
        known = sorted({n for _, registry in registries for n in registry.names()})
        raise UsageError(f"unknown method, dataset, readout or protocol {name!r}; "
                         f"known: {', '.join(known) or '(none registered)'}")
    for n, (kind, entry) in enumerate(found):
        if n:
            click.echo("")
        click.echo(f"{entry.name}: {kind} from plugin {entry.plugin}")
        if entry.description:
            click.echo(f"  {entry.description}")
        if entry.aliases:
            click.echo(f"  aliases: {', '.join(entry.aliases)}")
        if kind == "dataset":
            try:
                cls = entry.load()
                click.echo(f"  splits: {', '.join(cls.splits)} (default {cls.default_split})")
            except Exception:  # shown by the options below
                pass
        if kind == "method":
            try:
                readout = entry.load().default_readout
                if isinstance(readout, str):  # a property when it depends on the config
                    click.echo(f"  default readout: {readout}")
            except Exception:  # shown by the options below
                pass
        if kind == "protocol":
            preset = entry.load()
            for key, value in preset.as_dict().items():
                if key not in ("name", "description") and value not in (None, {}, ""):
                    click.echo(f"  {key}: {value}")
            continue
        prefix = "readout" if kind == "readout" else entry.name
        click.echo(f"  options (--set {prefix}.KEY=VALUE):")
        for line in _options_lines(entry, indent="    "):
            click.echo(line)


@cli.command()
@click.option("--hook", default=None, help="Only plugins implementing this hook.")
def plugins(hook: str | None) -> None:
    """Show each plugin, its distribution and version, and what it registers (JSON)."""
    from .plugins import get_host

    host = get_host()
    _ensure_commands(host)
    rows = []
    for info in host.plugins.values():
        if hook:
            impls = getattr(host.pm.hook, hook, None)
            if impls is None:
                from . import hookspecs

                names = sorted(n for n, f in vars(hookspecs).items() if hasattr(f, "corrbench_spec"))
                raise UsageError(f"unknown hook {hook!r}; hooks: {', '.join(names)}")
            if not any(i.plugin_name == info.name for i in impls.get_hookimpls()):
                continue
        rows.append(info.as_dict())
    click.echo(json.dumps(rows, indent=2))


@cli.command()
@click.option("--method", "-m", required=True)
@click.option("--images", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Image files or folders (repeatable; also accepts several paths after one --images).")
@click.argument("more_images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", "out_file", required=True, type=click.Path(path_type=Path), help="Output .safetensors file.")
@click.option("--set", "overrides", multiple=True, metavar="NAME.KEY=VALUE")
@click.option("--raw", is_flag=True, help="Write the method's raw intermediate features instead of the descriptor "
              "(SD methods: S×10560×64×64 per image, about 1.9 GB: use --batch-size 1).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; only errors.")
def extract(method, images, more_images, out_file, overrides, raw, device, batch_size, quiet) -> None:
    """Describe images with a method and write one tensor per image (named by file stem)."""
    from .extract import extract_to_file

    written = extract_to_file(method, [*images, *more_images], out_file, overrides=list(overrides), raw=raw,
                              device=device, batch_size=batch_size, progress=not quiet)
    if written:  # under torchrun only rank 0 writes and reports
        click.echo(f"wrote {len(written)} tensors to {out_file}")


@cli.group()
def cache() -> None:
    """The feature cache: what it holds, and clearing it."""


def _cache_root(cache_dir: Path | None) -> Path:
    from .cache import default_cache_dir

    return Path(cache_dir) if cache_dir else default_cache_dir()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


@cache.command("info")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Feature cache (default $CORRBENCH_CACHE or the user cache).")
def cache_info(cache_dir: Path | None) -> None:
    """One line per cached method configuration: images, predictions, size."""
    from .cache import cache_summary

    root = _cache_root(cache_dir)
    rows = cache_summary(root)
    click.echo(f"cache: {root}")
    for r in rows:
        click.echo(f"  {r['folder']:<32} {r['images']:>7} images {r['predictions']:>8} predictions "
                   f"{_size(r['bytes']):>10}")
    click.echo(f"total: {len(rows)} configurations, {sum(r['images'] for r in rows)} images, "
               f"{_size(sum(r['bytes'] for r in rows))}")


@cache.command("clear")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Feature cache (default $CORRBENCH_CACHE or the user cache).")
@click.option("--method", "-m", default=None, help="Only this method's configurations.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def cache_clear(cache_dir: Path | None, method: str | None, yes: bool) -> None:
    """Delete cached features and predictions (all, or one method's)."""
    from .cache import cache_summary, clear_cache

    root = _cache_root(cache_dir)
    rows = [r for r in cache_summary(root) if method is None or r["method"] == method]
    if not rows:
        click.echo(f"nothing to clear in {root}" + (f" for method {method!r}" if method else ""))
        return
    what = f"{len(rows)} configurations ({_size(sum(r['bytes'] for r in rows))}) in {root}"
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"cache clear would delete {what}; confirm with --yes (no terminal to ask)")
        if not click.confirm(f"delete {what}?", default=False, err=True):
            raise click.exceptions.Exit(1)
    removed = clear_cache(root, method)
    click.echo(f"deleted {len(removed)} configurations from {root}")


from .cli_reproduce import compare, regress, reproduce  # noqa: E402  (core verbs defined in their own module)

cli.add_command(reproduce)
cli.add_command(compare)
cli.add_command(regress)

from .cli_stats import paired  # noqa: E402

cli.add_command(paired)

from .cli_report import leaderboard, plot, report  # noqa: E402  (reading finished runs: report, plot, leaderboard)

cli.add_command(report)
cli.add_command(plot)
cli.add_command(leaderboard)

_commands_added = False


def _ensure_commands(host) -> None:
    global _commands_added
    if not _commands_added:
        _commands_added = True
        host.add_commands(cli)


def build_cli() -> click.Group:
    """The command group with every plugin's commands added."""
    from .plugins import get_host

    _ensure_commands(get_host())
    return cli


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (a broken plugin, a skipped pair) print as one line on stderr."""
    print(f"warning: {message}", file=file or sys.stderr)


def invoke(command: click.Command, argv: list[str] | None = None, prog: str = "corrbench") -> int:
    """Run a click command and return the exit status the shell must see.

    Click runs with ``standalone_mode=False`` so that corrbench's own errors print as one line; in
    that mode click *returns* a command's ``ctx.exit(n)`` status instead of exiting, so it is
    returned here rather than dropped (a failed ``compare`` once exited 0 that way). Statuses:
    0 success, 1 a failed check, a data/weights problem or a full or unwritable disk, 2 a usage error,
    130 interrupted.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if not debug:
        import warnings

        warnings.showwarning = _one_line_warning
    try:
        rc = command.main(args=args, prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:  # click turns Ctrl-C inside a command into Abort
        click.echo("interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except CorrbenchError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except OSError as exc:  # a full disk, a read-only folder: the machine, not a bug; nothing is half-written
        if debug:
            raise
        click.echo(f"error: {describe_os_error(exc)}", err=True)
        return 1
    return rc if isinstance(rc, int) else 0


def main(argv: list[str] | None = None) -> None:
    """The ``corrbench`` console script: every command's status reaches the shell."""
    sys.exit(invoke(build_cli(), argv))
