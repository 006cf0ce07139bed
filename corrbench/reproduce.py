"""``corrbench reproduce dhf-table``: re-run the nine rows of the Diffusion Hyperfeatures main table.

The table spec (rows → method, paper numbers) lives here, so the command works from an installed
package; ``benchmarks/baselines/dhf-paper.json`` is the same data as a file (``paper_baseline()``
writes it; a test keeps the two identical). Protocol: docs/reproduce.md#protocol and
docs/protocol.md#unknowns-and-their-defaults.

A run goes through three stages, each of which can stop it before any benchmark work is done:

1. **plan** (``make_plan``, all that ``--dry-run`` does): rows, their resolved configs, the weights and
   data each needs and whether they are present (looked up locally, never downloaded), a time estimate.
   Rows whose plugin is not installed are marked *missing plugin* and are reported in the table.
2. **acquire** (``acquire``): datasets are prepared (the DHF 360-pair list is fetched and checksummed,
   the CUB pair list generated) and every row's model is set up (weights loaded, or downloaded when not
   cached and allowed). Everything that fails is listed in one error.
3. **run**: one ``run_benchmark`` call per dataset with every runnable row, so each unique image is
   decoded and hashed once and SD components are loaded once per process; features go to the shared
   content-addressed cache, so a rerun (or a row re-run after a failure) only reads them back. A row
   that fails is isolated (each row is then run alone against the cache) and reported as *failed*.
"""

from __future__ import annotations

import json
import math
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .distributed import DistContext, init_from_env
from .errors import CorrbenchError, DataError, MissingDataError, UsageError, WeightsError

BASELINE_FORMAT = "corrbench-baseline/1"
DEFAULT_TOLERANCE = 2.0  # PCK points; the paper's SD rows use a random VAE draw (P6), so exact equality is not expected
ALPHA = 0.10
NORMS = ("img", "bbox")


def metric_key(norm: str, alpha: float = ALPHA) -> str:
    """The results.json metric name of PCK@alpha pooled per keypoint (``pck@0.10_img``)."""
    return f"pck@{alpha:.2f}_{norm}"


# --------------------------------------------------------------------------------------------------
# The table spec
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    name: str  # corrbench dataset id
    label: str
    split: str
    protocol: str
    pairs: int  # pairs of the paper protocol (for the time estimate when the list is not present)
    images: int  # distinct images (an upper bound where unknown)


@dataclass(frozen=True)
class Row:
    label: str  # as printed in the paper
    method: str  # corrbench method id
    layers: str  # layers × timesteps, as in the paper's table
    trained: str
    paper: Mapping[str, Mapping[str, float]]  # dataset → norm → PCK@0.1 (%)
    note: str = ""


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    source: str
    datasets: Mapping[str, DatasetSpec]
    rows: tuple[Row, ...]
    metric: Mapping[str, Any]
    deviations: tuple[str, ...] = ()


def _p(si: float, sb: float, ci: float, cb: float) -> dict[str, dict[str, float]]:
    return {"spair": {"img": si, "bbox": sb}, "cub": {"img": ci, "bbox": cb}}


