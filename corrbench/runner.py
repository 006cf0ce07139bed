"""methods × dataset → results: unique images → cached batched extraction → readout → PCK → files.

Each unique image is described once per method configuration (never once per pair); features live
in the content-addressed cache (:mod:`corrbench.cache`), so a rerun only reads them back.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .api import Dataset, Descriptor, FeatureGrid, Pair, describe_together
from .cache import FeatureCache, config_hash, default_cache_dir
from .config import parse_overrides, resolve_overrides
from .distributed import DistContext, init_from_env
from .errors import CorrbenchError, DataError, UsageError
from .fsmode import check_writable_dir
from .images import ImageRecord, inspect_image, load_rgb, to_batch, to_load, to_original
from .metrics import check_alphas, score_method
from .sampling import stratified_sample
from .plugins import get_host
from .identity import method_identity, plugin_code_identity
from .readouts import Readout, ReadoutInput, make_readout
from .results import assemble_results, headline_table, method_entry, with_intervals, write_run_folder
from .stats import method_statistics


@dataclass
class MethodResult:
    name: str
    descriptor: Descriptor
    cache_dir: str
    config_hash: str = ""
    weights: str = ""
    predictions: list[dict[str, Any]] = field(default_factory=list)
    keypoints: pd.DataFrame | None = None
    cost: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    out_dir: Path | None
    summary: pd.DataFrame
    breakdown: pd.DataFrame
    results: dict[str, Any]
    table: pd.DataFrame
    #: one dict per method × pair (what predictions.jsonl holds)
    predictions: list[dict[str, Any]] = field(default_factory=list)


class _FeatureStore:
    """Feature maps of one method: extracted in batches into the cache, read back through a small LRU."""

    def __init__(self, descriptor: Descriptor, cache: FeatureCache, device: str, lru: int = 32,
                 readout: Readout | None = None, flip: bool = False, categories: dict[str, str] | None = None):
        self.descriptor = descriptor
        #: average each image's features with those of its mirror image (flip test-time augmentation)
        self.flip = flip
        #: image sha256 → category, for methods whose features depend on it (``uses_category``)
        self.categories = categories or {}
        self.readout = readout if readout is not None else make_readout(descriptor.default_readout)
        self.cache = cache
        # predictions also depend on the readout; they live under the method's cache folder, whose
        # name already covers the method, its weights, code and preprocessing
        self.readout_key = config_hash(self.readout.identity())
        self.device = device
        self._lru: OrderedDict[str, tuple[torch.Tensor, FeatureGrid, tuple[int, int]]] = OrderedDict()
        self._norms: OrderedDict[str, Any] = OrderedDict()
        self._size = lru

    def fill(self, images: Sequence[ImageRecord], batch_size: int, progress: bool) -> dict[str, Any]:
        """Extract and cache the features of every image not cached yet; returns the cost."""
        return fill_together([self], images, batch_size, progress)[0]

    def category(self, rec: ImageRecord) -> str | None:
        return self.categories.get(rec.sha256) if self.descriptor.uses_category else None

    def key(self, rec: ImageRecord) -> str:
        """The image's cache key: its content hash, and its category when the features depend on it."""
        category = self.category(rec)
        if category is None:
            return rec.sha256
        return f"{rec.sha256}-{config_hash({'category': category})[:16]}"

    def put_batch(self, chunk: Sequence[ImageRecord], load_hw: tuple[int, int], feats: torch.Tensor) -> None:
        grid = self.descriptor.feature_grid(load_hw, tuple(feats.shape[-2:]))
        for rec, f in zip(chunk, feats):
            self.cache.put_map(self.key(rec), f.to(getattr(torch, self.descriptor.cache_dtype)), grid, load_hw,
                               str(rec.path))

    def _cached(self, rec: ImageRecord) -> bool:
        return self.cache.has(self.key(rec))

    def get(self, rec: ImageRecord) -> tuple[torch.Tensor, FeatureGrid, tuple[int, int]]:
        key = self.key(rec)
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._lru[key]
        hit = self.cache.get_map(key)
        if hit is None:  # evicted or corrupt since fill(): recompute this one image
            self.fill([rec], 1, progress=False)
            hit = self.cache.get_map(key)
            if hit is None:
                raise DataError(f"features for {rec.path} could not be written to {self.cache.dir}")
        feats, grid, load_hw = hit
        entry = (feats.float().to(self.device), grid, load_hw)
        self._lru[key] = entry
        if len(self._lru) > self._size:
            self._lru.popitem(last=False)
        return entry

    # Predictions are cached too (hloc's "work already done is skipped"): a warm rerun then only scores.
    def _prediction_path(self, src: ImageRecord, tgt: ImageRecord, points_load: torch.Tensor) -> Path:
        return self.cache.prediction_path(self.readout_key, self.key(src), self.key(tgt), points_load)

    def cached_prediction(self, src: ImageRecord, tgt: ImageRecord, points_load: torch.Tensor) -> torch.Tensor | None:
        return self.cache.get_prediction(self.readout_key, self.key(src), self.key(tgt), points_load)

    def keep_prediction(self, src: ImageRecord, tgt: ImageRecord, points_load: torch.Tensor, pred: torch.Tensor) -> None:
        self.cache.put_prediction(self.readout_key, self.key(src), self.key(tgt), points_load, pred)

    def target_prepared(self, rec: ImageRecord) -> Any:
        """The readout's per-target work (the nn readout's per-pixel norms), done once per target image."""
        key = self.key(rec)
        if key not in self._norms:
            fmap, grid, load_hw = self.get(rec)
            self._norms[key] = self.readout.prepare_target(self.descriptor, fmap, grid, load_hw)
            if len(self._norms) > 4 * self._size:
                self._norms.popitem(last=False)
        return self._norms[key]


