"""Write a safetensors file one tensor at a time, holding at most one tensor in memory.

``safetensors.torch.save`` needs every tensor at once; ``corrbench extract --raw`` on a folder of
images would then hold gigabytes (an SD-1.5 raw stack is about 1.9 GB per image). The format is
simple enough to stream: an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and byte range, then the bytes. Tensors are appended to a temporary data file as they
come; :meth:`close` writes header + data into the final file and renames it into place, so a reader
never sees a half-written file and an interrupted extraction leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch

from .fsmode import apply_umask

_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


class SafetensorsWriter:
    """``with SafetensorsWriter(path, metadata) as w: w.add(name, tensor)``; readable by ``safetensors``."""

    def __init__(self, path: str | os.PathLike, metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}
        self.entries: dict[str, dict] = {}
        self.offset = 0
        fd, self._data_name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".data")
        self._data = os.fdopen(fd, "wb")

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.entries:
            raise ValueError(f"tensor {name!r} written twice")
        t = tensor.detach().to("cpu").contiguous()
        if t.dtype not in _DTYPES:
            raise TypeError(f"dtype {t.dtype} cannot be stored in safetensors")
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        self._data.write(data)
        self.entries[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                              "data_offsets": [self.offset, self.offset + len(data)]}
        self.offset += len(data)

    def close(self) -> None:
        self._data.close()
        header = dict(sorted(self.entries.items()))
        if self.metadata:
            header = {"__metadata__": self.metadata, **header}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the header is padded so that the data starts 8-byte aligned
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, open(self._data_name, "rb") as data:
                out.write(struct.pack("<Q", len(blob)))
                out.write(blob)
                shutil.copyfileobj(data, out, 16 << 20)
                out.flush()
                os.fsync(out.fileno())
            apply_umask(tmp)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        finally:
            Path(self._data_name).unlink(missing_ok=True)

    def abort(self) -> None:
        self._data.close()
        Path(self._data_name).unlink(missing_ok=True)

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False
