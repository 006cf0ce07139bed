"""One flat tensor per image holding maps of several resolutions (the cached form of HPF/DHPF features).

DHPF's hyperimage depends on the *pair* (its gates look at both images), so what can be computed and
cached once per image is everything before the gates: the 34 per-layer maps at their native
resolutions (60², 30², 15², 8² at 240²) and the layers' global average pools. Upsampling each map to
60×60 first would take 4,072 × 3,600 floats; kept native they take 1.3 M (5.4 MB in float32), and the
gates keep full precision. The runner caches B×C×h×w tensors, so the parts are concatenated into a
1×1×N "map"; the layout follows from the backbone, the load size and the layer list, and
:func:`unpack` checks the length before splitting.
"""

from __future__ import annotations

import math

import torch

from corrbench.errors import DataError


def pack(parts: list[torch.Tensor]) -> torch.Tensor:
    """[B×… tensors] → B×1×1×N."""
    B = parts[0].shape[0]
    flat = torch.cat([p.reshape(B, -1) for p in parts], dim=1)
    return flat.view(B, 1, 1, -1)


def unpack(packed: torch.Tensor, shapes: list[tuple[int, ...]], what: str = "map") -> list[torch.Tensor]:
    """A packed per-image tensor (any shape with N elements) → tensors of ``shapes``."""
    flat = packed.reshape(-1)
    sizes = [math.prod(s) for s in shapes]
    if flat.numel() != sum(sizes):
        raise DataError(f"cached {what} has {flat.numel()} values but the layout for this configuration needs "
                        f"{sum(sizes)}; clear the feature cache entry or rerun with --no-cache")
    return [chunk.view(s) for chunk, s in zip(torch.split(flat, sizes), shapes)]