def fill_together(stores: Sequence[_FeatureStore], images: Sequence[ImageRecord], batch_size: int,
                  progress: bool) -> list[dict[str, Any]]:
    """Fill the caches of one method, or of several that share a pass, in batches; one cost per store.

    Several stores extract together (``describe_together``): an image missing from any of them is
    computed once for all, and the pass's time is reported for each, marked as shared.
    """
    descriptors = [s.descriptor for s in stores]
    prep = descriptors[0].input_preprocessing()
    missing = [rec for rec in images if any(not s._cached(rec) for s in stores)]
    t0 = time.perf_counter()
    # images of one load size (and, for methods prompted with it, one category) form a batch
    by_shape: dict[tuple[Any, ...], list[ImageRecord]] = {}
    for rec in missing:
        by_shape.setdefault((prep.load_hw(rec.size), stores[0].category(rec) or ""), []).append(rec)
    label = "+".join(d.name for d in descriptors)
    bar = tqdm(total=len(missing), desc=f"{label}: extract", unit="img", disable=not progress or None, leave=False)
    for (load_hw, _), recs in by_shape.items():
        for i in range(0, len(recs), batch_size):
            chunk = recs[i:i + batch_size]
            batch = to_batch([load_rgb(r.path) for r in chunk], prep).to(stores[0].device)
            if stores[0].flip:
                from .tta import describe_flip_averaged

                outs = describe_flip_averaged(descriptors, batch,
                                              categories=[stores[0].category(r) for r in chunk])
            elif len(stores) == 1:
                outs = [descriptors[0].describe(batch, categories=[stores[0].category(r) for r in chunk])]
            else:
                outs = describe_together(descriptors, batch)
            for store, feats in zip(stores, outs):
                store.put_batch(chunk, load_hw, feats)
            bar.update(len(chunk))
    bar.close()
    seconds = time.perf_counter() - t0
    cost = {"images": len(images), "images_extracted": len(missing), "images_cached": len(images) - len(missing),
            "extract_seconds": seconds, "extract_s_per_image": seconds / len(missing) if missing else None}
    if len(stores) == 1:
        return [cost]
    return [{**cost, "extract_shared_with": [d.name for d in descriptors if d is not s.descriptor]} for s in stores]


