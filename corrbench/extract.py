"""``corrbench extract``: describe image files with one method and write a safetensors file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .config import parse_overrides, resolve_overrides
from .errors import DataError, UsageError
from .fsmode import check_writable_dir
from .images import load_rgb, to_batch
from .distributed import DistContext, init_from_env
from .plugins import get_host
from .stream import SafetensorsWriter

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def gather_images(paths: Sequence[Path]) -> list[tuple[str, Path]]:
    """``(tensor name, file)`` for every image given or found under a given folder (recursively).

    A file's tensor is named by its stem; an image found in a folder by its path relative to that
    folder without the suffix (``aeroplane/2008_000033`` in a category layout), so images of several
    categories can share a stem.
    """
    found: list[tuple[str, Path]] = []
    for p in map(Path, paths):
        if p.is_dir():
            for q in sorted(p.rglob("*")):
                if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES and not q.name.startswith("."):
                    found.append((q.relative_to(p).with_suffix("").as_posix(), q))
        elif p.is_file():
            found.append((p.stem, p))
        else:
            raise DataError(f"image {p} does not exist")
    if not found:
        raise UsageError(f"no images found in {', '.join(map(str, paths))}")
    names = [n for n, _ in found]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"several images would get the tensor name(s) {', '.join(dupes[:5])}; "
                         "tensors are named by stem (files) or relative path (folders)")
    return found


def extract_to_file(method: str, images: Sequence[Path], out_file: Path, overrides: Any = None, raw: bool = False,
                    device: str = "auto", batch_size: int = 8, progress: bool = True) -> list[str]:
    from .devices import resolve_device

    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    ctx, device = init_from_env(resolve_device(device))
    try:
        return _extract(ctx, method, images, out_file, overrides, raw, device, batch_size, progress)
    finally:
        ctx.close()


def _image_size(path: Path) -> tuple[int, int]:
    """(W, H) from the header only; a file that is not an image is reported as the decoder would."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"image {path} is unreadable or truncated: {exc}") from exc


def _extract(ctx: DistContext, method: str, images: Sequence[Path], out_file: Path, overrides: Any, raw: bool,
             device: str, batch_size: int, progress: bool) -> list[str]:
    from tqdm.auto import tqdm

    host = get_host()
    entry = host.methods.entry(method)
    cls = entry.load()
    aliases = host.methods.aliases()
    cfgs, _ = resolve_overrides(parse_overrides(overrides), {entry.name: cls}, None, aliases)
    out_file = Path(out_file)
    if out_file.is_dir():
        raise UsageError(f"--out {out_file} is a folder; give the name of the .safetensors file to write")
    check_writable_dir(out_file.parent, f"--out {out_file}: folder")  # before any extraction, not after it
    descriptor = cls(config=cfgs[entry.name], device=device)
    prep = descriptor.preprocessing()
    named = gather_images(images)
    # group by load size from the headers alone; each batch is decoded when it is described
    groups: dict[tuple[int, int], list[tuple[str, Path]]] = {}
    for name, p in ctx.shard(named):  # under torchrun each rank describes its share; rank 0 writes the file
        groups.setdefault(prep.load_hw(_image_size(p)), []).append((name, p))

    def batches():
        for group in groups.values():
            for i in range(0, len(group), batch_size):
                chunk = group[i:i + batch_size]
                batch = to_batch([load_rgb(p) for _, p in chunk], prep).to(device)
                out = descriptor.describe_raw(batch) if raw else descriptor.describe(batch)
                yield from ((name, t.detach().cpu().contiguous()) for (name, _), t in zip(chunk, out))

    meta = {"method": entry.name, "raw": str(raw).lower(),
            "config": json.dumps(descriptor.config, sort_keys=True, default=str),
            "preprocess": json.dumps(prep.as_dict(), sort_keys=True)}
    bar = tqdm(total=sum(len(g) for g in groups.values()), desc=f"{entry.name}: extract", unit="img",
               disable=not (progress and ctx.is_main) or None, leave=False)
    try:
        if not ctx.active:  # one process: stream every tensor to disk as it is computed
            with SafetensorsWriter(out_file, {**meta, "weights": str(descriptor.weights_identity())}) as writer:
                for name, t in batches():
                    writer.add(name, t)
                    bar.update(1)
            return [name for name, _ in named]
        tensors = {}
        for name, t in batches():
            tensors[name] = t
            bar.update(1)
    finally:
        bar.close()
    shares = ctx.all_gather(tensors)
    if not ctx.is_main:
        return []
    merged = {name: share[name] for name, _ in named for share in shares if name in share}
    with SafetensorsWriter(out_file, {**meta, "weights": str(descriptor.weights_identity())}) as writer:
        for name, t in merged.items():
            writer.add(name, t)
    return list(merged)
