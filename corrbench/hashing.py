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
