"""Test isolation: datasets, feature cache and Hugging Face caches live in a per-session temp dir,
progress bars are off, and nothing reaches the network."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


@pytest.fixture(scope="session", autouse=True)
def _isolated_dirs(tmp_path_factory):
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
    """The embedded synthetic dataset, generated once per session (test split)."""
    from corrbench.plugins import get_host

    cls = get_host().datasets.get("synthetic")
    ds = cls()
    ds.prepare()
    return ds
