"""The CI regression lane: a small deterministic run compared with committed PCK numbers.

What runs: the embedded ``synthetic`` dataset (test split, first :data:`LIMIT` pairs) with the
weight-free methods and tiny random-weight models built in-process with fixed seeds — a tiny Stable
Diffusion pipeline (``corrbench.testing.sd``) for ``sd-layer-4`` / ``sd-concat-all``, a seeded random
DHF aggregation network saved in the official checkpoint format for ``dhf`` / ``dhf-one-step``, and
timm's ``test_vit`` with random weights for ``dino``. Features are recomputed every time (no cache), so
the lane checks extraction, readout and PCK end to end. It takes about a minute on 2 CPU cores.

The numbers are compared two-sided with :data:`TOLERANCE`: a deterministic lane must not move at all,
so a rise is as suspicious as a drop. When a change is intended, update the baseline with one command
and commit the file; the diff shows up in review::

    python -m corrbench.regress --update      # or: corrbench regress --update
    git diff benchmarks/baselines/ci-synthetic.json
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .compare import BASELINE_FORMAT, Comparison, cells_from_baseline, compare_cells, load_cells
from .errors import CorrbenchError, UsageError

DATASET = "synthetic"
SPLIT = "test"
LIMIT = 30  # the first 30 pairs: 6 images, 270 keypoints (one keypoint = 0.37 PCK points)
METHODS = ("dsift", "colour-patch", "random-conv", "sd-layer-4", "sd-concat-all", "dhf", "dhf-one-step", "dino")
#: allowed change, PCK points, either direction. Below one keypoint (0.37 points): any moved match fails.
TOLERANCE = 0.1
SEED = 0
#: inversion steps of the tiny SD (the paper uses 50; 10 keeps the lane fast) and the DHF slots saved
NUM_STEPS = 10
SAVE_INDICES = (9, 5, 0)  # clean pass, a middle step, the noisiest: DHF's order, clean first


def default_baseline() -> Path:
    from .reproduce import default_baseline_path

    return default_baseline_path("ci-synthetic")


def tiny_models(workdir: str | os.PathLike, seed: int = SEED) -> dict[str, Any]:
    """Build the tiny seeded models under ``workdir``; return the ``--set`` overrides that select them.

    The overrides cover every family of the DHF table (SD, DHF incl. the pruned and SD-2.1 rows, DINO,
    DHPF), so ``corrbench reproduce dhf-table`` can run end to end on them as well.
    """
    import torch

    from corrbench.testing.sd import make_tiny_sd
    from corrbench_dhf.checkpoint import save_checkpoint
    from corrbench_dhf.network import AggregationNetwork
    from corrbench_sd.extractor import LAYERS, SDFeatureExtractor

    workdir = Path(workdir)
    sd = make_tiny_sd(workdir / "tiny-sd", seed=seed)
    channels = SDFeatureExtractor(str(sd)).layer_channels(LAYERS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = AggregationNetwork(channels, len(SAVE_INDICES), projection_dim=32, num_norm_groups=8)
        with torch.no_grad():  # distinct mixing weights, so the pruned rows' argmax slot is well defined
            net.mixing_weights.copy_(torch.randn(net.mixing_weights.shape) * 0.5)
    ckpt = save_checkpoint(workdir / "tiny-dhf.pt", net, step=0,
                           config={"save_timestep": list(SAVE_INDICES), "num_timesteps": NUM_STEPS,
                                   "num_norm_groups": 8, "projection_dim": 32, "model_id": "tiny-sd",
                                   "note": f"corrbench CI lane: random weights, seed {seed}"})
    fast_sd = {"sd.model": str(sd), "sd.image_size": 64, "sd.output_resolution": 16, "sd.load_size": 32,
               "sd.num_steps": NUM_STEPS, "sd.raw_indices": list(SAVE_INDICES)}
    dhf = {f"{m}.weights": str(ckpt) for m in ("dhf", "sd-layer-pruned", "dhf-pruned", "dhf-sd21")}
    dhf["dhf-one-step.weights"] = "random"
    vit = {"dino.model": "test_vit", "dino.weights": "random", "dino.load_size": 64, "dino.layer": 4}
    dhpf = {"dhpf.weights": "random", "dhpf.backbone": "resnet50", "dhpf.load_size": 96}
    return {**fast_sd, **dhf, **vit, **dhpf}


def lane_overrides(models: dict[str, Any], methods=METHODS) -> dict[str, Any]:
    """The subset of :func:`tiny_models` overrides that the lane's methods take."""
    from .config import resolve_overrides
    from .plugins import get_host

    host = get_host()
    classes = {m: host.methods.entry(m).load() for m in methods}
    keep = {}
    for key, value in models.items():
        try:
            resolve_overrides({key: value}, classes)
            keep[key] = value
        except UsageError:
            continue
    keep["random-conv.seed"] = SEED
    return keep


