"""Exceptions that the CLI shows as one clear message (no traceback unless ``--debug``)."""

from __future__ import annotations


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
