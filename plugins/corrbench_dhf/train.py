"""Training the aggregation network (docs/methods.md#training-dhf), resumable and testable with fake features.

One step = one image pair by default: both images go through the feature source (the SD inversion in
real use), whose captured maps stream into the network with autograd on; the loss is the CLIP-style
symmetric cross-entropy over the output grid (cosine logits × 1/0.07); AdamW with the mixing weights
and the bottlenecks as two groups. ``pairs_per_step`` N > 1 averages the loss over N pairs (gradients
accumulated a pair at a time); under torchrun each of W processes takes N/W of them and
DistributedDataParallel averages the gradients. Checkpoints (official format) every ``ckpt_every``
steps and at the end hold everything needed to resume exactly: network, optimiser, step, every rank's
RNG state, and the data order (a pure function of ``seed``, N and the step, so the position is the step).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from corrbench.api import Pair, Preprocess
from corrbench.distributed import DistContext, init_from_env
from corrbench.errors import DataError, UsageError
from corrbench.metrics import metric_key

from . import checkpoint as ck
from .network import AggregationNetwork, StreamingAggregator, cosine_logits

Consume = Callable[[int, int, torch.Tensor], None]


class FeatureSource(Protocol):
    """What training needs from a feature extractor (the SD inversion, or a fake in tests)."""

    layer_channels: list[int]
    num_timesteps: int
    output_resolution: int

    def run(self, images: torch.Tensor, consume: Consume) -> None:
        """Call ``consume(timestep_slot, layer, feat B×C×R×R)`` for every map of ``images`` (B×3×H×W in [0, 1])."""

    def describe(self) -> dict[str, Any]:
        """Facts recorded in the checkpoint's config (model id, save indices...)."""


# -- the objective ------------------------------------------------------------------------------------
def points_to_cells(points_xy: np.ndarray, size_wh: tuple[int, int], resolution: int) -> torch.Tensor:
    """Flat indices on the R×R grid of original-pixel (x, y) points.

    As the official code: scale by R/W and R/H (no half-pixel offset), clip to [0, R−1], round.
    """
    W, H = size_wh
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    x = np.round(np.clip(pts[:, 0] * resolution / W, 0, resolution - 1))
    y = np.round(np.clip(pts[:, 1] * resolution / H, 0, resolution - 1))
    return torch.from_numpy((y * resolution + x).astype(np.int64))