DHF_TABLE = TableSpec(
    name="dhf-table",
    title="Diffusion Hyperfeatures (Luo et al., NeurIPS 2023), main comparison table",
    source="arXiv 2305.14334, main table; numbers as listed in docs/reproduce.md#the-paper-numbers [reported]",
    datasets={
        "spair": DatasetSpec("spair", "SPair-71k", "dhf-test-360",
                             "the DHF authors' 360-pair test list annotations/spair_71k_test-360.json "
                             "(sha256 2f93f0ca…a698; 20 pairs per category, 2,529 keypoints), used as-is", 360, 379),
        "cub": DatasetSpec("cub", "CUB-200-2011", "test",
                           "not published; corrbench default: 360 same-class ordered pairs of distinct test images "
                           "with >= 1 mutually visible part, seeded shuffle (seed 0), uncropped images, "
                           "bbox from bounding_boxes.txt [unverified]", 360, 720),
    },
    rows=(
        Row("DINO", "dino", "1 layer", "no", _p(51.68, 41.04, 72.72, 55.90),
            "dino-vit-features defaults (ViT-S/8, key, block 9, stride 4, binned) [unverified]"),
        Row("DHPF", "dhpf", "34 layers", "yes (by its authors)", _p(55.28, 42.63, 77.30, 61.42),
            "authors' SPair strong-supervision res101 checkpoint (local file), scored with DHF's PCK [unverified]"),
        Row("SD-Layer-4", "sd-layer-4", "1 × 1", "no", _p(58.80, 46.58, 78.43, 61.22),
            "up_blocks[1].resnets[0], clean pass t = −1 [unverified]"),
        Row("SD-Concat-All", "sd-concat-all", "12 × 1", "no", _p(52.12, 41.83, 70.22, 54.05),
            "12 decoder maps of the clean pass, no per-layer normalisation [unverified]"),
        Row("Ours", "dhf", "12 × 11", "yes (SPair train)", _p(72.56, 64.61, 82.29, 69.42),
            "released aggregation_network.pt"),
        Row("Ours-One-Step", "dhf-one-step", "12 × 1", "yes", _p(63.74, 54.69, 76.59, 62.11),
            "released aggregation_network_one-step.pt"),
        Row("SD-Layer-Pruned", "sd-layer-pruned", "1 × 1", "no", _p(57.69, 48.16, 80.67, 67.21),
            "raw map of the argmax mixing-weight slot of the released Ours network [unverified]"),
        Row("Ours-Pruned", "dhf-pruned", "1 × 1", "yes", _p(64.02, 53.74, 79.10, 63.95),
            "that slot through its trained Ours bottleneck [unverified]"),
        Row("Ours-SDv2-1", "dhf-sd21", "12 × 11", "yes", _p(70.74, 64.85, 80.39, 68.04),
            "stabilityai/stable-diffusion-2-1-base, released aggregation_network_sdv2-1.pt"),
    ),
    metric={"name": "pck", "alpha": ALPHA, "norms": list(NORMS), "average": "point",
            "frame": "original target image", "compare": "le",
            "description": "PCK@0.1 in percent, pooled over keypoints, distance <= 0.1·L in original target "
                           "pixels; L = max(W, H) of the image (img) or of the target box (bbox)"},
    deviations=(
        "DHF's PCK frame is its validate() (original target frame); the demo notebooks score in a 224 frame "
        "(P11). corrbench reports the original frame.",
        "The VAE latent is a seeded posterior draw (sd.seed=0), where DHF draws unseeded (P6): repeated DHF runs "
        "differ slightly, corrbench runs do not.",
        "SD-Layer-Pruned / Ours-Pruned are not in the official code: the slot is the argmax of the released Ours "
        "mixing weights (docs/methods.md#pruned-rows); the paper's choice is unknown.",
        "The CUB pair list of the paper is unpublished; corrbench's seeded 360-pair test list is a stand-in "
        "(docs/datasets.md#cub-200-2011), so CUB numbers are comparable only approximately.",
        "DHPF is run with DHF's readout frame and PCK (original frame, pooled per keypoint), not DHPF's own 240 "
        "frame and per-pair average (P15); DINO predicts patch centres at an aspect-kept 224 (dino-vit-features).",
        "Unknowns are config knobs with the defaults of docs/protocol.md#unknowns-and-their-defaults "
        "(SD-Layer-4 block and timestep, "
        "Concat-All normalisation, DINO recipe, DHPF checkpoint); every run logs the resolved values.",
    ),
)
TABLES: dict[str, TableSpec] = {DHF_TABLE.name: DHF_TABLE}


def paper_baseline(table: TableSpec = DHF_TABLE) -> dict[str, Any]:
    """The table as a ``corrbench-baseline/1`` object (what ``benchmarks/baselines/dhf-paper.json`` holds)."""
    return {
        "format": BASELINE_FORMAT,
        "name": table.name,
        "title": table.title,
        "source": table.source,
        "metric": dict(table.metric),
        "datasets": {d.name: {"label": d.label, "split": d.split, "pairs": d.pairs, "protocol": d.protocol}
                     for d in table.datasets.values()},
        "rows": [{"label": r.label, "method": r.method, "layers_x_timesteps": r.layers, "trained": r.trained,
                  "recipe": r.note, "metrics": {ds: {metric_key(n): v for n, v in norms.items()} for ds, norms in r.paper.items()}}
                 for r in table.rows],
    }


def default_baseline_path(name: str) -> Path:
    """``benchmarks/baselines/<name>.json`` of the source checkout this module lives in."""
    return Path(__file__).resolve().parents[1] / "benchmarks" / "baselines" / f"{name}.json"


# --------------------------------------------------------------------------------------------------
# Requirements: weights and data, looked up without downloading
# --------------------------------------------------------------------------------------------------
PRESENT, DOWNLOAD, MISSING, NOT_NEEDED, UNCHECKED = "present", "download", "missing", "not needed", "not checked"


@dataclass
class Requirement:
    kind: str  # weights | data
    what: str
    where: str
    status: str
    fix: str = ""
    rows: list[str] = field(default_factory=list)

    @property
    def blocking(self) -> bool:
        return self.status == MISSING


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _fetchable() -> str:
    """Status of something not cached that corrbench would download itself."""
    return MISSING if _offline() else DOWNLOAD