def run_lane(out_dir: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
             methods=METHODS, limit: int = LIMIT, progress: bool = False):
    """Run the lane in a temporary folder (models, no feature cache); return the RunResult."""
    import torch

    from .runner import run_benchmark

    torch.manual_seed(SEED)  # nothing should depend on the global RNG; this makes sure it cannot vary
    with tempfile.TemporaryDirectory(prefix="corrbench-lane-") as tmp:
        overrides = lane_overrides(tiny_models(tmp), methods)
        return run_benchmark(list(methods), DATASET, split=SPLIT, data_root=data_root, overrides=overrides,
                             limit=limit, device="cpu", batch_size=8, out_dir=out_dir, no_cache=True,
                             progress=progress)


def baseline_from_run(results: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The baseline file's content: numbers rounded to 4 decimals, nothing volatile (dates, paths)."""
    ds = results["dataset"]
    return {
        "format": BASELINE_FORMAT,
        "name": "ci-synthetic",
        "title": "corrbench CI regression lane (python -m corrbench.regress)",
        "update": "python -m corrbench.regress --update  (review the diff of this file before committing)",
        "lane": {"dataset": DATASET, "split": SPLIT, "limit": LIMIT, "methods": list(METHODS), "seed": SEED,
                 "num_steps": NUM_STEPS, "save_indices": list(SAVE_INDICES), "tolerance": TOLERANCE},
        "datasets": {ds["name"]: {"split": ds["split"], "pairs": ds["n_pairs"], "images": ds["n_images"]}},
        "environment": {"torch": results.get("env", {}).get("torch"), "python": platform.python_version()},
        "rows": [{"method": m, "keypoints": entry["n_keypoints"],
                  "metrics": {ds["name"]: {k: round(float(v), 4) for k, v in sorted(entry["metrics"].items())}}}
                 for m, entry in results["methods"].items()],
    }


def check(results_dir_or_result: Any, baseline: str | os.PathLike, tolerance: float = TOLERANCE) -> Comparison:
    """Compare a lane run (a RunResult or a run folder) with the baseline file, two-sided."""
    base = load_cells(baseline)
    if hasattr(results_dir_or_result, "results"):
        ours = cells_from_baseline(baseline_from_run(results_dir_or_result.results), "this run")
    else:
        ours = load_cells(results_dir_or_result)
    return compare_cells(base, ours, tolerance=tolerance, two_sided=True)


def main(update: bool = False, baseline: str | os.PathLike | None = None, tolerance: float | None = None,
         out_dir: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
         echo: Callable[[str], None] = print) -> bool:
    """Run the lane; check it (True when it passes) or, with ``update``, rewrite the baseline."""
    from .cache import atomic_write_bytes

    path = Path(baseline) if baseline else default_baseline()
    tol = TOLERANCE if tolerance is None else float(tolerance)
    if not update and not path.is_file():
        raise CorrbenchError(f"{path}: no baseline to compare with; create it with python -m corrbench.regress --update")
    started = time.perf_counter()
    result = run_lane(out_dir=out_dir, data_root=data_root)
    echo(f"lane: {len(METHODS)} methods on {DATASET}/{SPLIT}, {result.results['dataset']['n_pairs']} pairs, "
         f"{time.perf_counter() - started:.0f} s")
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(baseline_from_run(result.results), indent=2) + "\n"
        atomic_write_bytes(path, text.encode())
        echo(f"wrote {path}; review `git diff {path}` and commit it")
        return True
    cmp = check(result, path, tol)
    echo(cmp.render("md", "all"))
    echo(cmp.summary_line())
    return cmp.ok


if __name__ == "__main__":  # python -m corrbench.regress [--update] [--baseline PATH] ...
    from .cli_reproduce import regress, standalone

    standalone(regress, prog="python -m corrbench.regress")