def clip_loss(source_map: torch.Tensor, target_map: torch.Tensor, source_cells: torch.Tensor,
              target_cells: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Symmetric cross-entropy: each source keypoint classifies its target cell among all cells, and back."""
    src = source_map.flatten(1).T  # (R·R) × C
    tgt = target_map.flatten(1).T
    source_cells = source_cells.to(src.device)
    target_cells = target_cells.to(src.device)
    forward = F.cross_entropy(cosine_logits(src[source_cells], tgt, logit_scale), target_cells)
    backward = F.cross_entropy(cosine_logits(tgt[target_cells], src, logit_scale), source_cells)
    return (forward + backward) / 2


# -- data ----------------------------------------------------------------------------------------------
def load_pair_images(pair: Pair, load_size: int) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """The pair as a 2×3×S×S batch (square PIL-bilinear resize) plus each image's original (W, H)."""
    from corrbench.images import load_rgb, to_input

    prep = Preprocess(load_size=load_size, resize="square", resample="bilinear")
    arrays, sizes = [], []
    for path in (pair.source, pair.target):
        img = load_rgb(path)
        sizes.append(img.size)
        arrays.append(to_input(img, prep))
    return torch.from_numpy(np.stack(arrays)).contiguous(), sizes[0], sizes[1]


@lru_cache(maxsize=2)
def _epoch_permutation(n_pairs: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.RandomState(seed + epoch).permutation(n_pairs)


def data_order(n_pairs: int, step: int, seed: int) -> int:
    """Index of the pair used at ``step``: epoch e walks ``RandomState(seed + e).permutation(n)``.

    Epoch 0 with seed 0 is the official order (``np.random.seed(0)`` then a permutation).
    """
    epoch, pos = divmod(step, n_pairs)
    return int(_epoch_permutation(n_pairs, seed, epoch)[pos])


def step_pairs(n_pairs: int, step: int, pairs_per_step: int, seed: int) -> list[int]:
    """The pair indices of optimiser step ``step`` (0-based): positions ``step·N … step·N+N−1`` of the order.

    With N = 1 this is :func:`data_order` at ``step`` (the paper's one pair per step). Under W processes,
    rank r takes entries ``r, r+W, ...`` of this list.
    """
    return [data_order(n_pairs, step * pairs_per_step + j, seed) for j in range(pairs_per_step)]


# -- validation ------------------------------------------------------------------------------------------
def describe_images(network: AggregationNetwork, source: FeatureSource, images: torch.Tensor) -> torch.Tensor:
    """Hyperfeature maps of a batch without autograd (validation, extraction)."""
    with torch.inference_mode():
        agg = StreamingAggregator(network)
        source.run(images, agg)
        return agg.result()


def validation_hits(network: AggregationNetwork, source: FeatureSource, pairs: Sequence[Pair], load_size: int,
                    device: str, alpha: float = 0.1) -> list[dict[str, np.ndarray | None]]:
    """Per pair, which keypoints are correct at α (``img`` and ``bbox`` normalisation; ``bbox`` None without a box)."""
    from corrbench.api import FeatureGrid
    from corrbench.images import to_load, to_original
    from corrbench.metrics import correct
    from corrbench.readout import nn_transfer

    was_training = network.training
    network.eval()
    out = []
    try:
        for pair in pairs:
            images, s_size, t_size = load_pair_images(pair, load_size)
            maps = describe_images(network, source, images.to(device))
            hw = (load_size, load_size)
            grid = FeatureGrid.spanning(hw, tuple(maps.shape[-2:]))
            src = torch.from_numpy(to_load(pair.source_points, s_size, hw))
            pred = to_original(nn_transfer(maps[0], maps[1], grid, grid, hw, hw, src).cpu().numpy(), t_size, hw)
            dist = np.linalg.norm(pred - pair.target_points, axis=1)
            row: dict[str, np.ndarray | None] = {
                "img": correct(dist, np.full(len(dist), alpha * float(max(t_size)))), "bbox": None}
            if pair.target_box is not None:
                l, t, r, b = pair.target_box
                row["bbox"] = correct(dist, np.full(len(dist), alpha * max(r - l, b - t)))
            out.append(row)
    finally:
        network.train(was_training)
    return out


def summarize_hits(rows: Sequence[dict[str, np.ndarray | None]], alpha: float = 0.1) -> dict[str, float]:
    """PCK pooled over keypoints from :func:`validation_hits` rows (in pair order)."""
    out = {}
    for norm in ("bbox", "img"):
        parts = [r[norm] for r in rows if r[norm] is not None]
        if parts:
            out[metric_key(alpha, norm)] = 100.0 * float(np.concatenate(parts).mean())
    out["n_pairs"] = len(rows)
    out["n_keypoints"] = int(sum(len(r["img"]) for r in rows))
    return out


def validate(network: AggregationNetwork, source: FeatureSource, pairs: Sequence[Pair], load_size: int,
             device: str, alpha: float = 0.1) -> dict[str, float]:
    """PCK@α (bbox and img, pooled over keypoints, original target frame) with the paper's NN readout."""
    return summarize_hits(validation_hits(network, source, pairs, load_size, device, alpha), alpha)


def validate_sharded(ctx: DistContext, network: AggregationNetwork, source: FeatureSource, pairs: Sequence[Pair],
                     load_size: int, device: str, alpha: float = 0.1) -> dict[str, float]:
    """:func:`validate` with each rank scoring pairs ``rank, rank+W, ...``; every rank gets the same numbers.

    Sharded rather than rank-0-only so the other ranks never idle at a collective for a whole validation
    (NCCL's default timeout is shorter than a 360-pair SD validation). Rows are put back in pair order.
    """
    rows, error = None, None
    try:
        rows = validation_hits(network, source, ctx.shard(pairs), load_size, device, alpha)
    except Exception as exc:  # noqa: BLE001 - re-raised on every rank by agree()
        error = exc
    ctx.agree(error)
    return summarize_hits(_interleave(ctx.all_gather(rows)), alpha)


# -- the loop --------------------------------------------------------------------------------------------
@dataclass
class TrainSettings:
    """Everything that defines a training run (recorded in every checkpoint's config)."""

    steps: int = 5000
    lr: float = 1e-3
    weight_decay: float = 0.0
    load_size: int = 64
    seed: int = 0
    ckpt_every: int = 1000
    val_every: int = 1000
    val_load_size: int | None = None  # default: load_size
    projection_dim: int = 384
    num_norm_groups: int = 32
    device: str = "cpu"
    pairs_per_step: int = 1  # global batch: the loss is averaged over this many pairs per update (paper: 1)
    extra: dict[str, Any] = field(default_factory=dict)  # dataset, split, source facts... for the record


_CKPT_NAME = re.compile(r"^checkpoint_step_(\d+)\.pt$")


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in Path(out_dir).glob("checkpoint_step_*.pt")
             if (m := _CKPT_NAME.match(p.name))]
    return max(found)[1] if found else None


class MetricsLog:
    """Append-only JSONL of training metrics; on resume, lines after the checkpoint's step are dropped."""

    def __init__(self, path: Path, resume_step: int | None, wandb_run: Any = None):
        self.path = path
        self.wandb = wandb_run
        if resume_step is None:
            path.write_text("")
        else:
            kept = []
            if path.exists():
                for line in path.read_text().splitlines():
                    try:
                        if json.loads(line).get("step", 0) <= resume_step:
                            kept.append(line)
                    except json.JSONDecodeError:  # a line cut by the interruption
                        continue
            path.write_text("".join(k + "\n" for k in kept))

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])


