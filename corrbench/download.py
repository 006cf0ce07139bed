"""Generic downloads and archive installation, with no knowledge of any dataset.

- :func:`fetch` streams a URL to a file with a progress bar, resumes an interrupted download with an
  HTTP ``Range`` request (the partial file is ``<dest>.part``), verifies a sha256 when one is known,
  and only then renames the file into place: ``dest`` existing means the download is complete.
- :func:`safe_extract` unpacks a tar or zip archive after checking **every** member first: no absolute
  paths, no ``..``, no link that points outside the destination, no device files or FIFOs. A bad
  archive is rejected before anything is written.
- :func:`install_archive` extracts into a hidden temporary folder next to the target and renames the
  result into place, so an interrupted run never leaves a half dataset that looks whole.

Errors are :class:`corrbench.errors.DataError` naming the URL or file.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from http.client import HTTPException
from pathlib import Path
from typing import Callable

from .hashing import sha256_file  # noqa: F401  (re-exported: plugins import it from here)
from .errors import DataError
from .fsmode import apply_umask

CHUNK = 1 << 20
USER_AGENT = "corrbench-downloader"


# ------------------------------------------------------------------------------------------
# Hashing
# ------------------------------------------------------------------------------------------
class ChecksumError(DataError):
    """A downloaded or local file whose sha256 is not the expected one."""


def verify_sha256(path: str | os.PathLike, expected: str, *, what: str = "") -> str:
    got = sha256_file(path)
    if got.lower() != expected.lower():
        raise ChecksumError(f"{what or path}: sha256 mismatch: expected {expected.lower()}, got {got}")
    return got


# ------------------------------------------------------------------------------------------
# Downloading
# ------------------------------------------------------------------------------------------
_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_TOTAL = re.compile(r"bytes\s+\*/(\d+)")


def _progress(total: int | None, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=not enabled, file=sys.stderr, leave=False)


def fetch(url: str, dest: str | os.PathLike, *, sha256: str | None = None, progress: bool = True,
          timeout: float = 60.0, retries: int = 3, chunk_size: int = CHUNK,
          opener: Callable[..., object] | None = None) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    An existing ``dest`` whose sha256 matches (or any existing ``dest`` when no sha256 is given) is
    returned as is. Otherwise bytes go to ``dest.part``; a partial file left by an earlier run or a
    dropped connection is continued with ``Range: bytes=<size>-``. A server that ignores ``Range``
    (status 200) restarts the file from zero. A checksum mismatch deletes the partial file and raises
    :class:`ChecksumError`; network errors are retried ``retries`` times, resuming each time.
    """
    from filelock import FileLock

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with FileLock(str(dest.with_name(dest.name + ".lock"))):  # two processes must not write one .part
        if dest.exists():
            if sha256 is None:
                return dest
            try:
                verify_sha256(dest, sha256)
                return dest
            except ChecksumError:
                dest.unlink()  # a stale or corrupted copy: fetch again
        last_error: BaseException | None = None
        for attempt in range(retries + 1):
            try:
                complete = _fetch_once(url, part, progress=progress, timeout=timeout, chunk_size=chunk_size,
                                       opener=opener or urllib.request.urlopen)
            except (urllib.error.URLError, HTTPException, OSError) as exc:
                if isinstance(exc, urllib.error.HTTPError) and exc.code not in (408, 429, 500, 502, 503, 504):
                    raise DataError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
                last_error = exc
                if attempt < retries:
                    time.sleep(min(2.0 ** attempt * 0.2, 5.0))
                continue
            if complete:
                break
            last_error = DataError("connection closed before the end of the file")
        else:
            size = part.stat().st_size if part.exists() else 0
            if part.exists() and size == 0:
                part.unlink()  # nothing worth resuming
            kept = f"{size} bytes kept in {part}, run again to resume" if size else "nothing was kept"
            raise DataError(f"{url}: download failed after {retries + 1} attempts ({last_error}); {kept}") \
                from last_error
        if sha256 is not None:
            try:
                verify_sha256(part, sha256, what=url)
            except ChecksumError:
                part.unlink()  # never keep (or resume from) bytes known to be wrong
                raise
        os.replace(part, dest)
    return dest


