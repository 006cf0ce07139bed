"""``corrbench extract``: describe image files with one method and write a safetensors file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save

from .cache import atomic_write_bytes
from .config import parse_overrides, resolve_overrides
from .errors import DataError, UsageError
from .fsmode import check_writable_dir
from .images import load_rgb, to_batch
from .distributed import DistContext, init_from_env
from .plugins import get_host

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def gather_images(paths: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            found.append(p)
        else:
            raise DataError(f"image {p} does not exist")
    if not found:
        raise UsageError(f"no images found in {', '.join(map(str, paths))}")
    stems = [p.stem for p in found]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise UsageError(f"several images share the stem(s) {', '.join(dupes)}; tensors are named by stem")
    return found


def extract_to_file(method: str, images: Sequence[Path], out_file: Path, overrides: Any = None, raw: bool = False,
                    device: str = "cpu", batch_size: int = 8) -> list[str]:
    ctx, device = init_from_env(device)
    try:
        return _extract(ctx, method, images, out_file, overrides, raw, device, batch_size)
    finally:
        ctx.close()


def _extract(ctx: DistContext, method: str, images: Sequence[Path], out_file: Path, overrides: Any, raw: bool,
             device: str, batch_size: int) -> list[str]:
    host = get_host()
    entry = host.methods.entry(method)
    cls = entry.load()
    aliases = {a: e.name for e in host.methods.entries() for a in e.aliases}
    cfgs, _ = resolve_overrides(parse_overrides(overrides), {entry.name: cls}, None, aliases)
    if Path(out_file).is_dir():
        raise UsageError(f"--out {out_file} is a folder; give the name of the .safetensors file to write")
    check_writable_dir(Path(out_file).parent, f"--out {out_file}: folder")  # before any extraction, not after it
    descriptor = cls(config=cfgs[entry.name], device=device)
    prep = descriptor.preprocessing()
    paths = gather_images(images)
    tensors: dict[str, torch.Tensor] = {}
    groups: dict[tuple[int, int], list[tuple[Path, Any]]] = {}
    for p in ctx.shard(paths):  # under torchrun each rank describes its share; rank 0 writes the file
        img = load_rgb(p)
        groups.setdefault(prep.load_hw(img.size), []).append((p, img))
    for group in groups.values():
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            batch = to_batch([img for _, img in chunk], prep).to(device)
            if raw:
                out = descriptor.describe_raw(batch)
            else:
                out = descriptor.describe(batch)
            for (p, _), t in zip(chunk, out):
                tensors[p.stem] = t.detach().cpu().contiguous()
    shares = ctx.all_gather(tensors)
    if not ctx.is_main:
        return []
    tensors = {p.stem: share[p.stem] for p in paths for share in shares if p.stem in share}
    meta = {"method": entry.name, "raw": str(raw).lower(),
            "config": json.dumps(descriptor.config, sort_keys=True, default=str),
            "preprocess": json.dumps(prep.as_dict(), sort_keys=True),
            "weights": descriptor.weights_identity()}
    out_file = Path(out_file)
    atomic_write_bytes(out_file, save(tensors, metadata=meta))
    return list(tensors)
