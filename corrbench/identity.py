"""What cached features and predictions depend on: the cache key's ingredients.

A cache entry may be reused only when everything that determines it is unchanged. That is

* the method: name, resolved config (runtime-only keys left out), preprocessing, cached dtype;
* its weights: :meth:`Descriptor.weights_identity` — a file hash, a resolved hub snapshot, a digest of
  the state dicts of its modules. A method that cannot say (``None``) is never served from the cache;
* its code: a released install is identified by its distribution's version; code that is not a
  release — an editable checkout (``pip install -e``), a plugin module outside any distribution — by
  a digest of its source files, so editing it without bumping a version cannot reuse what the old code
  computed. The core's own code (preprocessing, normalisation) is part of the key the same way;
* for predictions, also the readout: its name, version and settings (``Readout.identity``).
"""

from __future__ import annotations

import functools
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__


@functools.lru_cache(maxsize=None)
def _distributions_by_package() -> dict[str, list[str]]:
    return metadata.packages_distributions()  # scans every installed distribution: once per process


def _is_editable(dist: metadata.Distribution) -> bool:
    """PEP 610: an editable install records ``dir_info.editable`` in ``direct_url.json``."""
    try:
        text = dist.read_text("direct_url.json")
        return bool(text and json.loads(text).get("dir_info", {}).get("editable"))
    except (OSError, ValueError, AttributeError):
        return False


@functools.lru_cache(maxsize=None)
def _source_root(top: str) -> Path | None:
    module = sys.modules.get(top)
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file)
    return path.parent if path.name == "__init__.py" else path


@functools.lru_cache(maxsize=None)
def package_code_identity(top: str) -> str:
    """``<version>`` for a released install of package ``top``, else ``<version or local>+src.<digest>``."""
    from .hashing import source_digest

    version, released = "local", False
    try:
        for name in _distributions_by_package().get(top, []):
            dist = metadata.distribution(name)
            version, released = dist.version, not _is_editable(dist)
            break
    except Exception:  # metadata lookups never decide whether a run works
        pass
    if released:
        return version
    root = _source_root(top)
    if root is None:  # defined in __main__, a notebook, exec'd code: no source to hash
        return f"{version}+src.unknown"
    return f"{version}+src.{source_digest(root)[:16]}"


def plugin_code_identity(cls: type) -> str:
    """The code identity of the package that defines ``cls`` (see :func:`package_code_identity`)."""
    top = cls.__module__.split(".")[0]
    if top not in sys.modules:
        return "unknown"
    return package_code_identity(top)


def core_code_identity() -> str:
    """corrbench's own version, with a source digest when it is not a released install."""
    ident = package_code_identity("corrbench")
    return ident if ident != "local+src.unknown" else __version__


def method_identity(descriptor, weights: str | None = None) -> dict[str, Any]:
    """What the cached features of ``descriptor`` depend on (its runtime keys excluded).

    ``weights`` is the descriptor's weights identity when the caller has already asked for it (it can
    hash a checkpoint or resolve a hub snapshot); ``None`` asks the descriptor.
    """
    runtime = set(descriptor.runtime_keys)
    return {
        "method": descriptor.name,
        "config": {k: v for k, v in descriptor.config.items() if k not in runtime},
        "method_version": descriptor.version,
        "plugin_version": plugin_code_identity(type(descriptor)),
        "core_version": core_code_identity(),
        "weights": descriptor.weights_identity() if weights is None else weights,
        "preprocess": descriptor.input_preprocessing().as_dict(),
        "cache_dtype": descriptor.cache_dtype,
    }


__all__ = ["core_code_identity", "method_identity", "package_code_identity", "plugin_code_identity"]
