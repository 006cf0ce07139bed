"""Where corrbench keeps things by default: one home for the user cache folder."""

from __future__ import annotations

from pathlib import Path


def user_cache_root() -> Path:
    """The platform's user cache folder for corrbench (``~/.cache/corrbench`` on Linux).

    Datasets default to ``datasets/<name>`` under it (``$CORRBENCH_DATA`` overrides), features to
    ``features/`` (``$CORRBENCH_CACHE`` overrides).
    """
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("corrbench"))
