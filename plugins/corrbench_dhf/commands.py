"""Click commands of the DHF plugin: ``train dhf``, ``plot mixing-weights``, ``generate``.

Heavy imports happen inside the commands, so ``corrbench --help`` stays fast. ``train`` and ``plot``
are groups; when the core (or another plugin) already defines a group of that name, the subcommands
are added to it instead.
"""

from __future__ import annotations

import datetime as _dt
from itertools import islice
from pathlib import Path
from typing import Any

import click

from corrbench.errors import UsageError

MODEL_SHORTCUTS = {"sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd21": "stabilityai/stable-diffusion-2-1-base"}


def _group(cli: click.Group, name: str, help_text: str) -> click.Group:
    existing = cli.commands.get(name) if hasattr(cli, "commands") else None
    if isinstance(existing, click.Group):
        return existing
    if existing is not None:
        raise UsageError(f"cannot add the DHF '{name}' commands: '{name}' is already a plain command")
    group = click.Group(name, help=help_text)
    cli.add_command(group)
    return group


def add_commands(cli: click.Group) -> None:
    _group(cli, "train", "Train the trainable parts of methods.").add_command(train_dhf)
    plot = _group(cli, "plot", "Draw pictures of checkpoints and runs.")
    plot.add_command(plot_mixing_weights)  # `plot matches` is the core's (corrbench.plots)
    if "generate" not in cli.commands:
        cli.add_command(generate_cmd)


