"""Reading local weight files with ``torch.load(weights_only=True)`` and naming what is wrong with them.

``torch.load`` reports a foreign or damaged file in its own terms ("KeyError: 105", "OSError: [Errno
22] Invalid argument", "PytorchStreamReader failed ..."). :func:`load_weights_only` looks at the
file itself when loading fails and raises one :class:`~corrbench.errors.WeightsError` that names the
file and says what it is: empty, a truncated ``torch.save`` archive, a pickle that holds code or
objects weights-only loading refuses, a safetensors / NumPy file, or not a checkpoint at all.
"""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

from .errors import WeightsError

_ZIP_MAGIC = b"PK\x03\x04"


def _refusal_reason(exc: BaseException) -> str:
    """The one informative sentence of torch's long weights-only refusal message."""
    text = str(exc)
    m = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\s*\n|Check the documentation|$)", text, re.S)
    reason = " ".join((m.group(1) if m else "").split())
    return reason or "objects that are not plain tensors and containers"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def diagnose(path: Path, exc: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` raised ``exc``, in the user's terms."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as err:
        return f"cannot be read: {err.strerror or err}"
    if size == 0:
        return "is empty (0 bytes)"
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return (f"is truncated or corrupt: a torch.save archive of {size} bytes without its zip directory "
                    f"(an interrupted download or copy?)")
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            return f"is a corrupt zip archive ({_first_line(err)})"
        if not any(n.endswith("data.pkl") for n in names):
            return "is a zip archive but not a torch.save file (it has no data.pkl)"
        if bad is not None:
            return f"is a corrupt torch.save archive (member {bad} fails its CRC check)"
    elif head.startswith(b"\x93NUMPY"):
        return "is a NumPy .npy file, not a PyTorch checkpoint"
    elif len(head) >= 9 and int.from_bytes(head[:8], "little") < size and head[8:9] == b"{":
        return "looks like a safetensors file: give it the .safetensors suffix"
    elif head[:1] != b"\x80":  # every pickle of protocol 2 or later starts with PROTO (0x80)
        return (f"is not a PyTorch checkpoint: neither a torch.save zip archive nor a pickle "
                f"(it starts with {head[:8]!r})")
    name = type(exc).__name__
    if name == "UnpicklingError" and "Weights only load failed" in str(exc):
        return (f"holds Python objects that weights-only loading refuses to unpickle ({_refusal_reason(exc)}); "
                f"corrbench never runs code from a weights file")
    if isinstance(exc, (EOFError, OSError)) or "truncated" in str(exc).lower() or "EOF" in str(exc):
        return f"is truncated or corrupt ({size} bytes; {_first_line(exc)})"
    return f"could not be read as a PyTorch checkpoint ({_first_line(exc)})"


def load_weights_only(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; any failure is one WeightsError naming the file."""
    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are noise to the user
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip, EOF, OS errors, KeyError on a foreign opcode: all the same here
        raise WeightsError(f"{path} {diagnose(path, exc)}") from exc


__all__ = ["diagnose", "load_weights_only"]
