"""File hashing shared by the download manager, the cache key and every plugin's weights identity."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 1 << 20

_memo: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """The sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_file_memo(path: str | os.PathLike) -> str:
    """:func:`sha256_file` memoised per (resolved path, size, mtime): big checkpoints are hashed once per process."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _memo:
        _memo[key] = sha256_file(p)
    return _memo[key]


def state_dict_digest(modules) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every parameter and buffer of ``modules``.

    ``modules`` maps a name to an ``nn.Module`` (or is one module). Tensors are read on the CPU in
    their own dtype, so the digest depends on the weights only, not on the device they sit on.
    """
    import torch

    if isinstance(modules, torch.nn.Module):
        modules = {"": modules}
    h = hashlib.sha256()
    for prefix, module in sorted(modules.items()):
        for key, tensor in sorted(module.state_dict(keep_vars=False).items()):
            t = tensor.detach().to("cpu").contiguous().reshape(-1)  # a 0-d tensor cannot be viewed as bytes
            h.update(f"{prefix}.{key}|{t.dtype}|{tuple(tensor.shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def source_digest(root: str | os.PathLike) -> str:
    """sha256 over the relative paths and bytes of every ``.py`` file under ``root`` (or of one file).

    Used in cache keys for code that is not a released install (an editable checkout, a local
    plugin file): editing it must not reuse features that the old code computed.
    """
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root.parent if root.is_file() else root)).encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()