# -- train dhf ---------------------------------------------------------------------------------------------
def _split_sets(sets: tuple[str, ...], dataset: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``--set`` for training: ``sd.<key>`` (extractor), ``dhf.<key>`` (network) and ``<dataset>.<key>``."""
    from corrbench.config import parse_overrides

    sd, dhf, ds = {}, {}, {}
    for key, value in parse_overrides(list(sets)).items():
        name, _, sub = key.rpartition(".")
        if name == "sd":
            sd[sub] = value
        elif name == "dhf":
            dhf[sub] = value
        elif name == dataset:
            ds[sub] = value
        else:
            raise UsageError(f"--set {key}: training takes sd.<key>, dhf.<key> or {dataset}.<key>")
    return sd, dhf, ds


def _val_split(ds_cls, requested: str | None) -> str | None:
    if requested is not None:
        return None if requested.lower() in ("none", "") else requested
    for candidate in ("dhf-val-360", "val"):
        if candidate in ds_cls.splits:
            return candidate
    return None


@click.command("dhf")
@click.option("--dataset", "-d", default="spair", show_default=True, help="Training dataset (pairs with keypoints).")
@click.option("--split", default="trn", show_default=True)
@click.option("--data-root", type=click.Path(path_type=Path), default=None)
@click.option("--steps", type=int, default=5000, show_default=True,
              help="Optimiser steps (the paper: 5000 steps of one pair each).")
@click.option("--pairs-per-step", type=int, default=1, show_default=True,
              help="Global batch: pairs whose loss is averaged per step (paper: 1). Under torchrun each of the W "
                   "processes takes N/W of them (W must divide N); gradients are accumulated a pair at a time.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="AdamW learning rate (weight decay 0).")
@click.option("--one-step", is_flag=True, help="Train Ours-One-Step (the clean pass only, 12 mixing weights).")
@click.option("--model", default="sd15", show_default=True, help="sd15, sd21, a hub id or a local diffusers folder.")
@click.option("--load-size", type=int, default=64, show_default=True,
              help="Square load size of training images (paper: 64; the released train.yaml: 512).")
@click.option("--val-split", default=None, help="Validation split (default dhf-val-360 or val when the dataset has "
                                                "one; 'none' to skip).")
@click.option("--val-limit", type=int, default=None, help="Validate on the first N pairs only.")
@click.option("--val-every", type=int, default=1000, show_default=True)
@click.option("--val-load-size", type=int, default=None, help="Load size for validation (default: --load-size).")
@click.option("--ckpt-every", type=int, default=1000, show_default=True)
@click.option("--limit", type=int, default=None, help="Use only the first N training pairs.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder (default corrbench-train/dhf-<time>).")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint_step_*.pt in --out.")
@click.option("--resume-from", type=click.Path(path_type=Path, exists=True), default=None,
              help="Continue from this checkpoint.")
@click.option("--save-indices", default=None,
              help="Saved inversion step indices, clean first (default: the paper's 49,45,...,5,0; needs "
                   "sd.num_steps above the largest).")
@click.option("--slot", default=None,
              help="Train on one (timestep slot, layer) map only, for dhf-pruned.mode=retrain: 'S,L' (0-based, "
                   "in the --save-indices order) or 'argmax' of the --slot-weights network's mixing weights.")
@click.option("--slot-weights", default="auto", show_default=True,
              help="The dhf network whose mixing-weight argmax --slot argmax takes (auto, PATH or hf://...).")
@click.option("--seed", type=int, default=0, show_default=True, help="Network initialisation and data order.")
@click.option("--projection-dim", type=int, default=384, show_default=True)
@click.option("--norm-groups", type=int, default=32, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--skip-invalid", is_flag=True)
@click.option("--wandb", "wandb_project", default=None, help="Also log to this Weights & Biases project (optional).")
@click.option("--set", "sets", multiple=True, metavar="NAME.KEY=VALUE",
              help="sd.<key> (model, dtype, latent, seed, num_steps, image_size, output_resolution, weights) or "
                   "<dataset>.<key>.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_dhf(device: str, **opts: Any) -> None:
    """Train the Diffusion Hyperfeatures aggregation network (docs/methods.md#training-dhf).

    Under torchrun (or any launcher that sets WORLD_SIZE/RANK/MASTER_ADDR/MASTER_PORT) the processes
    train one network with DistributedDataParallel (NCCL on CUDA, gloo on CPU); rank 0 writes the files.
    """
    from corrbench.distributed import init_from_env

    for name in ("steps", "val_every", "ckpt_every", "load_size", "pairs_per_step"):
        if opts[name] < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {opts[name]}")
    # join the launcher's process group first: the extractor must be built on this rank's device
    from corrbench.devices import resolve_device

    ctx, device = init_from_env(resolve_device(device))
    try:
        if opts["out_dir"] is None:  # rank 0's clock names the folder for every rank
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            opts["out_dir"] = ctx.all_gather(Path("corrbench-train") / f"dhf-{stamp}")[0]
        _train_dhf(ctx, device, **opts)
    finally:
        ctx.close()


def _train_dhf(ctx, device, dataset, split, data_root, steps, pairs_per_step, lr, one_step, model, load_size,
               val_split, val_limit, val_every, val_load_size, ckpt_every, limit, out_dir, resume, resume_from,
               save_indices, slot, slot_weights, seed, projection_dim, norm_groups, skip_invalid, wandb_project,
               sets, quiet) -> None:
    from corrbench.plugins import get_host
    from corrbench_sd.methods import SD_SHARED_DEFAULTS, SD_SHARED_OPTIONS, make_extractor

    from .slots import LAYERS, PAPER_SAVE_INDICES
    from .train import SDFeatureSource, TrainSettings, train

    error = None
    try:  # every rank learns of a failed setup, so none waits for the others in train()
        if pairs_per_step % ctx.world_size:
            raise UsageError(f"--pairs-per-step {pairs_per_step} is not a multiple of the {ctx.world_size} processes; "
                             f"each process takes an equal share of every step's pairs")
        host = get_host()
        ds_entry = host.datasets.entry(dataset)
        ds_cls = ds_entry.load()
        sd_sets, dhf_sets, ds_cfg = _split_sets(sets, ds_entry.name)
        if dhf_sets:
            raise UsageError(f"--set dhf.{next(iter(dhf_sets))}: use the train options (--projection-dim, --seed, ...)")
        unknown = set(sd_sets) - set(SD_SHARED_DEFAULTS)
        if unknown:
            raise UsageError(f"--set sd.{sorted(unknown)[0]}: valid sd keys: {', '.join(sorted(SD_SHARED_DEFAULTS))}")
        sd_sets = {k: SD_SHARED_OPTIONS[k].coerce(f"--set sd.{k}", v) for k, v in sd_sets.items()}
        sd_cfg = {**SD_SHARED_DEFAULTS, **sd_sets}
        sd_cfg["model"] = MODEL_SHORTCUTS.get(model, model) if "model" not in sd_sets else sd_sets["model"]
        extractor = make_extractor(sd_cfg, device)
        num_steps = extractor.num_steps
        if one_step:
            if save_indices:
                raise UsageError("--save-indices does not apply to --one-step (the single clean pass)")
            indices = (num_steps - 1,)
        elif save_indices:
            try:
                indices = tuple(int(k) for k in str(save_indices).replace(" ", "").strip("[]").split(","))
            except ValueError:
                raise UsageError(f"--save-indices {save_indices!r}: expected integers such as 49,45,40") from None
        else:
            indices = PAPER_SAVE_INDICES
        extractor.schedule.check_indices(indices)
        layers, pruned = LAYERS, None
        if slot is not None:
            if one_step:
                raise UsageError("--slot trains one map of the multi-step network; it does not combine with --one-step")
            pruned = _choose_training_slot(slot, slot_weights, indices, num_steps)
            indices, layers = (pruned.save_index,), (LAYERS[pruned.layer],)
        source = SDFeatureSource(extractor, indices, layers, one_step=one_step)

        ds = ds_cls(root=data_root, split=split, config=ds_cfg, skip_invalid=skip_invalid)
        pairs = list(islice(ds.pairs(), limit))
        val_name = _val_split(ds_cls, val_split)
        val_pairs = []
        if val_name is not None:
            vds = ds_cls(root=data_root, split=val_name, config=ds_cfg, skip_invalid=skip_invalid)
            val_pairs = list(islice(vds.pairs(), val_limit))
        settings = TrainSettings(steps=steps, lr=lr, load_size=load_size, seed=seed, ckpt_every=ckpt_every,
                                 val_every=val_every, val_load_size=val_load_size, projection_dim=projection_dim,
                                 num_norm_groups=norm_groups, device=device, pairs_per_step=pairs_per_step,
                                 extra={"dataset": ds_entry.name, "split": ds.split, "val_split": val_name,
                                        "n_train_pairs": len(pairs), "n_val_pairs": len(val_pairs),
                                        **({"pruned_slot": pruned.as_dict()} if pruned is not None else {})})
        run = None
        if wandb_project and ctx.is_main:
            try:
                import wandb
            except ImportError as exc:
                raise UsageError("--wandb needs the wandb package (pip install wandb); "
                                 "the JSONL log works without it") from exc
            run = wandb.init(project=wandb_project, config=settings.__dict__)
    except Exception as exc:  # noqa: BLE001 - agree() re-raises it here and reports it on the others
        error = exc
    ctx.agree(error)
    result = train(source, pairs, out_dir, settings, val_pairs=val_pairs,
                   resume=resume_from if resume_from else bool(resume), progress=not quiet, wandb_run=run, ctx=ctx)
    if run is not None:
        run.finish()
    if not ctx.is_main:  # rank 0 reports for the run
        return
    per = f" × {pairs_per_step} pairs" if pairs_per_step > 1 else ""
    procs = f" in {ctx.world_size} processes" if ctx.active else ""
    click.echo(f"trained {result['steps']} steps{per}{procs} on {len(pairs)} {ds_entry.name}/{ds.split} pairs; "
               f"final loss {result['final_loss']:.4f}")
    if result["validation"]:
        last = result["validation"][-1]
        scores = ", ".join(f"{k} {v:.2f}" for k, v in last.items() if k.startswith("pck"))
        click.echo(f"validation ({val_name}, {last['n_pairs']} pairs) at step {last['step']}: {scores}; "
                   f"best at step {result['best']['step']}")
    click.echo(f"checkpoint: {result['checkpoint']} (use it with --set dhf.weights={result['checkpoint']})")
    click.echo(f"metrics log: {Path(result['out_dir']) / 'metrics.jsonl'}")


def _choose_training_slot(slot: str, slot_weights: str, indices, num_steps: int):
    """The (timestep, layer) slot a --slot run trains on, named in the paper's slot numbering."""
    import torch

    from . import weights as dhf_weights
    from .checkpoint import load_checkpoint
    from .methods import parse_slot
    from .slots import LAYERS, slot_info

    index = parse_slot(slot, len(indices), len(LAYERS), "--slot")
    weight = None
    if index is None:
        path = dhf_weights.resolve(slot_weights, dhf_weights.RELEASED_FILES["dhf"])
        if path is None:
            raise UsageError("--slot argmax needs trained weights (--slot-weights auto or PATH), not random")
        ckpt = load_checkpoint(path)
        stored = ckpt.config.get("save_timestep")
        if len(ckpt.layer_channels) != len(LAYERS) or (isinstance(stored, list) and
                                                       [int(k) for k in stored] != list(indices)):
            raise UsageError(f"{path}: its slots (save_timestep {stored}, {len(ckpt.layer_channels)} layers) do not "
                             f"match --save-indices {list(indices)} × {len(LAYERS)} layers")
        weights = torch.softmax(ckpt.state_dict["mixing_weights"].float(), dim=0)
        index = int(torch.argmax(weights))
        weight = float(weights[index])
    return slot_info(index, save_indices=indices, layers=LAYERS, num_steps=num_steps, weight=weight)


# -- plot ----------------------------------------------------------------------------------------------------
@click.command("mixing-weights")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "out_file", type=click.Path(path_type=Path), required=True, help="Output image (.png, .pdf, .svg).")
@click.option("--title", default=None)
def plot_mixing_weights(checkpoint: Path, out_file: Path, title: str | None) -> None:
    """Heat map of a checkpoint's softmax mixing weights, timesteps × layers (the paper's figure)."""
    from .plots import plot_mixing_weights as draw

    info = draw(checkpoint, out_file, title)
    r, c = info["argmax"]
    click.echo(f"wrote {info['file']}: largest weight {info['matrix'][r, c]:.4f} at {info['rows'][r]}, "
               f"layer {c + 1}")


# -- generate ------------------------------------------------------------------------------------------------
@click.command("generate")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), required=True,
              help=".txt (one prompt a line) or .json (strings or {prompt, source_points}).")
@click.option("--method", "-m", default="dhf", show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--seed", type=int, default=829304518, show_default=True, help="Seed of the first prompt (+1 each).")
@click.option("--guidance", type=float, default=7.5, show_default=True)
@click.option("--negative-prompt", default=None, help="Default: corrbench's short list (see the README).")
@click.option("--top-k", type=int, default=20, show_default=True, help="Mutual nearest neighbours drawn when a "
                                                                      "prompt has no source points.")
@click.option("--set", "sets", multiple=True, metavar="NAME.KEY=VALUE")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def generate_cmd(prompts_file, method, out_dir, seed, guidance, negative_prompt, top_k, sets, device, quiet) -> None:
    """Generate image pairs and match them with hyperfeatures (DHF's synthetic transfer)."""
    from corrbench.devices import resolve_device

    from .generate import DEFAULT_NEGATIVE_PROMPT, generate

    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    summary = generate(prompts_file, out_dir, method=method, seed=seed, guidance=guidance,
                       negative_prompt=DEFAULT_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt,
                       overrides=list(sets), device=resolve_device(device), top_k=top_k, progress=not quiet)
    click.echo(f"wrote {len(summary['prompts'])} image pairs with descriptors and matches to {out_dir}")
