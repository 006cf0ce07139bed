"""Shared setup of the pytest-benchmark suites in benchmarks/.

- Files named ``bench_*.py`` are collected (pytest's default pattern is ``test_*.py``).
- Datasets, the feature cache and Hugging Face caches live in a per-session temp dir; nothing
  reaches the network; progress bars are off.
- ``--benchmark-timer time.process_time`` measures CPU time instead of wall time: on a shared,
  oversubscribed machine wall time mostly measures waiting for a core (use it with
  ``--torch-threads 1``, where CPU time is the work done).
- ``--torch-threads N`` sets torch's intra-op threads for the session (0, the default, keeps
  torch's choice). On a busy 2-core machine two threads can spin against each other and make
  small kernels several times slower; the value used is recorded in the machine info.
- The ``ratio`` fixture measures a naive reference beside the optimised path a test benchmarked
  and records ``naive_s``, ``fast_s`` and ``ratio`` in ``extra_info``; every ratio of the session is
  printed at the end of the run.

Run: ``tox -e benchmark`` or ``python -m pytest benchmarks --benchmark-enable --benchmark-only``.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from corrbench.testing.fixtures import isolated_corrbench_dirs, synthetic_dataset  # noqa: F401

_RATIOS: list[dict[str, Any]] = []
#: the clock of the naive side of a ratio: the same as pytest-benchmark's (``--benchmark-timer``)
_TIMER: Callable[[], float] = time.perf_counter


def pytest_addoption(parser):
    parser.addoption("--torch-threads", type=int, default=0,
                     help="torch intra-op threads for the benchmarks (0: torch's default)")


def pytest_collect_file(file_path: Path, parent):
    # a file named on the command line is collected by pytest itself: do not collect it twice
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_configure(config):
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    global _TIMER
    try:
        from pytest_benchmark.utils import load_timer

        _TIMER = load_timer(str(config.getoption("benchmark_timer"))).target
    except (ImportError, ValueError, AttributeError):
        pass
    threads = config.getoption("--torch-threads", default=0)
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pytest_benchmark_update_machine_info(config, machine_info):
    import torch

    machine_info["cpu_model"] = cpu_model()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["load_average_at_start"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    if torch.cuda.is_available():
        machine_info["gpu"] = torch.cuda.get_device_name(0)


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory):
    """A tiny random-weight SD pipeline folder (``corrbench.testing.sd.make_tiny_sd``)."""
    pytest.importorskip("diffusers")
    from corrbench.testing.sd import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("bench-sd") / "sd")


def best_time(fn: Callable[[], Any], rounds: int) -> float:
    """Minimum time of ``rounds`` calls (the statistic least disturbed by other processes), on the
    benchmark timer (wall clock by default; ``--benchmark-timer time.process_time`` for CPU time)."""
    best = float("inf")
    for _ in range(max(1, rounds)):
        t0 = _TIMER()
        fn()
        best = min(best, _TIMER() - t0)
    return best


@pytest.fixture
def ratio(request):
    """``ratio(benchmark, naive_fn, rounds=3, per=1, unit="call")`` after ``benchmark(...)`` ran the fast path.

    Both sides are compared on their minimum over rounds; ``per`` items (pairs, keypoints, images)
    per call turn times into rates. Returns the ratio naive/fast (None when benchmarking is disabled).
    """

    def record(benchmark, naive: Callable[[], Any], *, rounds: int = 3, per: float = 1, unit: str = "call",
               fast_s: float | None = None, label: str | None = None) -> float | None:
        if fast_s is None:
            stats = getattr(benchmark, "stats", None)
            if benchmark.disabled or stats is None:
                return None
            fast_s = stats.stats.min
        naive_s = best_time(naive, rounds)
        value = naive_s / fast_s
        benchmark.extra_info.update({"fast_s": fast_s, "naive_s": naive_s, "ratio": value,
                                     f"fast_{unit}_per_s": per / fast_s, f"naive_{unit}_per_s": per / naive_s})
        _RATIOS.append({"test": label or request.node.name, "fast_s": fast_s, "naive_s": naive_s, "ratio": value,
                        "unit": unit, "per": per})
        return value

    return record


def pytest_terminal_summary(terminalreporter):
    if not _RATIOS:
        return
    tr = terminalreporter
    tr.section("optimised / naive ratios (minimum times)")
    for r in _RATIOS:
        rate = f"{r['per'] / r['fast_s']:.4g} vs {r['per'] / r['naive_s']:.4g} {r['unit']}/s"
        tr.write_line(f"{r['test']:<55} fast {r['fast_s'] * 1e3:10.2f} ms  naive {r['naive_s'] * 1e3:10.2f} ms  "
                      f"ratio {r['ratio']:7.2f}x  ({rate})")