def _fetch_once(url: str, part: Path, *, progress: bool, timeout: float, chunk_size: int, opener) -> bool:
    """One request; appends to ``part``. Returns True when the file is complete."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = opener(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: either complete or the file changed
            m = _TOTAL.search(exc.headers.get("Content-Range", "") or "")
            if m and int(m.group(1)) == offset:
                return True
            part.unlink()
            return False
        raise
    with response:
        status = getattr(response, "status", 200)
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if offset and status == 206:
            m = _RANGE.search(response.headers.get("Content-Range", "") or "")
            if not m or int(m.group(1)) != offset:
                raise DataError(f"{url}: server answered a resume request with the wrong range "
                                f"{response.headers.get('Content-Range')!r}")
            total = int(m.group(3)) if m.group(3) != "*" else None
            mode = "ab"
        else:  # 200: a fresh download, or a server that ignores Range (start over)
            offset, total, mode = 0, length, "wb"
        written = offset
        with open(part, mode) as out, _progress(total, offset, Path(url).name or url, progress) as bar:
            while block := response.read(chunk_size):
                out.write(block)
                written += len(block)
                bar.update(len(block))
    if total is not None and written < total:
        return False
    if total is not None and written > total:
        part.unlink()
        raise DataError(f"{url}: received {written} bytes but the server announced {total}")
    return True


# ------------------------------------------------------------------------------------------
# Safe extraction
# ------------------------------------------------------------------------------------------
class UnsafeArchiveError(DataError):
    """An archive member that would land outside the destination or is not a plain file/folder/link."""


def _clean_member_path(name: str, archive: Path) -> str:
    """Normalised relative POSIX path of a member; rejects absolute paths and ``..``."""
    raw = name.replace("\\", "/")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..'")
    return "/".join(parts)


def _check_link(name: str, target: str, archive: Path, *, hard: bool) -> None:
    target = target.replace("\\", "/")
    if target.startswith("/") or re.match(r"^[A-Za-z]:", target):
        raise UnsafeArchiveError(f"{archive}: link {name!r} points to the absolute path {target!r}")
    # a symlink resolves relative to its own folder; a hard link names another member
    joined = target if hard else posixpath.join(posixpath.dirname(name), target)
    resolved = posixpath.normpath(joined)
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(f"{archive}: link {name!r} -> {target!r} leaves the extraction folder")


def check_tar(tf: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = tf.getmembers()
    for m in members:
        name = _clean_member_path(m.name, archive)
        if m.issym():
            _check_link(name, m.linkname, archive, hard=False)
        elif m.islnk():
            _check_link(_clean_member_path(m.linkname, archive), m.linkname, archive, hard=True)
        elif m.ischr() or m.isblk() or m.isfifo():
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device file or FIFO")
        elif not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} has an unsupported type {m.type!r}")
    return members


def _zip_is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def check_zip(zf: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    for info in infos:
        name = _clean_member_path(info.filename, archive)
        mode = info.external_attr >> 16
        if _zip_is_symlink(info):
            _check_link(name, zf.read(info).decode("utf-8", "replace"), archive, hard=False)
        elif mode and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a device file, FIFO or socket")
    return infos


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a tar (any compression) or zip archive into ``dest`` after checking every member."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = check_zip(zf, archive)
                for info in infos:
                    rel = _clean_member_path(info.filename, archive)
                    if not rel:
                        continue
                    out = dest / rel
                    if _zip_is_symlink(info):
                        out.parent.mkdir(parents=True, exist_ok=True)
                        os.symlink(zf.read(info).decode("utf-8"), out)
                    elif info.is_dir():
                        out.mkdir(parents=True, exist_ok=True)
                    else:
                        _reject_link_parents(out, dest, archive, info.filename)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        with zf.open(info) as src, open(out, "wb") as dst:
                            shutil.copyfileobj(src, dst, CHUNK)
            return dest
        with tarfile.open(archive, "r:*") as tf:
            members = check_tar(tf, archive)
            # the "data" filter re-checks paths and links and drops setuid bits and ownership
            tf.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        if isinstance(exc, tarfile.FilterError):
            raise UnsafeArchiveError(f"{archive}: {exc}") from exc
        raise DataError(f"{archive}: cannot extract: {exc}") from exc
    return dest


def _reject_link_parents(out: Path, dest: Path, archive: Path, name: str) -> None:
    """Writing through a symlink created earlier in the same zip must still stay inside ``dest``."""
    real_dest = os.path.realpath(dest)
    real_parent = os.path.realpath(out.parent)
    if os.path.commonpath([real_dest, real_parent]) != real_dest:
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside the extraction folder")


def install_archive(archive: str | os.PathLike, target: str | os.PathLike, *, inner: str | None = None) -> Path:
    """Extract ``archive`` and rename its folder ``inner`` (or its whole content) to ``target``.

    Extraction happens in a hidden ``.<target>.partial-*`` folder beside ``target``; the rename is
    atomic on one file system, so ``target`` exists only once everything is in it. Left-over partial
    folders from interrupted runs are removed first. ``target`` must not exist.
    """
    archive, target = Path(archive), Path(target)
    if target.exists():
        raise DataError(f"{target} already exists; remove it first to reinstall")
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        safe_extract(archive, tmp)
        src = tmp / inner if inner else tmp
        if inner and not src.is_dir():
            found = ", ".join(sorted(p.name for p in tmp.iterdir())) or "nothing"
            raise DataError(f"{archive}: expected a top-level folder {inner!r}, found {found}")
        apply_umask(src, directory=True)  # not mkdtemp's 0700: a shared data folder must stay readable
        os.rename(src, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