def _hf_cached(repo: str, candidates: Sequence[str]) -> str | None:
    """Local path of the first of ``candidates`` in the Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # huggingface_hub comes with the sd / dino extras
        return None
    for name in candidates:
        try:
            found = try_to_load_from_cache(repo, name)
        except Exception:  # invalid repo ids and similar: simply not cached
            return None
        if isinstance(found, str):
            return found
    return None


def _file_requirement(what: str, path: str, fix: str) -> Requirement:
    p = Path(path).expanduser()
    return Requirement("weights", what, str(p), PRESENT if p.is_file() else MISSING,
                       "" if p.is_file() else f"no such file; {fix}")


_SD_FILES = {
    "unet": [f"unet/diffusion_pytorch_model{v}.{e}" for v in (".fp16", "") for e in ("safetensors", "bin")],
    "vae": [f"vae/diffusion_pytorch_model{v}.{e}" for v in (".fp16", "") for e in ("safetensors", "bin")],
    "text_encoder": [f"text_encoder/{n}{v}.{e}" for n, e in (("model", "safetensors"), ("pytorch_model", "bin"))
                     for v in (".fp16", "")],
    "tokenizer": ["tokenizer/vocab.json"],
}


def sd_requirement(model: Any, weights: Any) -> Requirement:
    """The Stable Diffusion pipeline a row needs (``sd.model`` + its ``weights`` mode)."""
    from corrbench_sd.configs import architecture
    from corrbench_sd.loading import how_to_get, resolve_source

    what = f"Stable Diffusion {model}"
    try:
        source = resolve_source(str(model))
    except CorrbenchError as exc:
        return Requirement("weights", what, str(model), MISSING, str(exc))
    if source.folder is not None:
        return Requirement("weights", what + (" (architecture only, random weights)" if weights == "random" else ""),
                           str(source.folder), PRESENT)
    if str(weights) == "random":
        arch = architecture(source.hub_id)
        return Requirement("weights", what + " (random weights)", source.hub_id,
                           NOT_NEEDED if arch else MISSING,
                           "" if arch else f"no built-in architecture for {source.hub_id}; pass a folder")
    missing = [c for c, files in _SD_FILES.items() if _hf_cached(source.hub_id, files) is None]
    if not missing:
        return Requirement("weights", what, f"hf://{source.hub_id} (cached)", PRESENT)
    return Requirement("weights", what, f"hf://{source.hub_id}", _fetchable(),
                       f"not in the Hugging Face cache ({', '.join(missing)}); {how_to_get(source)}")


def dhf_requirement(spec: Any, released_file: str) -> Requirement:
    """A DHF aggregation network (``weights``: auto | random | hf://repo/path | PATH)."""
    from corrbench_dhf import weights as w

    spec = str(spec or "auto").strip()
    what = "DHF aggregation network"
    if spec == "random":
        return Requirement("weights", what + " (random, untrained)", "seeded", NOT_NEEDED)
    if spec == "auto" or spec.startswith("hf://"):
        repo, filename = w.HF_REPO, released_file
        if spec.startswith("hf://"):
            parts = spec[len("hf://"):].split("/")
            repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
        found = _hf_cached(repo, [filename])
        if found:
            return Requirement("weights", what, found, PRESENT)
        return Requirement("weights", what, f"hf://{repo}/{filename}", _fetchable(),
                           f"not in the Hugging Face cache; {w.how_to_get(repo, filename)}")
    return _file_requirement(what, spec, "pass --set <row>.weights=PATH, or 'auto' for the released file")


def dino_requirement(model: Any, weights: Any, key: str) -> Requirement:
    from corrbench_dino import models

    weights = str(weights)
    try:
        spec = models.resolve(str(model))
    except CorrbenchError as exc:
        return Requirement("weights", f"ViT {model}", str(model), MISSING, str(exc))
    what = f"ViT {spec.timm_name}"
    if weights == "random":
        return Requirement("weights", what + " (random)", "timm architecture", NOT_NEEDED)
    if weights == "pretrained":
        found = _hf_cached(spec.hf_hub_id, ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"])
        if found:
            return Requirement("weights", what, found, PRESENT)
        return Requirement("weights", what, f"hf://{spec.hf_hub_id}", _fetchable(),
                           f"not in the Hugging Face cache; timm downloads it on first use, or pass "
                           f"--set {key}.weights=PATH")
    return _file_requirement(what, weights, f"pass --set {key}.weights=PATH")


def dhpf_requirements(config: Mapping[str, Any], key: str) -> list[Requirement]:
    from corrbench_dhpf import learner

    out = []
    w = config.get("weights")
    if w in (None, ""):
        out.append(Requirement("weights", "DHPF learner checkpoint", "(not set)", MISSING,
                               f"no local file given; {learner.how_to_get()}"))
    elif str(w) == "random":
        out.append(Requirement("weights", "DHPF learner (random, untrained)", "seeded", NOT_NEEDED))
    else:
        out.append(_file_requirement("DHPF learner checkpoint", str(w), learner.how_to_get()))
    backbone = str(config.get("backbone", "resnet101"))
    bw = str(config.get("backbone_weights", "auto"))
    if bw == "auto":
        bw = "random" if str(w) == "random" else "pretrained"
    if bw == "random":
        out.append(Requirement("weights", f"torchvision {backbone} (random)", "seeded", NOT_NEEDED))
    elif bw == "pretrained":
        import torch
        import torchvision

        enum = {"resnet50": torchvision.models.ResNet50_Weights,
                "resnet101": torchvision.models.ResNet101_Weights}.get(backbone)
        if enum is None:
            out.append(Requirement("weights", f"torchvision {backbone}", backbone, MISSING,
                                   f"{key}.backbone must be resnet50 or resnet101"))
        else:
            url = enum.IMAGENET1K_V1.url
            path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
            out.append(Requirement("weights", f"torchvision {backbone} ImageNet-V1", str(path),
                                   PRESENT if path.is_file() else _fetchable(),
                                   "" if path.is_file() else f"not in the torch hub cache; downloaded from {url}"))
    else:
        out.append(_file_requirement(f"{backbone} backbone weights", bw, f"pass --set {key}.backbone_weights=PATH"))
    return out


def weights_requirements(method: str, cls: type, config: Mapping[str, Any]) -> list[Requirement]:
    """What one row needs, by plugin family (weight-free methods need nothing)."""
    family = cls.__module__.split(".")[0]
    try:
        if family == "corrbench_sd":
            return [sd_requirement(config["model"], config["weights"])]
        if family == "corrbench_dhf":
            return [sd_requirement(config["model"], config.get("sd_weights", "pretrained")),
                    dhf_requirement(config.get("weights"), getattr(cls, "released_file", ""))]
        if family == "corrbench_dino":
            return [dino_requirement(config["model"], config["weights"], method)]
        if family == "corrbench_dhpf":
            return dhpf_requirements(config, method)
        if family in ("corrbench_classic",):
            return []
    except (ImportError, KeyError) as exc:  # a plugin changed its keys or modules: say so, do not guess
        return [Requirement("weights", f"weights of {method}", family, UNCHECKED,
                            f"could not check ({type(exc).__name__}: {exc})")]
    return [Requirement("weights", f"weights of {method}", family, UNCHECKED,
                        "no requirement check for this plugin; its setup runs before the benchmark")]


def data_requirements(ds: Any) -> list[Requirement]:
    """What a dataset instance needs on disk, checked without downloading or generating anything."""
    name, root = ds.name, Path(ds.root)
    how = getattr(ds, "how_to_get", "")
    if name == "synthetic":
        return [Requirement("data", "synthetic dataset", str(root), PRESENT, "generated on first use")]
    marker = {"spair": "JPEGImages", "cub": "images.txt"}.get(name)
    if not root.exists() or (marker and not (root / marker).exists()):
        return [Requirement("data", f"{name} dataset", str(root), MISSING,
                            f"{'no ' + marker + ' in it' if root.exists() else 'folder does not exist'}. {how}".strip())]
    out = [Requirement("data", f"{name} dataset", str(root), PRESENT)]
    if name == "spair":
        from corrbench_datasets.dhf_lists import DHF_LISTS, cache_dirs, list_url

        if ds.split in DHF_LISTS:
            spec = DHF_LISTS[ds.split]
            local = getattr(ds, "pairs_file", None)
            if local is not None:
                out.append(_checked_list(Path(local), spec.sha256, spec.filename))
            else:
                cached = next((d / spec.filename for d in cache_dirs(root) if (d / spec.filename).is_file()), None)
                if cached is not None:
                    out.append(_checked_list(cached, spec.sha256, spec.filename))
                else:
                    out.append(Requirement("data", f"DHF pair list {spec.filename}", list_url(ds.split),
                                           MISSING if _offline() else DOWNLOAD,
                                           "fetched and checksummed on first use; offline, fetch it elsewhere and "
                                           "pass --set spair.pairs=FILE"))
        else:
            layout = root / "Layout" / str(ds.config.get("layout") or "large") / f"{ds.split}.txt"
            if not layout.is_file():
                out.append(Requirement("data", f"SPair split {ds.split}", str(layout), MISSING, "file missing"))
    if name == "cub":
        pairs = getattr(ds, "pairs_file", None)
        if pairs is not None and not Path(pairs).is_file():
            out.append(Requirement("data", "CUB pair list (cub.pairs)", str(pairs), MISSING, "file missing"))
    return out


def _checked_list(path: Path, sha256: str, filename: str) -> Requirement:
    from corrbench.download import sha256_file

    ok = path.is_file() and sha256_file(path) == sha256
    return Requirement("data", f"DHF pair list {filename}", str(path), PRESENT if ok else MISSING,
                       "" if ok else f"missing or not the published file (sha256 {sha256[:12]}…)")


# --------------------------------------------------------------------------------------------------
# Time estimate (order of magnitude; not measured here)
# --------------------------------------------------------------------------------------------------
#: rough seconds per image of feature extraction: (GPU of the 24 GB class, CPU). The SD rows are dominated
#: by UNet calls at 512 px: 50 for the 11-step rows, 1 for the clean-pass rows; the pruned rows run the
#: inversion up to their slot (counted as the full 50).
S_PER_IMAGE = {"dino": (0.05, 1.5), "dhpf": (0.05, 1.5), "sd-layer-4": (0.15, 8.0), "sd-concat-all": (0.2, 8.0),
               "dhf": (3.5, 200.0), "dhf-one-step": (0.2, 8.0), "sd-layer-pruned": (3.0, 200.0),
               "dhf-pruned": (3.0, 200.0), "dhf-sd21": (3.5, 200.0)}
#: rough seconds per pair of readout (224² cosine NN per keypoint; DHPF's RHM is pair-conditioned)
S_PER_PAIR = {"dhpf": (0.1, 3.0)}
S_PER_PAIR_DEFAULT = (0.02, 0.5)


def estimate_seconds(method: str, images: int, pairs: int, device: str) -> float:
    gpu = str(device).startswith("cuda")
    img = S_PER_IMAGE.get(method, (0.5, 10.0))[0 if gpu else 1]
    pair = S_PER_PAIR.get(method, S_PER_PAIR_DEFAULT)[0 if gpu else 1]
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
                    merged[key] = Requirement(req.kind, req.what, req.where, req.status, req.fix, [])
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
            if r.note:
                lines.append(f"     paper recipe: {r.note}")
        lines.append("")
        lines.append("Weights and data:")
        reqs = self.requirements()
        if not reqs:
            lines.append("  (nothing)")
        for req in reqs:
            who = f" (rows: {', '.join(req.rows)})" if req.rows else ""
            lines.append(f"  [{req.status}] {req.kind}: {req.what} -- {req.where}{who}")
            if req.fix and req.status != PRESENT:
                lines.append(f"      {req.fix}")
        lines.append("")
        total = self.total_seconds()
        runnable = sum(rp.available for rp in self.rows)
        lines.append(f"Estimated time: ~{_fmt_duration(total)} on {self.device} for {runnable} of {len(self.rows)} "
                     "rows (rough figures for a 24 GB-class GPU or a desktop CPU, not measurements; rows that "
                     "share one SD inversion count it once; cached features are not counted as saved)")
        lines.append("GPU memory: about 14 GB for the SD-1.5/2.1 rows in fp16 (the paper's notebooks report 13.7 GB; "
                     "its authors used 24 GB Titan RTX cards)")
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
            "rows": [{"label": rp.row.label, "method": rp.row.method, "available": rp.available,
                      "problem": rp.problem or None, "config": rp.config, "overridden": rp.overridden,
                      "estimate_seconds": rp.seconds} for rp in self.rows],
            "requirements": [{"kind": r.kind, "what": r.what, "where": r.where, "status": r.status, "fix": r.fix,
                              "rows": r.rows} for r in self.requirements()],
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


def _count_list(path: Path) -> tuple[int, int] | None:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        images = {e["source_path"] for e in entries} | {e["target_path"] for e in entries}
        return len(entries), len(images)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _scale_to_limit(pairs: int, images: int, limit: int | None) -> tuple[int, int]:
    if limit is None or limit >= pairs:
        return pairs, images
    return limit, min(images, 2 * limit)


def _method_classes(host: Any, names: Sequence[str]) -> dict[str, type]:
    return {n: host.methods.entry(n).load() for n in names}


def _for_other_rows(key: str, value: Any, classes: Mapping[str, type], table: TableSpec,
                    selected: Sequence[str], host: Any, aliases: Mapping[str, str]) -> bool:
    """True when ``key`` fits none of the selected rows but some row of the table left out by ``--rows``."""
    from .config import resolve_overrides

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


def make_plan(table: TableSpec = DHF_TABLE, datasets: str | Sequence[str] | None = None,
              rows: str | Sequence[str] | None = None, data_roots: Any = None, splits: Any = None,
              overrides: Any = None, device: str = "cpu", limit: int | None = None,
              cache_dir: str | os.PathLike | None = None) -> Plan:
    """Resolve rows, configs, requirements and estimates; reads nothing big and downloads nothing."""
    from .config import parse_overrides, resolve_overrides
    from .plugins import get_host
    from .runner import default_cache_dir

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
    aliases = {a: e.name for e in host.methods.entries() for a in e.aliases}

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
        dp.requirements = data_requirements(ds)
        dp.pairs, dp.images = dp.spec.pairs, dp.spec.images
        listed = next((Path(r.where) for r in dp.requirements if r.what.startswith("DHF pair list")
                       and r.status == PRESENT), None)
        if listed is not None and (counts := _count_list(listed)):
            (dp.pairs, dp.images), dp.counted = counts, True
        dp.pairs, dp.images = _scale_to_limit(dp.pairs, dp.images, limit)

    passes: dict[Any, list[RowPlan]] = {}  # rows that share one extraction pass (one SD inversion)
    for rp in row_plans:
        if not rp.available:
            continue
        rp.overridden = dict(method_cfgs[rp.row.method])
        rp.config = {**rp.cls.default_config, **rp.overridden}
        rp.requirements = weights_requirements(rp.row.method, rp.cls, rp.config)
        for dp in ds_plans:
            if not dp.problem:
                rp.seconds[dp.spec.name] = estimate_seconds(rp.row.method, dp.images, dp.pairs, device)
        try:  # making a descriptor loads nothing; a config it refuses is reported when the row runs
            shared = rp.cls(config=rp.overridden, device=device).shared_pass()
        except Exception:
            shared = None
        if shared is not None:
            passes.setdefault(shared, []).append(rp)
    for members in passes.values():
        # the run extracts them together: the pass is counted once, on its most expensive member
        lead = max(members, key=lambda rp: sum(rp.seconds.values()))
        for rp in members:
            if rp is not lead:
                rp.seconds = {name: estimate_seconds(rp.row.method, 0, dp.pairs, device)
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
            if not dp.counted and getattr(ds, "_resolved_list", None) is not None:
                counts = _count_list(Path(ds._resolved_list))
                if counts:
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


# --------------------------------------------------------------------------------------------------
# Run and tabulate
# --------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    plan: Plan
    tolerance: float
    ours: dict[tuple[str, str, str], float]  # (method, dataset, norm) → PCK
    failures: dict[str, str]  # method → reason (whole row)
    dataset_failures: dict[tuple[str, str], str]  # (method, dataset) → reason
    run_dirs: dict[str, str]
    out_dir: Path | None = None
    reporting: bool = True  # False on the non-zero ranks of a distributed run

    def verdict(self, rp: RowPlan) -> str:
        if not rp.available:
            return "missing plugin"
        if rp.row.method in self.failures:
            return "failed"
        deltas = []
        for dp in self.plan.datasets:
            for norm in NORMS:
                ours = self.ours.get((rp.row.method, dp.spec.name, norm))
                paper = rp.row.paper.get(dp.spec.name, {}).get(norm)
                if ours is not None and paper is not None:
                    deltas.append(ours - paper)
        if not deltas:
            return "failed"
        tol = self.tolerance + 1e-9
        if any(d < -tol for d in deltas):
            verdict = "below paper"
        elif any(d > tol for d in deltas):
            verdict = "above paper"
        else:
            verdict = "reproduced"
        if any((rp.row.method, dp.spec.name) in self.dataset_failures for dp in self.plan.datasets):
            verdict += " (partial)"
        return verdict

    def note(self, rp: RowPlan) -> str:
        if not rp.available:
            return rp.problem
        if rp.row.method in self.failures:
            return self.failures[rp.row.method]
        parts = [f"{d}: {msg}" for (m, d), msg in self.dataset_failures.items() if m == rp.row.method]
        return "; ".join(parts)

    # -- the table in three formats ------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        out = []
        for rp in self.plan.rows:
            rec: dict[str, Any] = {"row": rp.row.label, "method": rp.row.method, "layers_x_timesteps": rp.row.layers}
            for dp in self.plan.datasets:
                for norm in NORMS:
                    paper = rp.row.paper.get(dp.spec.name, {}).get(norm)
                    ours = self.ours.get((rp.row.method, dp.spec.name, norm))
                    rec[f"{dp.spec.name}_{norm}_paper"] = paper
                    rec[f"{dp.spec.name}_{norm}_ours"] = ours
                    rec[f"{dp.spec.name}_{norm}_delta"] = None if ours is None or paper is None else ours - paper
            rec["verdict"] = self.verdict(rp)
            rec["note"] = self.note(rp)
            out.append(rec)
        return out

    def header_lines(self) -> list[str]:
        p = self.plan
        lines = [f"{p.table.title}: paper vs corrbench",
                 f"PCK@{ALPHA:g} in %, pooled over keypoints, original target frame, distance <= 0.1·L. "
                 f"Cells: paper / ours (Δ = ours − paper). Verdict tolerance: ±{self.tolerance:g} points.",
                 f"Device {p.device}."]
        for dp in p.datasets:
            lines.append(f"{dp.spec.label}: split {dp.split}"
                         + ("" if dp.split == dp.spec.split else f" (NOT the paper's {dp.spec.split})")
                         + f", {dp.pairs} pairs. Protocol: {dp.spec.protocol}.")
        if not p.paper_protocol():
            changes = []
            if p.overrides:
                changes.append("overrides " + ", ".join(f"{k}={v}" for k, v in p.overrides.items()))
            if p.limit:
                changes.append(f"--limit {p.limit}")
            changes += [f"{dp.spec.name} split {dp.split}" for dp in p.datasets if dp.split != dp.spec.split]
            lines.append("WARNING: not the paper protocol (" + "; ".join(changes) + "): the numbers are not "
                         "comparable with the paper and the verdicts are only mechanical.")
        return lines

    def markdown(self) -> str:
        p = self.plan
        cols = ["Method", "Layers × steps"] + [f"{dp.spec.label} {n}" for dp in p.datasets for n in NORMS] \
            + ["Verdict", "Note"]
        lines = [f"# {self.header_lines()[0]}", ""] + [f"{line}  " for line in self.header_lines()[1:]] + [""]
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(cols) - 4) + ["---"] * 2) + "|")
        for rec in self.records():
            cells = [rec["row"] + f" (`{rec['method']}`)", rec["layers_x_timesteps"]]
            for dp in p.datasets:
                for n in NORMS:
                    cells.append(_cell(rec[f"{dp.spec.name}_{n}_paper"], rec[f"{dp.spec.name}_{n}_ours"]))
            cells += [rec["verdict"], _md_escape(rec["note"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("Known deviations and unknowns (docs/protocol.md#deviations-from-the-official-code):")
        lines += [f"- {d}" for d in p.table.deviations]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        import pandas as pd

        return pd.DataFrame(self.records()).to_csv(index=False, float_format="%.2f")

    def latex(self) -> str:
        p = self.plan
        n_metric = len(p.datasets) * len(NORMS)
        spec = "ll" + "rrr" * n_metric + "l"
        out = [f"% {self.header_lines()[0]} (generated by corrbench reproduce {p.table.name})",
               *[f"% {_latex_escape(line)}" for line in self.header_lines()[1:]],
               f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
        head1 = ["", ""] + [f"\\multicolumn{{{3 * len(NORMS)}}}{{c}}{{{_latex_escape(dp.spec.label)}}}"
                            for dp in p.datasets] + [""]
        head2 = ["", ""] + [f"\\multicolumn{{3}}{{c}}{{PCK@0.1 {n}}}" for _ in p.datasets for n in NORMS] + [""]
        head3 = ["Method", "Layers $\\times$ steps"] + ["paper", "ours", "$\\Delta$"] * n_metric + ["Verdict"]
        out += [" & ".join(head1) + " \\\\", " & ".join(head2) + " \\\\", "\\midrule", " & ".join(head3) + " \\\\",
                "\\midrule"]
        for rec in self.records():
            cells = [_latex_escape(rec["row"]), _latex_escape(rec["layers_x_timesteps"]).replace("×", "$\\times$")]
            for dp in p.datasets:
                for n in NORMS:
                    for part in ("paper", "ours", "delta"):
                        v = rec[f"{dp.spec.name}_{n}_{part}"]
                        cells.append("--" if v is None else (f"{v:+.2f}" if part == "delta" else f"{v:.2f}"))
            cells.append(_latex_escape(rec["verdict"]))
            out.append(" & ".join(cells) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(out) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.plan.table.name, "tolerance": self.tolerance, "plan": self.plan.as_dict(),
                "rows": self.records(), "run_dirs": self.run_dirs, "failures": self.failures,
                "dataset_failures": {f"{m}/{d}": v for (m, d), v in self.dataset_failures.items()}}

    def write(self, out_dir: Path) -> None:
        from .cache import atomic_write_bytes

        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_dir / "table.md", self.markdown().encode())
        atomic_write_bytes(out_dir / "table.csv", self.csv().encode())
        atomic_write_bytes(out_dir / "table.tex", self.latex().encode())
        atomic_write_bytes(out_dir / "reproduce.json",
                           (json.dumps(self.as_dict(), indent=2, default=str) + "\n").encode())
        self.out_dir = out_dir


def _cell(paper: float | None, ours: float | None) -> str:
    p = "–" if paper is None else f"{paper:.2f}"
    if ours is None:
        return f"{p} / –"
    d = "" if paper is None else f" ({ours - paper:+.2f})"
    return f"{p} / {ours:.2f}{d}"


def _md_escape(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")[:300]


_LATEX_SPECIAL = {"&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_", "{": "\\{", "}": "\\}",
                  "~": "\\textasciitilde{}", "^": "\\textasciicircum{}", "\\": "\\textbackslash{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


def run_table(plan: Plan, *, data_roots: Any = None, batch_size: int = 8, out_dir: str | os.PathLike | None = None,
              tolerance: float = DEFAULT_TOLERANCE, progress: bool = True,
              echo: Callable[[str], None] | None = None) -> Outcome:
    """Acquire, run every runnable row per dataset, and write the table (when ``out_dir`` is given)."""
    if tolerance < 0 or not math.isfinite(tolerance):
        raise UsageError(f"--tolerance must be a non-negative number of PCK points, got {tolerance}")
    roots = parse_assignments(data_roots, "--data-root")
    check_blocking(plan)
    # under torchrun: join the group once, so every run_benchmark below shares it; rank 0 writes the table
    ctx, _ = init_from_env(plan.device)
    try:
        outcome = _run_table(plan, roots, batch_size, out_dir, tolerance, progress, echo, ctx)
    finally:
        ctx.close()
    return outcome


def _run_table(plan: Plan, roots: dict[str, Any], batch_size: int, out_dir: str | os.PathLike | None,
               tolerance: float, progress: bool, echo: Callable[[str], None] | None, ctx: DistContext) -> Outcome:
    from .runner import run_benchmark

    echo = echo if ctx.is_main else None
    failures: dict[str, str] = {}
    acquire(plan, roots, failures, echo)

    by_method = {rp.row.method: rp for rp in plan.rows}
    out = Path(out_dir) if out_dir else None
    ours: dict[tuple[str, str, str], float] = {}
    dataset_failures: dict[tuple[str, str], str] = {}
    run_dirs: dict[str, str] = {}
    for dp in plan.datasets:
        methods = {rp.row.method: rp.cls for rp in plan.rows if rp.available and rp.row.method not in failures}
        if not methods:
            continue
        kwargs = dict(dataset=dp.spec.name, split=dp.split, data_root=roots.get(dp.spec.name), limit=plan.limit,
                      device=plan.device, batch_size=batch_size, cache_dir=plan.cache_dir, progress=progress)

        def overrides_for(names: Iterable[str]) -> dict[str, Any]:
            """The plan's resolved configs as method-qualified keys, plus the dataset's config."""
            over = {f"{n}.{k}": v for n in names for k, v in by_method[n].overridden.items()}
            over.update({f"{dp.spec.name}.{k}": v for k, v in dp.config.items()})
            return over

        if echo:
            echo(f"{dp.spec.name}: running {', '.join(methods)}")
        good = list(methods)
        result = None
        try:
            result = run_benchmark(good, overrides=overrides_for(good),
                                   out_dir=out / dp.spec.name if out else None, **kwargs)
        except Exception as first:  # isolate the failing row(s): run each alone (features come from the cache)
            if echo:
                echo(f"{dp.spec.name}: a row failed ({_first_line(first)}); running rows one by one")
            good = []
            for name in methods:
                try:
                    run_benchmark([name], overrides=overrides_for([name]), out_dir=None, **kwargs)
                    good.append(name)
                except Exception as exc:
                    dataset_failures[(name, dp.spec.name)] = _first_line(exc)
                    if echo:
                        echo(f"{dp.spec.name}: {name} failed: {_first_line(exc)}")
                        if os.environ.get("CORRBENCH_DEBUG"):
                            echo(traceback.format_exc())
            if good:
                result = run_benchmark(good, overrides=overrides_for(good),
                                       out_dir=out / dp.spec.name if out else None, **kwargs)
        if result is None or not result.results:  # nothing ran, or a non-zero rank (rank 0 scores)
            continue
        if result.out_dir is not None:
            run_dirs[dp.spec.name] = str(result.out_dir)
        dp.pairs, dp.images, dp.counted = result.results["dataset"]["n_pairs"], result.results["dataset"]["n_images"], True
        for method, entry in result.results["methods"].items():
            for norm in NORMS:
                value = entry["metrics"].get(metric_key(norm))
                if value is not None:
                    ours[(method, dp.spec.name, norm)] = float(value)
    # a row that failed on every dataset is a failed row
    for rp in plan.rows:
        m = rp.row.method
        if rp.available and m not in failures and plan.datasets and \
                all((m, dp.spec.name) in dataset_failures for dp in plan.datasets):
            failures[m] = "; ".join(f"{d}: {v}" for (mm, d), v in dataset_failures.items() if mm == m)
    outcome = Outcome(plan, tolerance, ours, failures, dataset_failures, run_dirs, reporting=ctx.is_main)
    if out is not None and ctx.is_main:
        outcome.write(out)
    return outcome


def write_paper_baseline(path: str | os.PathLike | None = None) -> Path:
    """(Re)write ``benchmarks/baselines/dhf-paper.json`` from :data:`DHF_TABLE`."""
    from .cache import atomic_write_bytes

    target = Path(path) if path else default_baseline_path("dhf-paper")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, (json.dumps(paper_baseline(), indent=2, ensure_ascii=False) + "\n").encode())
    return target


if __name__ == "__main__":  # python -m corrbench.reproduce [PATH]: rewrite the paper baseline file
    import sys

    print(write_paper_baseline(sys.argv[1] if len(sys.argv) > 1 else None))