def build_optimizer(network: AggregationNetwork, settings: TrainSettings) -> torch.optim.Optimizer:
    # two groups as the official code (mixing weights; bottlenecks), same lr, weight decay 0
    bottleneck = [p for n, p in network.named_parameters() if n != "mixing_weights"]
    return torch.optim.AdamW(
        [{"params": [network.mixing_weights], "lr": settings.lr},
         {"params": bottleneck, "lr": settings.lr}],
        lr=settings.lr, weight_decay=settings.weight_decay)


def official_config(settings: TrainSettings, source: FeatureSource) -> dict[str, Any]:
    """The checkpoint's ``config``: the official key names where one exists, then corrbench's extras."""
    facts = source.describe()
    return {
        **facts,
        "load_resolution": settings.load_size,
        "output_resolution": source.output_resolution,
        "projection_dim": settings.projection_dim,
        "num_norm_groups": settings.num_norm_groups,
        "lr": settings.lr,
        "weight_decay": settings.weight_decay,
        "batch_size": 2,
        "max_steps_per_epoch": settings.steps,
        "max_epochs": 1,
        "val_every_n_steps": settings.val_every,
        "save_every_n_steps": settings.ckpt_every,
        "seed": settings.seed,
        "pairs_per_step": settings.pairs_per_step,
        **settings.extra,
    }


class PairForward(torch.nn.Module):
    """One pair through the feature source into the network, as a module call.

    The network is fed map by map from inside the extractor's callback, so this forward is what
    DistributedDataParallel wraps: its reducer hooks every parameter the call touches, and ``no_sync``
    (read at forward time) keeps the gradients local for all but a rank's last pair of a step.
    """

    def __init__(self, network: AggregationNetwork):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor, source: FeatureSource) -> torch.Tensor:
        agg = StreamingAggregator(self.network, track_grad=True)
        source.run(images, agg)
        return agg.result()


def pair_loss(model: torch.nn.Module, network: AggregationNetwork, source: FeatureSource, pair: Pair,
              load_size: int, device: str) -> torch.Tensor:
    """The CLIP loss of one pair (``model`` is :class:`PairForward` or its DDP wrapper)."""
    images, s_size, t_size = load_pair_images(pair, load_size)
    maps = model(images.to(device), source)
    R = maps.shape[-1]
    return clip_loss(maps[0], maps[1], points_to_cells(pair.source_points, s_size, R),
                     points_to_cells(pair.target_points, t_size, R), float(network.logit_scale.exp()))


def _interleave(shares: Sequence[Sequence[Any]]) -> list[Any]:
    """Undo round-robin dealing: rank r's i-th item is item ``r + i·W`` of the whole."""
    out: list[Any] = [None] * sum(len(s) for s in shares)
    for rank, share in enumerate(shares):
        out[rank::len(shares)] = list(share)
    return out


