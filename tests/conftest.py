"""Test isolation: datasets, feature cache and Hugging Face caches live in a per-session temp dir,
progress bars are off, and nothing reaches the network.

Disk: end-to-end tests write feature caches of tens to hundreds of MB, and CI machines can be short of
disk. A passing test's temp dir is removed when it ends (``tmp_path_retention_policy = "failed"`` in
pyproject.toml); a module's shared temp dirs (``tmp_path_factory`` in module-scoped fixtures) are
removed when the module ends. Whatever belongs to a failing test or module is kept for inspection."""

from __future__ import annotations

import os
import shutil

import pytest

from corrbench.testing.fixtures import isolated_corrbench_dirs, synthetic_dataset  # noqa: F401

_modules_with_failures: set[str] = set()


def pytest_configure(config):
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    # `corrbench run` writes its HTML report by default (about a second each); the tests of that default
    # (tests/test_report.py) remove this from their commands' environment
    os.environ["CORRBENCH_REPORT"] = "0"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        _modules_with_failures.add(item.nodeid.split("::", 1)[0])
    return report


@pytest.fixture(scope="module", autouse=True)
def _free_module_temp_dirs(request, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    if request.node.nodeid.split("::", 1)[0] in _modules_with_failures:
        return
    for path in set(base.iterdir()) - before:
        shutil.rmtree(path, ignore_errors=True)
