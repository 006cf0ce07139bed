"""File modes of what corrbench writes: those of a plain ``open``/``mkdir`` under the user's umask.

``tempfile.mkstemp``/``mkdtemp`` create 0600/0700 entries whatever the umask. Renamed into place as
they are, results, cache entries and datasets in a shared folder would be unreadable to the rest of
the group, so every temporary file or folder that is renamed into place goes through
:func:`apply_umask` first. :func:`atomic_write_bytes` writes a file whole or not at all; it lives here, free of
torch, so that reading and reporting on runs import none.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from .errors import CorrbenchError, UsageError

_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # elsewhere the umask can only be read by setting it (process-wide): put it straight back
    with _LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike, *, directory: bool = False) -> None:
    """chmod ``path`` to 0666 (0777 for a folder) less the umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def check_writable_dir(folder: str | os.PathLike, what: str, error: type[CorrbenchError] = UsageError) -> None:
    """Raise ``error`` unless ``folder`` is, or can be made, a writable folder; creates nothing.

    Called before expensive work, so that a bad output or cache folder fails in a second, not after
    an hour of feature extraction.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    where = f"{what} {folder}" if existing == folder else f"{what} {folder}: {existing}"
    if not existing.is_dir():
        raise error(f"{where} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise error(f"{where} is not a writable folder")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (temp file, fsync, rename), with umask modes; a refused
    write removes its temp file and raises an ``OSError`` that names ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.chmod(tmp, 0o666 & ~current_umask())  # not mkstemp's 0600: a shared cache must stay readable
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # a failed write() names no file: name the one that was being written
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["apply_umask", "atomic_write_bytes", "check_writable_dir", "current_umask"]
