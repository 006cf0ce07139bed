"""Synthetic transfer (docs/methods.md#generation): generate image pairs and match them with hyperfeatures.

Two images per prompt from different noise (DHF's batch of 2), 50-step DDIM with classifier-free
guidance; the features of the *conditional* pass stream into the network trained on real-image
inversion (no retraining), slots in inversion order (pitfall P9: generation t = 0, 80, …, 980 against
inversion −1, 60, …, 960). Per prompt the folder gets both images, both descriptor maps
(safetensors), and a correspondence picture: for the given source points their nearest neighbours,
or else the top-k mutual nearest neighbours.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from corrbench.errors import DataError, UsageError

#: DHF's generation seed (a torch.Generator seeded with it; corrbench draws the noise on the CPU)
DEFAULT_SEED = 829304518
DEFAULT_GUIDANCE = 7.5
#: corrbench's default negative prompt, in the spirit of DHF's long list in configs/synthetic.yaml
#: (which starts "poorly drawn, ugly, tiling" and ends "cut off"); pass --negative-prompt for another
DEFAULT_NEGATIVE_PROMPT = ("poorly drawn, ugly, tiling, out of frame, disfigured, deformed, blurry, bad anatomy, "
                           "watermark, signature, cut off")
GENERATION_METHODS = ("dhf", "dhf-sd21")


@dataclass
class PromptSpec:
    prompt: str
    source_points: np.ndarray | None = None  # N×2 (x, y) in generated-image pixels


def read_prompts(path: str | os.PathLike) -> list[PromptSpec]:
    """``.txt``: one prompt per line (``#`` comments); ``.json``: a list of strings or of
    ``{"prompt": ..., "source_points": [[x, y], ...]}`` objects (or ``{"prompts": [...]}``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    specs: list[PromptSpec] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON: {exc}") from exc
        if isinstance(data, dict):
            data = data.get("prompts", data)
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a list of prompts")
        for n, item in enumerate(data):
            if isinstance(item, str):
                specs.append(PromptSpec(item))
            elif isinstance(item, dict) and isinstance(item.get("prompt"), str):
                pts = item.get("source_points")
                if pts is not None:
                    try:
                        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
                    except (TypeError, ValueError) as exc:
                        raise DataError(f"{path}: prompt {n} source_points is not a list of [x, y]") from exc
                specs.append(PromptSpec(item["prompt"], pts))
            else:
                raise DataError(f"{path}: prompt {n} is neither a string nor an object with a 'prompt' string")
    else:
        specs = [PromptSpec(line.strip()) for line in text.splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
    if not specs:
        raise DataError(f"{path} holds no prompts")
    return specs


# -- matching on the descriptor maps -------------------------------------------------------------------------
def cell_centres(cells: np.ndarray, resolution: int, image_size: int) -> np.ndarray:
    """Flat cell indices of an R×R map → (x, y) pixel centres in the S×S image (align_corners=False)."""
    cells = np.asarray(cells, dtype=np.int64)
    scale = image_size / resolution
    return np.stack([(cells % resolution + 0.5) * scale - 0.5, (cells // resolution + 0.5) * scale - 0.5], axis=1)


def mutual_nearest_neighbours(source_map, target_map, top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells (i in source, j in target) that are each other's cosine nearest neighbour, best ``top_k`` first."""
    import torch
    import torch.nn.functional as F

    s = F.normalize(source_map.flatten(1).T.float(), dim=1)
    t = F.normalize(target_map.flatten(1).T.float(), dim=1)
    sim = s @ t.T
    fwd = sim.argmax(dim=1)
    bwd = sim.argmax(dim=0)
    src = torch.arange(sim.shape[0])
    mutual = bwd[fwd] == src
    i, j = src[mutual], fwd[mutual]
    score = sim[i, j]
    order = torch.argsort(score, descending=True)[:top_k]
    return i[order].numpy(), j[order].numpy(), score[order].numpy()


def transfer_points(source_map, target_map, points: np.ndarray, image_size: int) -> np.ndarray:
    """Nearest-neighbour transfer of image-pixel points with corrbench's paper readout at the image size."""
    import torch

    from corrbench.api import FeatureGrid
    from corrbench.readout import nn_transfer

    hw = (image_size, image_size)
    grid = FeatureGrid.spanning(hw, tuple(source_map.shape[-2:]))
    return nn_transfer(source_map, target_map, grid, grid, hw, hw, torch.from_numpy(points)).numpy()


def draw_correspondences(images: Sequence[np.ndarray], source_pts: np.ndarray, target_pts: np.ndarray,
                         out_file: Path, title: str) -> None:
    from .plots import _figure, _keypoint_colours

    fig = _figure(10, 5.3)
    axes = [fig.add_subplot(1, 2, k + 1) for k in range(2)]
    colours = _keypoint_colours(len(source_pts))
    for ax, img, pts in zip(axes, images, (source_pts, target_pts)):
        ax.imshow(img)
        ax.set_axis_off()
        if len(pts):
            ax.scatter(pts[:, 0], pts[:, 1], s=50, c=colours, edgecolors="white", linewidths=1.0)
    from matplotlib.patches import ConnectionPatch

    for (xs, ys), (xt, yt), c in zip(source_pts, target_pts, colours):
        fig.add_artist(ConnectionPatch((xs, ys), (xt, yt), "data", "data", axesA=axes[0], axesB=axes[1],
                                       color=c, linewidth=0.8, alpha=0.8))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_file)


# -- the command ------------------------------------------------------------------------------------------
def generate(prompts_file: str | os.PathLike, out_dir: str | os.PathLike, *, method: str = "dhf",
             seed: int = DEFAULT_SEED, guidance: float = DEFAULT_GUIDANCE,
             negative_prompt: str = DEFAULT_NEGATIVE_PROMPT, overrides: Any = None, device: str = "cpu",
             top_k: int = 20, progress: bool = True) -> dict[str, Any]:
    """Generate, describe and match; returns (and writes as ``generation.json``) what was made."""
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from corrbench.config import parse_overrides, resolve_overrides
    from corrbench.plugins import get_host

    from .network import StreamingAggregator

    specs = read_prompts(prompts_file)
    host = get_host()
    entry = host.methods.entry(method)
    if entry.name not in GENERATION_METHODS:
        raise UsageError(f"generate --method {method!r}: only {', '.join(GENERATION_METHODS)} aggregate several "
                         "generation timesteps (DHF's synthetic demo refuses the one-step network too)")
    cls = entry.load()
    aliases = host.methods.aliases()
    cfgs, _ = resolve_overrides(parse_overrides(overrides), {entry.name: cls}, None, aliases)
    descriptor = cls(config=cfgs[entry.name], device=device)
    descriptor.ensure_ready()
    extractor, network = descriptor.extractor, descriptor.network
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for n, spec in enumerate(tqdm(specs, desc="generate", unit="prompt", disable=not progress or None)):
        agg = StreamingAggregator(network)
        with torch.inference_mode():
            images = extractor.generate([spec.prompt, spec.prompt], negative_prompt=negative_prompt,
                                        guidance=float(guidance), seed=int(seed) + n,
                                        save_indices=descriptor.indices, layers=descriptor.layers, consume=agg)
            maps = agg.result().float().cpu()
        arrays = [(img.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8) for img in images]
        size = arrays[0].shape[0]
        stem = f"{n:03d}"
        from PIL import Image

        for side, arr in zip("ab", arrays):
            Image.fromarray(arr).save(out / f"{stem}_{side}.png")
        meta = {"prompt": spec.prompt, "negative_prompt": negative_prompt, "guidance": str(guidance),
                "seed": str(int(seed) + n), "method": entry.name, "weights": descriptor.weights_identity()}
        save_file({"a": maps[0].contiguous(), "b": maps[1].contiguous()}, str(out / f"{stem}_descriptors.safetensors"),
                  metadata=meta)
        if spec.source_points is not None and len(spec.source_points):
            src = spec.source_points
            tgt = transfer_points(maps[0], maps[1], src, size)
            how = "nearest neighbour of the given source points"
            scores = None
        else:
            i, j, s = mutual_nearest_neighbours(maps[0], maps[1], top_k)
            R = maps.shape[-1]
            src, tgt = cell_centres(i, R, size), cell_centres(j, R, size)
            how = f"top-{top_k} mutual nearest neighbours"
            scores = s.tolist()
        draw_correspondences(arrays, src, tgt, out / f"{stem}_matches.png", f"{spec.prompt!r} · {entry.name} · {how}")
        records.append({"prompt": spec.prompt, "seed": int(seed) + n, "images": [f"{stem}_a.png", f"{stem}_b.png"],
                        "descriptors": f"{stem}_descriptors.safetensors", "matches": f"{stem}_matches.png",
                        "matching": how, "source_points": np.asarray(src).tolist(),
                        "target_points": np.asarray(tgt).tolist(), "similarity": scores})
    summary = {"method": entry.name, "config": descriptor.config, "weights": descriptor.weights_identity(),
               "guidance": float(guidance), "negative_prompt": negative_prompt, "base_seed": int(seed),
               "save_indices": list(descriptor.indices),
               "generation_timesteps": [_generation_t(k, int(descriptor.config["num_steps"])) for k in descriptor.indices],
               "note": "features of the conditional pass; slots in inversion order (pitfall P9)",
               "prompts": records}
    (out / "generation.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _generation_t(index: int, num_steps: int) -> int:
    from .slots import generation_timestep

    return generation_timestep(index, num_steps)
