"""Test isolation: datasets, feature cache and Hugging Face caches live in a per-session temp dir,
progress bars are off, and nothing reaches the network."""

from __future__ import annotations

import os


from corrbench.testing.fixtures import isolated_corrbench_dirs, synthetic_dataset  # noqa: F401


def pytest_configure(config):
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
