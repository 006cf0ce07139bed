"""pytest fixtures shared by corrbench's test and benchmark suites (and usable by plugin authors).

Import them into a ``conftest.py``::

    from corrbench.testing.fixtures import isolated_corrbench_dirs, synthetic_dataset  # noqa: F401
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def isolated_corrbench_dirs(tmp_path_factory):
    """Datasets and the feature cache live in a per-session temp dir (``CORRBENCH_DATA``, ``CORRBENCH_CACHE``)."""
    base = tmp_path_factory.mktemp("corrbench-home")
    saved = {k: os.environ.get(k) for k in ("CORRBENCH_DATA", "CORRBENCH_CACHE")}
    os.environ["CORRBENCH_DATA"] = str(base / "data")
    os.environ["CORRBENCH_CACHE"] = str(base / "cache")
    yield base
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def synthetic_dataset():
    """The embedded synthetic dataset (test split), generated once per session."""
    from corrbench.plugins import get_host

    ds = get_host().datasets.get("synthetic")()
    ds.prepare()
    return ds