def shared_groups(descriptors: dict[str, Descriptor]) -> list[list[str]]:
    """Names of methods that share a pass and a preprocessing, in run order; groups of two or more."""
    groups: dict[Any, list[str]] = {}
    for name, descriptor in descriptors.items():
        shared = descriptor.shared_pass()
        if shared is not None and not descriptor.uses_category:
            key = (shared, json.dumps(descriptor.input_preprocessing().as_dict(), sort_keys=True, default=str))
            groups.setdefault(key, []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _peak_host_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def collect_images(pairs: Sequence[Pair], dataset: Dataset, progress: bool,
                   ctx: DistContext | None = None) -> tuple[list[Pair], dict[Path, ImageRecord]]:
    """Hash and decode every unique image once (split across ranks); drop (or fail on) pairs whose images are bad."""
    ctx = ctx or DistContext()
    records: dict[Path, ImageRecord] = {}
    bad: dict[Path, str] = {}
    paths = list(dict.fromkeys(p for pair in pairs for p in (pair.source, pair.target)))
    for path in tqdm(ctx.shard(paths), desc="images", unit="img", disable=not progress or None, leave=False):
        try:
            records[path] = inspect_image(path)
        except DataError as exc:
            bad[path] = str(exc)
    for other_records, other_bad in ctx.all_gather((records, bad)):
        records.update(other_records)
        bad.update(other_bad)
    if bad and not dataset.skip_invalid:
        raise DataError(bad[next(p for p in paths if p in bad)])
    kept = []
    for pair in pairs:
        problem = next((bad[p] for p in (pair.source, pair.target) if p in bad), None)
        for side, path, size in (("source", pair.source, pair.source_size), ("target", pair.target, pair.target_size)):
            if problem is None and size is not None and tuple(size) != records[path].size:
                problem = (f"annotation says {side} image {path} is {size[0]}×{size[1]} "
                           f"but it decodes as {records[path].size[0]}×{records[path].size[1]}")
        if problem:
            dataset.invalid(f"pair {pair.id}: {problem}")
            continue
        kept.append(pair)
    return kept, records


def _merge_costs(costs: list[dict[str, Any]], n_images: int) -> dict[str, Any]:
    """One cost record for all ranks: images summed, wall time of the slowest rank."""
    extracted = sum(c.get("images_extracted", 0) for c in costs)
    seconds = max((c.get("extract_seconds", 0.0) for c in costs), default=0.0)
    merged = {"images": n_images, "images_extracted": extracted, "images_cached": n_images - extracted,
              "extract_seconds": seconds, "extract_s_per_image": seconds * len(costs) / extracted if extracted else None,
              "processes": len(costs)}
    shared = next((c["extract_shared_with"] for c in costs if c.get("extract_shared_with")), None)
    if shared:  # the seconds are those of the one pass that served these methods together
        merged["extract_shared_with"] = shared
    return merged


def _reference_lengths(pair: Pair, target_size: tuple[int, int]) -> tuple[float, float]:
    W, H = target_size
    l_img = float(max(W, H))
    if pair.target_box is None:
        return float("nan"), l_img
    l, t, r, b = pair.target_box
    return float(max(r - l, b - t)), l_img


def _margin_list(margins: torch.Tensor | None, column: int) -> list[float | None] | None:
    """One column of nn_transfer's margins as JSON: None for the whole list when unknown, per value when infinite."""
    if margins is None:
        return None
    return [float(v) if np.isfinite(v) else None for v in margins[:, column].tolist()]


def _mirror_index(ids: Sequence[str] | None, partners: dict[str, str]) -> list[int] | None:
    """For each keypoint row, the row of its left/right partner in the same pair (-1: none)."""
    if not ids or not partners:
        return None
    row_of = {str(k): i for i, k in enumerate(ids)}
    return [row_of.get(partners.get(str(k), ""), -1) for k in ids]


def evaluate_method(store: _FeatureStore, pairs: Sequence[Pair], records: dict[Path, ImageRecord],
                    flags: Sequence[str], progress: bool,
                    mirror: Callable[[str], dict[str, str]] | None = None) -> tuple[pd.DataFrame, list[dict[str, Any]], float]:
    descriptor = store.descriptor
    rows: list[dict[str, Any]] = []
    preds: list[dict[str, Any]] = []
    prep = descriptor.input_preprocessing()
    t0 = time.perf_counter()
    # group by source image so the LRU keeps hitting
    for pair in tqdm(sorted(pairs, key=lambda p: (str(p.source), str(p.target))), desc=f"{descriptor.name}: match",
                     unit="pair", disable=not progress or None, leave=False):
        src_rec, tgt_rec = records[pair.source], records[pair.target]
        s_hw, t_hw = prep.load_hw(src_rec.size), prep.load_hw(tgt_rec.size)
        src_load = torch.from_numpy(to_load(pair.source_points, src_rec.size, s_hw, prep))
        pred_load = store.cached_prediction(src_rec, tgt_rec, src_load)
        margins = None  # per-keypoint [local, far] similarity margins (when the readout reports them; not cached)
        rejected = None  # keypoints the readout declined to match (mutual-nn); scored as misses
        if pred_load is not None and getattr(store.readout, "may_reject", False):
            pred_load = None  # rejections are not cached with the points: recompute
        if pred_load is None:
            s_map, s_grid, s_hw = store.get(src_rec)
            t_map, t_grid, t_hw = store.get(tgt_rec)
            out = store.readout.transfer(ReadoutInput(descriptor, s_map, t_map, s_grid, t_grid, s_hw, t_hw, src_load,
                                                      store.target_prepared(tgt_rec)))
            pred_load, margins = out.points, out.margins
            rejected = None if out.rejected is None else out.rejected.cpu().numpy().astype(bool)
            store.keep_prediction(src_rec, tgt_rec, src_load, pred_load)
        pred = to_original(pred_load.cpu().numpy(), tgt_rec.size, t_hw, prep)
        dist = np.linalg.norm(pred - pair.target_points, axis=1)
        # the DHF notebooks score in the load frame instead (pitfall P11): logged, not the headline
        dist_load = np.linalg.norm(pred_load.cpu().numpy() - to_load(pair.target_points, tgt_rec.size, t_hw, prep),
                                   axis=1)
        scored = dist if rejected is None else np.where(rejected, np.inf, dist)
        l_bbox, l_img = _reference_lengths(pair, tgt_rec.size)
        ids = pair.metadata.get("keypoint_ids")
        for k, d in enumerate(scored):
            row = {"pair_id": pair.id, "category": pair.category or "-", "dist": float(d),
                   "L_bbox": l_bbox, "L_img": l_img, "dist_load": float(dist_load[k]), "L_load": float(max(t_hw))}
            for flag in flags:
                row[flag] = pair.metadata.get(flag, "-")
            rows.append(row)
        preds.append({"method": descriptor.name, "pair": pair.id, "category": pair.category,
                      "source": str(pair.source), "target": str(pair.target),
                      "source_points": pair.source_points.tolist(), "target_points": pair.target_points.tolist(),
                      "predicted_points": pred.tolist(), "distances": dist.tolist(),
                      "L_bbox": l_bbox, "L_img": l_img,
                      # for checks that must tell a near-tie from a real change (corrbench/regress.py):
                      # load-frame distances, and how far (original px) a one-pixel move of a prediction goes
                      "load_distances": dist_load.tolist(), "L_load": float(max(t_hw)),
                      "pixel_step": float(np.hypot(tgt_rec.size[0] / t_hw[1], tgt_rec.size[1] / t_hw[0])),
                      "margins": _margin_list(margins, 1), "local_margins": _margin_list(margins, 0)})
        if ids is not None:
            preds[-1]["keypoint_ids"] = [str(k) for k in ids]
            index = _mirror_index(preds[-1]["keypoint_ids"], mirror(pair.category) if mirror else {})
            if index is not None:
                preds[-1]["mirror_index"] = index
        if rejected is not None:
            preds[-1]["rejected"] = rejected.tolist()
    seconds = time.perf_counter() - t0
    return pd.DataFrame(rows), preds, seconds


def check_readout_settings(host, readout: str | None, settings: dict[str, Any]) -> None:
    """``--readout NAME`` names a registered readout and ``--set readout.key`` keys it (or some readout) has.

    Checked before any work; the full check of each method's readout follows when the methods are built.
    """
    if readout is not None:
        make_readout(readout, settings)
        return
    if settings:
        known = {k for e in host.readouts.entries() for k in e.load().default_config}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise UsageError(f"--set readout.{unknown[0]}: no registered readout has the setting {unknown[0]!r}; "
                             f"settings: {', '.join(sorted(known)) or '(none)'}")


def readout_for(descriptor: Descriptor, name: str | None, settings: dict[str, Any]) -> Readout:
    """The readout a method is read out with: ``name`` (``--readout``) or the method's default.

    Without ``--readout``, ``--set readout.key`` reaches each method's default readout that has the key.
    """
    chosen = name or descriptor.default_readout
    entry_cls = get_host().readouts.entry(chosen).load()
    config = settings if name else {k: v for k, v in settings.items() if k in entry_cls.default_config}
    readout = entry_cls(config)
    readout.check(descriptor)
    return readout


def _split_methods(methods: "str | Sequence[str | Descriptor]") -> list["str | Descriptor"]:
    """Method names (a comma-separated string or a list) and ready :class:`Descriptor` instances."""
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    out: list[str | Descriptor] = []
    for m in items:
        if isinstance(m, Descriptor):
            out.append(m)
        elif isinstance(m, str):
            if m.strip():
                out.append(m.strip())
        else:
            raise UsageError(f"a method must be a registered name or a corrbench.Descriptor, got {type(m).__name__}")
    if not out:
        raise UsageError("no methods given")
    names = [m if isinstance(m, str) else m.name for m in out]
    if len(set(names)) != len(names):
        raise UsageError(f"a method is listed twice in {','.join(names)}")
    return out


@dataclass
class RunOptions:
    """Everything a run takes besides its methods and dataset (``corrbench run``'s options)."""

    split: str | None = None
    data_root: str | os.PathLike | None = None
    overrides: Any = None  # --set values: a list of "NAME.key=value" strings or a dict
    limit: int | None = None  # the first N pairs
    sample: int | None = None  # a seeded sample of N pairs, stratified by category
    seed: int = 0
    device: str = "auto"
    batch_size: int = 8
    out_dir: str | os.PathLike | None = None
    cache_dir: str | os.PathLike | None = None
    no_cache: bool = False
    skip_invalid: bool = False
    compare: str | None = None  # None: the protocol's (dhf: "le")
    alphas: Sequence[float] | str | None = None  # None: the protocol's (dhf: 0.01, 0.05, 0.10, 0.15)
    readout: str | None = None  # None: the protocol's, else each method's default
    protocol: str | None = None  # a registered preset (corrbench.protocols); None: "dhf"
    flip: bool | None = None  # flip test-time augmentation; None: the protocol's
    resamples: int = 1000  # bootstrap resamples behind the 95 % intervals
    progress: bool = True
    echo: Callable[[str], None] | None = None


def resolve_protocol(opts: RunOptions) -> tuple[Any, RunOptions, list[str]]:
    """The preset a run follows, the options with its knobs filled in, and which knobs the user changed.

    Anything given explicitly (``--alpha``, ``--compare``, ``--readout``, ``--flip``) wins over the preset
    and is listed as an override, so results.json says exactly how the run departs from the preset.
    """
    from dataclasses import replace

    from .protocols import DEFAULT, get_protocol

    preset = get_protocol(opts.protocol or DEFAULT)
    overrides = []
    alphas = check_alphas(preset.alphas)
    if opts.alphas is not None:
        given = check_alphas(opts.alphas)
        if given != alphas:
            overrides.append("alphas")
        alphas = given
    compare = preset.compare if opts.compare is None else opts.compare
    if compare not in ("le", "lt"):
        raise UsageError(f"--compare {compare!r}: use le or lt")
    if compare != preset.compare:
        overrides.append("compare")
    readout = preset.readout if opts.readout is None else opts.readout
    if readout != preset.readout:
        overrides.append("readout")
    flip = preset.flip if opts.flip is None else bool(opts.flip)
    if flip != preset.flip:
        overrides.append("flip")
    return preset, replace(opts, alphas=alphas, compare=compare, readout=readout, flip=flip), overrides


def run_benchmark(methods: "str | Sequence[str | Descriptor]", dataset: str, options: RunOptions | None = None,
                  **kwargs: Any) -> RunResult:
    """Run ``methods`` on ``dataset`` and (when ``out_dir`` is given) write the results folder.

    ``limit`` keeps the first N pairs; ``sample`` a seeded subset of N pairs stratified by category
    (:mod:`corrbench.sampling`); with both, the sample is drawn from the first ``limit`` pairs.
    ``device`` may be ``auto`` (CUDA when available).
    """
    from dataclasses import fields, replace

    from .devices import resolve_device

    unknown = set(kwargs) - {f.name for f in fields(RunOptions)}
    if unknown:
        raise TypeError(f"run_benchmark() got unexpected option(s) {', '.join(sorted(unknown))}")
    opts = replace(options or RunOptions(), **kwargs)
    preset, opts, protocol_overrides = resolve_protocol(opts)
    overrides, limit, sample = opts.overrides, opts.limit, opts.sample
    batch_size, out_dir, cache_dir, no_cache, readout = (opts.batch_size, opts.out_dir, opts.cache_dir,
                                                         opts.no_cache, opts.readout)
    started = time.perf_counter()
    device = resolve_device(opts.device)
    alphas = opts.alphas
    if opts.resamples < 100:
        raise UsageError(f"--resamples must be at least 100 for a 95 % interval, got {opts.resamples}")
    if sample is not None and sample < 1:
        raise UsageError(f"--sample must be at least 1, got {sample}")
    host = get_host()
    method_classes: dict[str, type] = {}
    prebuilt: dict[str, Descriptor] = {}  # instances handed in by the Python API, used as they are
    for item in _split_methods(methods):
        if isinstance(item, Descriptor):
            if not item.name:
                raise UsageError(f"descriptor {type(item).__name__} has no name")
            prebuilt[item.name] = item
            continue
        entry = host.methods.entry(item)
        method_classes[entry.name] = entry.load()
    ds_entry = host.datasets.entry(dataset)
    ds_cls = ds_entry.load()
    aliases = host.methods.aliases()
    parsed = parse_overrides(overrides)
    readout_cfg = {k.partition(".")[2]: v for k, v in parsed.items() if k.startswith("readout.")}
    if readout is not None and readout == preset.readout:  # the preset's readout settings, unless --set changes them
        readout_cfg = {**preset.readout_config, **readout_cfg}
    parsed = {k: v for k, v in parsed.items() if not k.startswith("readout.")}
    check_readout_settings(host, readout, readout_cfg)
    method_cfgs, ds_cfg = resolve_overrides(parsed, method_classes,
                                            (ds_entry.name, ds_cls), aliases)
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    # where results and features go is checked before any expensive work, not after it
    if out_dir is not None:
        check_writable_dir(Path(out_dir), "--out")
    if not no_cache and cache_dir is not None:
        check_writable_dir(Path(cache_dir), "--cache-dir")
    elif not no_cache:  # $CORRBENCH_CACHE or the user cache: the machine's problem, not the command line's
        check_writable_dir(default_cache_dir(), "feature cache", CorrbenchError)

    ctx, device = init_from_env(device)
    try:
        return _run(ctx, host, method_classes, method_cfgs, prebuilt, ds_entry, ds_cls, ds_cfg, readout_cfg,
                    replace(opts, device=device, alphas=alphas), started, preset, protocol_overrides)
    finally:
        ctx.close()


def _fill(ctx: DistContext, stores: list[_FeatureStore], used: Sequence[ImageRecord], batch_size: int,
          progress: bool, device: str) -> list[dict[str, Any]]:
    """Each rank fills its shard; a failure anywhere is raised everywhere; the costs are merged."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    error = None
    try:
        costs = fill_together(stores, ctx.shard(used), batch_size, progress)
    except Exception as exc:  # agreed on below, so no rank waits forever for a failed one
        error, costs = exc, [{} for _ in stores]
    ctx.agree(error)
    return [_merge_costs(ctx.all_gather(cost), len(used)) for cost in costs]


def _run(ctx: DistContext, host, method_classes: dict[str, type], method_cfgs: dict[str, dict[str, Any]],
         prebuilt: dict[str, Descriptor], ds_entry, ds_cls, ds_cfg: dict[str, Any], readout_cfg: dict[str, Any],
         opts: RunOptions, started: float, preset, protocol_overrides: list[str]) -> RunResult:
    split, data_root, limit, device, batch_size = opts.split, opts.data_root, opts.limit, opts.device, opts.batch_size
    out_dir, cache_dir, no_cache, skip_invalid = opts.out_dir, opts.cache_dir, opts.no_cache, opts.skip_invalid
    compare, alphas, progress, echo = opts.compare, opts.alphas, opts.progress, opts.echo
    sample, seed, readout = opts.sample, opts.seed, opts.readout
    if ctx.active and no_cache:
        raise UsageError("--no-cache cannot be used with several processes: ranks share features through the cache")
    progress = progress and ctx.is_main
    ds: Dataset = ds_cls(root=data_root, split=split, config=ds_cfg, skip_invalid=skip_invalid)
    if ctx.is_main:
        ds.prepare()  # generate or check once before the other ranks read
    ctx.barrier()
    all_pairs = list(islice(ds.pairs(), limit))
    if not all_pairs:
        raise DataError(f"dataset {ds.name!r} split {ds.split!r} at {ds.root} has no usable pairs")
    n_listed = len(all_pairs)
    per_category = None
    if preset.pairs_per_category is not None:
        from .sampling import per_category_sample

        before = len(all_pairs)
        all_pairs = per_category_sample(all_pairs, preset.pairs_per_category, preset.sample_seed)
        per_category = {"per_category": preset.pairs_per_category, "n": len(all_pairs), "of": before,
                        "seed": preset.sample_seed, "replacement": False}
        if echo and len(all_pairs) < before:
            echo(f"protocol {preset.name}: evaluating {preset.pairs_per_category} pairs per category "
                 f"({len(all_pairs)} of {before}, seed {preset.sample_seed}, without replacement)")
    if sample is not None and sample < len(all_pairs):
        before = len(all_pairs)
        all_pairs = stratified_sample(all_pairs, sample, seed)
        if echo:
            echo(f"evaluating a sample of {len(all_pairs)} of {before} pairs (stratified by category, seed {seed})")
    pairs, records = collect_images(all_pairs, ds, progress, ctx)
    if not pairs:
        raise DataError(f"dataset {ds.name!r}: every pair was skipped as invalid ({len(ds.skipped)} problems)")
    flags = [f for f in ds.difficulty_flags]

    tmp_cache = tempfile.mkdtemp(prefix="corrbench-nocache-") if no_cache else None
    cache_root = Path(tmp_cache) if tmp_cache else Path(cache_dir) if cache_dir else default_cache_dir()
    method_results: list[MethodResult] = []
    try:
        descriptors: dict[str, Descriptor] = {name: cls(config=method_cfgs[name], device=device)
                                              for name, cls in method_classes.items()}
        descriptors.update(prebuilt or {})
        stores = {}
        image_categories = {records[x].sha256: (pair.category or "") for pair in pairs
                            for x in (pair.source, pair.target)}
        for name, d in descriptors.items():
            d.preprocess_changes = dict(preset.preprocess_changes)
            identity = method_identity(d)
            if opts.flip:  # mirrored-and-averaged features are other features: their own cache folder
                identity = {**identity, "tta": "flip-average"}
            root = cache_root
            if identity["weights"] is None:
                # nothing says which weights made these features: never serve them to a later run
                if not tmp_cache:
                    tmp_cache = tempfile.mkdtemp(prefix="corrbench-unkeyed-")
                root = Path(tmp_cache)
                warnings.warn(f"{name}: no weights identity (the method declares no weight modules, "
                              "weight_free or weights_identity()); its features are recomputed, not cached",
                              stacklevel=2)
            stores[name] = _FeatureStore(d, FeatureCache(root, name, identity), device,
                                         readout=readout_for(d, readout, readout_cfg or {}), flip=bool(opts.flip),
                                         categories=image_categories)
        used = sorted({records[x] for pair in pairs for x in (pair.source, pair.target)}, key=lambda r: r.sha256)
        # methods sharing a pass (one SD inversion for every SD-1.5 row) are extracted together first
        costs: dict[str, dict[str, Any]] = {}
        for group in shared_groups(descriptors):
            costs.update(zip(group, _fill(ctx, [stores[n] for n in group], used, batch_size, progress, device)))
        for name in descriptors:
            descriptor, store = descriptors[name], stores[name]
            cache = store.cache
            cost = costs[name] if name in costs else _fill(ctx, [store], used, batch_size, progress, device)[0]
            evaluated, error = None, None
            if ctx.is_main:  # the readout runs once; the other ranks wait to hear whether it worked
                try:
                    evaluated = evaluate_method(store, pairs, records, flags, progress, ds.mirror_partners)
                except Exception as exc:
                    error = exc
            ctx.agree(error)
            if not ctx.is_main:
                continue
            keypoints, preds, readout_s = evaluated
            cost.update({"readout_seconds": readout_s, "readout_pairs_per_s": len(pairs) / readout_s if readout_s else None,
                         "peak_host_mb": _peak_host_mb(),
                         "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None})
            method_results.append(MethodResult(name, descriptor, str(cache.dir), cache.digest,
                                              cache.identity["weights"], preds, keypoints, cost))
            if echo:
                shared = f" (one pass shared with {', '.join(cost['extract_shared_with'])})" \
                    if cost.get("extract_shared_with") else ""
                echo(f"{name}: {cost['images_extracted']} images extracted{shared}, {cost['images_cached']} from cache")
    finally:
        if tmp_cache:
            shutil.rmtree(tmp_cache, ignore_errors=True)
    ctx.barrier()
    if not ctx.is_main:
        return RunResult(None, pd.DataFrame(), pd.DataFrame(), {}, pd.DataFrame())

    summary_rows, breakdown_rows = [], []
    results_methods: dict[str, Any] = {}
    headline_norm = preset.headline_norm
    for mr in method_results:
        scored = score_method(mr.keypoints, alphas, compare, flags, labels={"method": mr.name, "dataset": ds.name,
                                                                              "split": ds.split})
        statistics = method_statistics(mr.predictions, alphas, compare, resamples=opts.resamples, seed=0,
                                       headline_norm=headline_norm)
        summary_rows.append(with_intervals(scored.summary, statistics))
        breakdown_rows.append(scored.breakdown)
        store = stores[mr.name]
        results_methods[mr.name] = method_entry(
            mr.descriptor, plugin=host.methods.entry(mr.name).plugin if mr.name in method_classes else "(python api)",
            plugin_version=plugin_code_identity(type(mr.descriptor)), config_hash=mr.config_hash, weights=mr.weights,
            readout=store.readout, metrics=scored.metrics, per_category=scored.per_category, n_pairs=len(pairs),
            n_keypoints=int(len(mr.keypoints)), cost=mr.cost,
            cache=None if no_cache or mr.weights is None else mr.cache_dir, cache_key=store.cache.identity)
        results_methods[mr.name]["statistics"] = statistics
        results_methods[mr.name]["uses_category"] = bool(mr.descriptor.uses_category)
        results_methods[mr.name]["flip"] = bool(opts.flip)
    summary = pd.concat(summary_rows, ignore_index=True)
    breakdown = pd.concat(breakdown_rows, ignore_index=True)
    table = headline_table(summary, {m: r["cost"] for m, r in results_methods.items()},
                           average=preset.headline_average, intervals=True)
    dataset_entry = {"name": ds.name, "version": ds.version, "split": ds.split, "root": str(ds.root),
                     "config": ds.config, "protocol": ds.protocol(), "plugin": ds_entry.plugin,
                     "n_pairs": len(pairs), "n_pairs_listed": n_listed, "limit": limit,
                     "sample": None if sample is None or len(all_pairs) >= n_listed else
                     {"n": len(all_pairs), "of": n_listed, "seed": seed, "stratified_by": "category"},
                     "per_category_sample": per_category,
                     "n_images": len(records), "skipped": list(ds.skipped)}
    protocol = {"name": preset.name, "preset": preset.as_dict(), "overrides": protocol_overrides,
                 "headline": {"metric": f"pck@0.10_{headline_norm}", "average": preset.headline_average},
                 "flip": bool(opts.flip), "readout": readout}
    results = assemble_results(dataset_entry, results_methods, alphas=alphas, compare=compare, device=device,
                               processes=ctx.world_size, seconds=time.perf_counter() - started, protocol=protocol)
    predictions = [p for mr in method_results for p in mr.predictions]
    out = Path(out_dir) if out_dir else None
    if out is not None:
        write_run_folder(out, results, summary, breakdown, table, predictions)
    return RunResult(out, summary, breakdown, results, table, predictions)
