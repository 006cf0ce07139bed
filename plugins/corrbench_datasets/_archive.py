"""Download a dataset archive and install it as the dataset root (shared by ``spair`` and ``cub``)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from corrbench.fsmode import atomic_write_bytes  # noqa: F401  (re-exported for the dataset modules)
from corrbench.download import fetch, install_archive, sha256_file


def user_cache() -> Path:
    """corrbench's cache folder for small downloaded files (``$CORRBENCH_CACHE`` overrides)."""
    env = os.environ.get("CORRBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    from corrbench.paths import user_cache_root

    return user_cache_root()


def writable_dir(*candidates: Path) -> Path:
    """The first candidate folder that exists or can be created and written to."""
    last: OSError | None = None
    for d in candidates:
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            return d
        except OSError as exc:
            last = exc
    raise OSError(f"none of {', '.join(map(str, candidates))} is writable: {last}")


def download_archive_dataset(*, url: str, sha256: str | None, target: Path, inner: str,
                             keep_archive: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fetch ``url`` (resumable), extract its folder ``inner`` safely and rename it to ``target``.

    Does nothing when ``target`` already exists. The archive is kept beside the target in
    ``.corrbench-downloads/`` while incomplete (so the next run resumes) and deleted after a successful
    install unless ``keep_archive``. A manifest with the URL and the archive's sha256 is written to
    ``<target>/.corrbench/download.json``.
    """
    target = Path(target)
    if target.exists():
        return {"status": "present", "root": str(target)}
    downloads = target.parent / ".corrbench-downloads"
    name = Path(urlparse(url).path).name or "archive"
    archive = fetch(url, downloads / name, sha256=sha256, progress=progress)
    digest = sha256 or sha256_file(archive)
    install_archive(archive, target, inner=inner)
    manifest = {"url": url, "archive": name, "sha256": digest, "sha256_verified": sha256 is not None,
                "installed": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_bytes(target / ".corrbench" / "download.json", json.dumps(manifest, indent=2).encode())
    if not keep_archive:
        archive.unlink()
        archive.with_name(archive.name + ".lock").unlink(missing_ok=True)
        try:
            downloads.rmdir()
        except OSError:
            pass
    if sha256 is None:
        print(f"note: no published sha256 for {name}; recorded {digest} in "
              f"{target / '.corrbench' / 'download.json'}", file=sys.stderr)
    return {"status": "installed", "root": str(target), **manifest}