def _on_main(ctx: DistContext, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only (file writes); every rank learns whether it failed."""
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - agree() re-raises it here and reports it on the others
            error = exc
    ctx.agree(error)
    return result


def train(source: FeatureSource, pairs: Sequence[Pair], out_dir: str | os.PathLike, settings: TrainSettings, *,
          val_pairs: Sequence[Pair] = (), resume: bool | str | os.PathLike = False, progress: bool = True,
          wandb_run: Any = None, stop_after: int | None = None, ctx: DistContext | None = None) -> dict[str, Any]:
    """Train and return a summary (final loss, validation history, checkpoint paths).

    ``resume``: ``True`` continues from the newest ``checkpoint_step_*.pt`` in ``out_dir`` (a fresh start
    when there is none), a path continues from that file. ``stop_after`` ends the loop early after that
    many steps of this call (an interruption, for tests), without the final checkpoint.

    Several processes: pass the ``ctx`` of :func:`corrbench.distributed.init_from_env` (called before the
    source is built, so it sits on this rank's device); without one, the group a launcher describes in
    the environment is joined here and ``settings.device`` becomes this rank's device. Each rank takes
    ``pairs_per_step / W`` of every step's pairs and DistributedDataParallel averages the gradients, so an
    update equals the one-process update at the same ``pairs_per_step`` up to float summation order.
    Rank 0 alone writes files and prints; validation is sharded across ranks and gathered.
    """
    own_ctx = ctx is None
    device = settings.device
    if ctx is None:
        ctx, device = init_from_env(device)
    try:
        return _train(source, pairs, Path(out_dir), settings, device, ctx, val_pairs=val_pairs, resume=resume,
                      progress=progress and ctx.is_main, wandb_run=wandb_run if ctx.is_main else None,
                      stop_after=stop_after)
    finally:
        if own_ctx:
            ctx.close()


def _train(source: FeatureSource, pairs: Sequence[Pair], out: Path, settings: TrainSettings, device: str,
           ctx: DistContext, *, val_pairs: Sequence[Pair], resume: bool | str | os.PathLike, progress: bool,
           wandb_run: Any, stop_after: int | None) -> dict[str, Any]:
    from tqdm.auto import tqdm

    if not pairs:
        raise DataError("no training pairs")
    if settings.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {settings.steps}")
    N, W = settings.pairs_per_step, ctx.world_size
    if N < 1:
        raise UsageError(f"--pairs-per-step must be at least 1, got {N}")
    if N % W:
        raise UsageError(f"--pairs-per-step {N} is not a multiple of the {W} processes; each process takes an "
                         f"equal share of every step's pairs (use e.g. --pairs-per-step {W * max(1, round(N / W))})")
    local_n = N // W
    main = ctx.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    config = {**official_config(settings, source), "processes": W}

    resume_from: Path | None = None
    if resume:
        resume_from = latest_checkpoint(out) if resume is True else Path(resume)
        resume_from = ctx.all_gather(resume_from)[0]  # every rank continues from rank 0's choice
    torch.manual_seed(settings.seed)  # network initialisation (the same on every rank)
    network = AggregationNetwork(source.layer_channels, source.num_timesteps, projection_dim=settings.projection_dim,
                                 num_norm_groups=settings.num_norm_groups)
    optimizer = build_optimizer(network, settings)
    step = 0
    best = {"value": -math.inf, "step": None}
    on_cuda = torch.cuda.is_available() and device.startswith("cuda")
    error = None
    try:  # a rank that cannot read the checkpoint must not leave the others waiting in DDP's setup
        if resume_from is not None:
            state = ck.load_checkpoint(resume_from)
            ck.load_state_dict(network, state.state_dict, str(resume_from))
            if not state.optimizer_state:
                raise UsageError(f"{resume_from} has no optimizer state; cannot resume from it")
            network.to(device)
            optimizer.load_state_dict(state.optimizer_state)
            step = int(state.step or 0)
            extra = state.extra
            by_rank = extra.get("rng_cpu_by_rank")
            if by_rank is not None and len(by_rank) == W:
                torch.set_rng_state(by_rank[ctx.rank])
            elif "rng_cpu" in extra:
                torch.set_rng_state(extra["rng_cpu"])
            cuda_by_rank = extra.get("rng_cuda_by_rank")
            if on_cuda and cuda_by_rank is not None and len(cuda_by_rank) == W:
                torch.cuda.set_rng_state(cuda_by_rank[ctx.rank], device)
            elif on_cuda and "rng_cuda" in extra and not ctx.active:
                torch.cuda.set_rng_state_all(extra["rng_cuda"])
            best = {"value": float(extra.get("best_value", -math.inf)), "step": extra.get("best_step")}
            # the data order depends on these; a longer --steps is fine. Older checkpoints used one pair per step.
            for key, default in (("seed", None), ("pairs_per_step", 1)):
                stored = extra.get(key, default)
                if stored is not None and stored != getattr(settings, key):
                    raise UsageError(f"{resume_from} was trained with {key}={stored}, this run asks for "
                                     f"{getattr(settings, key)}; resume with the same settings")
    except Exception as exc:  # noqa: BLE001 - agree() re-raises it here and reports it on the others
        error = exc
    ctx.agree(error)
    network.to(device).train()
    model: torch.nn.Module = PairForward(network)
    if ctx.active:
        from torch.nn.parallel import DistributedDataParallel

        # the network has no buffers (the temperature is a plain tensor), so DDP's forward does no collective;
        # every parameter is used every pair, so find_unused_parameters stays off
        model = DistributedDataParallel(model, device_ids=[torch.device(device).index] if on_cuda else None)
    log = MetricsLog(out / "metrics.jsonl", step if resume_from is not None else None, wandb_run) if main else None
    val_load = settings.val_load_size or settings.load_size

    def save(at_step: int) -> Path:
        # collective: each rank's RNG state goes into rank 0's file, so resume restores every rank
        rng = ctx.all_gather(torch.get_rng_state())
        rng_cuda = ctx.all_gather(torch.cuda.get_rng_state(device)) if on_cuda and ctx.active else None
        extra = {"rng_cpu": rng[0], "seed": settings.seed, "steps": settings.steps,
                 "pairs_per_step": N, "processes": W,
                 "data_position": at_step * N, "n_pairs": len(pairs),
                 "best_value": best["value"], "best_step": best["step"]}
        if ctx.active:
            extra["rng_cpu_by_rank"] = rng
            if rng_cuda is not None:
                extra["rng_cuda_by_rank"] = rng_cuda
        elif on_cuda:
            extra["rng_cuda"] = torch.cuda.get_rng_state_all()
        path = out / f"checkpoint_step_{at_step}.pt"
        _on_main(ctx, lambda: ck.save_checkpoint(path, network, config=config, step=at_step,
                                                 optimizer_state=optimizer.state_dict(), extra=extra))
        return path

    def validation(at_step: int) -> dict[str, float]:
        scores = validate_sharded(ctx, network, source, val_pairs, val_load, device)
        scores["step"] = at_step
        history.append(scores)
        if log is not None:
            log.write({"step": at_step, **{f"val_{k}": v for k, v in scores.items() if k != "step"}})
        return scores

    history: list[dict[str, Any]] = []
    last_loss = float("nan")
    started = step
    if val_pairs and step == 0:  # the untrained baseline, so the log shows what training changed
        validation(0)
    bar = tqdm(total=settings.steps, initial=step, desc="train dhf", unit="step", disable=not progress or None)
    t0 = time.perf_counter()
    while step < settings.steps:
        if stop_after is not None and step - started >= stop_after:
            bar.close()
            return {"interrupted_at": step, "out_dir": str(out)}
        indices = step_pairs(len(pairs), step, N, settings.seed)
        mine = indices[ctx.rank::W]
        optimizer.zero_grad(set_to_none=True)
        losses: list[float] = []
        pending, error = None, None
        try:
            for i, index in enumerate(mine):
                final = i == local_n - 1
                # a rank's earlier pairs: forward and backward without the all-reduce (memory stays one pair)
                with model.no_sync() if ctx.active and not final else nullcontext():
                    loss = pair_loss(model, network, source, pairs[index], settings.load_size, device)
                    losses.append(float(loss.detach()))
                    scaled = loss / local_n if local_n > 1 else loss  # the local mean; DDP averages the ranks
                    if not final:
                        scaled.backward()
                if final:
                    pending = scaled
        except Exception as exc:  # noqa: BLE001 - agree() re-raises it here and reports it on the others
            error = exc
        # before the backward that all-reduces, so a failed rank never leaves the others waiting inside it
        ctx.agree(error)
        pending.backward()
        optimizer.step()
        step += 1
        step_losses = _interleave(ctx.all_gather(losses))  # the step's N losses in data order
        last_loss = float(np.mean(step_losses))
        if log is not None:
            ids = [pairs[k].id for k in indices]
            log.write({"step": step, "loss": last_loss, **({"pair": ids[0]} if N == 1 else {"pairs": ids}),
                       "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0})
        bar.set_postfix(loss=f"{last_loss:.4f}")
        bar.update(1)
        if val_pairs and (step % settings.val_every == 0 or step == settings.steps):
            scores = validation(step)
            key = "pck@0.10_bbox" if "pck@0.10_bbox" in scores else "pck@0.10_img"
            if scores[key] > best["value"]:  # the same scores on every rank, so the same decision
                best = {"value": scores[key], "step": step}
                _on_main(ctx, lambda: ck.save_checkpoint(out / "best.pt", network,
                                                         config={**config, "best_metric": key}, step=step))
            if main:  # tqdm.write prints even when the bar is disabled
                bar.write(f"step {step}: loss {last_loss:.4f}, val {key} {scores[key]:.2f}")
        if step % settings.ckpt_every == 0 or step == settings.steps:
            save(step)
    bar.close()
    final_path = out / "aggregation_network.pt"

    def finish() -> None:
        shutil.copyfile(out / f"checkpoint_step_{step}.pt", final_path)
        ck.save_safetensors(out / "aggregation_network.safetensors", network, config=config, step=step)

    _on_main(ctx, finish)
    return {"out_dir": str(out), "steps": step, "final_loss": last_loss, "validation": history,
            "best": best, "checkpoint": str(final_path), "config": config, "processes": W}


def settings_dict(settings: TrainSettings) -> dict[str, Any]:
    return asdict(settings)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def mean_loss(rows: Iterable[dict[str, Any]], first: int, last: int) -> float:
    """Mean training loss over steps ``first..last`` (inclusive) of a metrics log."""
    vals = [r["loss"] for r in rows if "loss" in r and first <= r["step"] <= last]
    if not vals:
        raise ValueError(f"no loss rows between steps {first} and {last}")
    return float(np.mean(vals))


# -- the real feature source --------------------------------------------------------------------------------
class SDFeatureSource:
    """The SD inversion (or the single clean pass) of ``corrbench_sd``, as a training feature source.

    Called outside ``inference_mode``, the extractor hands ``consume`` a fresh copy of each map in the
    caller's grad mode, which the streaming aggregator feeds to autograd (pitfall P7).
    """

    def __init__(self, extractor, save_indices: Sequence[int], layers: Sequence[tuple[int, int]], *,
                 one_step: bool = False):
        self.extractor = extractor
        self.save_indices = tuple(int(k) for k in save_indices)
        self.layers = tuple(tuple(layer) for layer in layers)
        self.one_step = one_step
        self.layer_channels = list(extractor.layer_channels(self.layers))
        self.num_timesteps = len(self.save_indices)
        self.output_resolution = int(extractor.output_resolution)

    def run(self, images: torch.Tensor, consume: Consume) -> None:
        if self.one_step:
            self.extractor.one_step(images, layers=self.layers, consume=consume)
        else:
            self.extractor.invert(images, save_indices=self.save_indices, layers=self.layers, consume=consume)

    def describe(self) -> dict[str, Any]:
        ex = self.extractor
        return {"model_id": ex.model, "diffusion_mode": "inversion", "save_timestep": list(self.save_indices),
                "num_timesteps": ex.num_steps, "one_step": self.one_step, "prompt": "", "negative_prompt": "",
                "guidance_scale": -1, "latent": ex.latent, "latent_seed": ex.seed, "image_size": ex.image_size,
                "dtype": str(ex.dtype), "layers": [list(layer) for layer in self.layers]}
