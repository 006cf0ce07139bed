"""Image decoding and resizing, and the coordinate maps original ⇄ load frame.

Coordinates follow the DHF protocol (docs/protocol.md#coordinate-maps): a point maps to the load frame by
``x · W_load / W`` (no half-pixel offset), and a predicted load-frame pixel maps back by ``x · W / W_load``.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .api import Preprocess
from .errors import DataError

#: Refuse images above this many pixels (decompression bombs); real datasets stay far below it.
MAX_PIXELS = 8192 * 8192

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    sha256: str
    size: tuple[int, int]  # (W, H)


def inspect_image(path: Path) -> ImageRecord:
    """Hash and fully decode one image once, so a corrupt file is reported before any work is done."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"image {path} is missing") from None
    except OSError as exc:
        raise DataError(f"image {path} cannot be read: {exc}") from exc
    image = _decode(path)
    return ImageRecord(path, hashlib.sha256(data).hexdigest(), image.size)


def _decode(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise DataError(f"image {path} is {im.width}×{im.height}, above the {MAX_PIXELS}-pixel limit")
                im.load()
                return im.convert("RGB")  # grey, CMYK, palette and RGBA all become RGB
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"image {path} is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"image {path} is unreadable or truncated: {exc}") from exc


def load_rgb(path: Path) -> Image.Image:
    return _decode(Path(path))


def to_input(image: Image.Image, prep: Preprocess) -> np.ndarray:
    """Resize per ``prep`` and return a C-contiguous 3×H×W float32 array in [0, 1]."""
    H, W = prep.load_hw(image.size)
    if prep.resize == "pad_square":
        left, top, w, h = prep.content_box(image.size)
        canvas = Image.new("RGB", (W, H))  # black, as sd-dino and GeoAware-SC pad
        canvas.paste(image.resize((w, h), _RESAMPLE[prep.resample]) if (w, h) != image.size else image, (left, top))
        resized = canvas
    else:
        resized = image.resize((W, H), _RESAMPLE[prep.resample]) if (W, H) != image.size else image
    # the transpose alone is a channels-last view; stacking such views keeps channels-last strides,
    # which some CPU kernels (GroupNorm in float32) handle with far worse precision
    return np.ascontiguousarray(np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0)


def to_batch(images: "list[Image.Image]", prep: Preprocess):
    """Images of one load size → a contiguous NCHW float32 tensor in [0, 1] (what descriptors receive)."""
    import torch

    return torch.from_numpy(np.stack([to_input(im, prep) for im in images])).contiguous()


def _frame(size_wh: tuple[int, int], load_hw: tuple[int, int], prep: Preprocess | None):
    """(scale, offset) with load = original · scale + offset (padding only offsets ``pad_square``)."""
    W, H = size_wh
    if prep is not None and prep.resize == "pad_square":
        left, top, w, h = prep.content_box(size_wh)
        return np.array([w / W, h / H]), np.array([left, top], dtype=np.float64)
    Hl, Wl = load_hw
    return np.array([Wl / W, Hl / H]), np.zeros(2)


def to_load(points: np.ndarray, size_wh: tuple[int, int], load_hw: tuple[int, int],
            prep: Preprocess | None = None) -> np.ndarray:
    """Original-image (x, y) → load-frame (x, y); ``prep`` is needed only for ``pad_square``."""
    scale, offset = _frame(size_wh, load_hw, prep)
    return np.asarray(points, dtype=np.float64) * scale + offset if offset.any() else \
        np.asarray(points, dtype=np.float64) * scale


def to_original(points: np.ndarray, size_wh: tuple[int, int], load_hw: tuple[int, int],
                prep: Preprocess | None = None) -> np.ndarray:
    """Load-frame (x, y) → original-image (x, y): the inverse of :func:`to_load`."""
    if prep is None or prep.resize != "pad_square":  # the plain scale, in the arithmetic it always had
        W, H = size_wh
        Hl, Wl = load_hw
        return np.asarray(points, dtype=np.float64) * np.array([W / Wl, H / Hl])
    scale, offset = _frame(size_wh, load_hw, prep)
    return (np.asarray(points, dtype=np.float64) - offset) / scale
