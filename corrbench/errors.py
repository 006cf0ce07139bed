"""Exceptions that the CLI shows as one clear message (no traceback unless ``--debug``)."""

from __future__ import annotations

import errno


class CorrbenchError(Exception):
    """A user-facing error: bad input, missing data or weights, unknown names."""

    exit_code = 1


class UsageError(CorrbenchError):
    """The command line asked for something that does not exist or does not fit together."""

    exit_code = 2


class UnknownNameError(UsageError, KeyError):
    """A method or dataset name that no installed plugin registers."""

    kind = "name"

    def __init__(self, name: str, known: list[str]):
        self.name = name
        self.known = sorted(known)
        super().__init__(name)

    def __str__(self) -> str:
        known = ", ".join(self.known) or "(none registered)"
        return f"unknown {self.kind} {self.name!r}; known {self.kind}s: {known}"


class UnknownMethodError(UnknownNameError):
    kind = "method"


class UnknownDatasetError(UnknownNameError):
    kind = "dataset"


class UnknownTableError(UnknownNameError):
    kind = "table"


class UnknownReadoutError(UnknownNameError):
    kind = "readout"


class DataError(CorrbenchError):
    """A dataset file that is missing, unreadable or malformed. The message names the file."""


class MissingDataError(DataError):
    """A dataset root that does not exist or lacks required parts; says how to get it."""


class WeightsError(CorrbenchError):
    """Model weights that cannot be found or loaded; says how to get them."""


class DescriptorOutputError(CorrbenchError):
    """A descriptor returned something that breaks the contract (shape, dtype, NaN)."""


_OS_ERROR_HINTS = {
    errno.ENOSPC: "free space there, or point --cache-dir / --out at another disk",
    errno.EDQUOT: "free space there, or point --cache-dir / --out at another disk",
    errno.EFBIG: "the file-size limit (ulimit -f) is too small for the feature cache",
    errno.EROFS: "choose a writable folder",
    errno.EACCES: "check the folder's permissions, or choose another",
    errno.EPERM: "check the folder's permissions, or choose another",
}


def describe_os_error(exc: OSError) -> str:
    """One line for a failure of the machine rather than of the input: a full disk, a read-only or
    forbidden folder. Names the file and says what to do where there is something to do."""
    what = exc.strerror or str(exc)
    where = f": {exc.filename}" if exc.filename else ""
    hint = _OS_ERROR_HINTS.get(exc.errno)
    return f"{what}{where}" + (f" ({hint})" if hint else "")
