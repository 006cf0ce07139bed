"""``--device auto|cpu|cuda|cuda:N``: one rule for every command and the Python API."""

from __future__ import annotations

from .errors import UsageError


def resolve_device(device: str | None) -> str:
    """``auto`` (and None) → ``cuda`` when a GPU is visible, else ``cpu``; anything else is checked."""
    import torch

    device = (device or "auto").strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine")
        return device
    raise UsageError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
