"""Exit statuses of every command, as the shell sees them from the installed console script.

0 success, 1 a failed check, a data/weights problem or a refused write, 2 a usage error, 130 interrupted.
Each case runs ``corrbench`` (the script pip installed beside this Python) or ``python -m corrbench`` in a
subprocess, in a scratch folder, with the dataset and feature cache in temp folders and no network.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CORRBENCH = Path(sys.executable).parent / "corrbench"
SCRIPT = [str(CORRBENCH)]
MODULE = [sys.executable, "-m", "corrbench"]


@pytest.fixture(scope="module")
def home(tmp_path_factory, synthetic_dataset):
    """Scratch cwd, a private feature cache, and the session's (already generated) synthetic data."""
    if not CORRBENCH.is_file():
        pytest.skip(f"the corrbench console script is not installed beside {sys.executable}")
    base = tmp_path_factory.mktemp("exit-codes")
    (base / "cwd").mkdir()
    env = {**os.environ, "CORRBENCH_CACHE": str(base / "cache"), "CORRBENCH_DATA": os.environ["CORRBENCH_DATA"],
           "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    return base, env


def corrbench(home, *args, via=SCRIPT, env_extra=None, **kw) -> subprocess.CompletedProcess:
    base, env = home
    return subprocess.run([*via, *map(str, args)], cwd=base / "cwd", env={**env, **(env_extra or {})},
                          capture_output=True, text=True, timeout=900, **kw)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr lines other than the runner's progress notes ('<method>: N images extracted ...')."""
    return [line for line in proc.stderr.splitlines() if line.strip() and "images extracted" not in line]


def assert_fails(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    """Status ``code``, no traceback, and each needle on stderr (click's usage errors take three lines)."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    """Status ``code`` and exactly one line on stderr (beside progress notes), holding each needle."""
    assert_fails(proc, code)
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def baseline_file(path: Path, cells: dict[str, float], method: str = "dsift") -> Path:
    """A ``corrbench-baseline`` file (the format ``compare`` reads, see corrbench/compare.py)."""
    from corrbench.compare import BASELINE_FORMAT

    path.write_text(json.dumps({"format": BASELINE_FORMAT, "datasets": {"synthetic": {"split": "test"}},
                                "rows": [{"method": method, "metrics": {"synthetic": cells}}]}))
    return path


@pytest.fixture(scope="module")
def finished_run(home):
    out = home[0] / "run"
    proc = corrbench(home, "run", "--methods", "dsift", "--limit", "2", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


# ---------------------------------------------------------------------------------------------
# run, list, plugins, info, report, extract
# ---------------------------------------------------------------------------------------------
def test_run(home, finished_run):
    assert (finished_run / "results.json").is_file()
    assert_fails(corrbench(home, "run", "--no-such-option"), 2, "--no-such-option")
    assert_one_line_error(corrbench(home, "run", "--methods", "nope"), 2, "unknown method 'nope'")
    missing = home[0] / "no-spair"
    assert_one_line_error(corrbench(home, "run", "--dataset", "spair", "--data-root", missing, "--methods", "dsift"),
                          1, str(missing))


def test_list_plugins_and_info(home):
    assert corrbench(home, "list", "methods").returncode == 0
    assert_fails(corrbench(home, "list", "nope"), 2, "nope")
    proc = corrbench(home, "plugins")
    assert proc.returncode == 0 and json.loads(proc.stdout)
    assert_one_line_error(corrbench(home, "plugins", "--hook", "nope"), 2, "unknown hook 'nope'")
    from corrbench.cli import build_cli

    if "info" not in build_cli().commands:
        return  # `corrbench info` is not in this version
    assert corrbench(home, "info", "dsift").returncode == 0
    assert_one_line_error(corrbench(home, "info", "nope"), 2, "'nope'")


def test_report(home, finished_run):
    assert corrbench(home, "report", finished_run).returncode == 0
    assert_one_line_error(corrbench(home, "report", home[0] / "nope"), 2, "not a finished corrbench run")
    broken = home[0] / "broken-run"
    broken.mkdir()
    (broken / "results.json").write_text("{ not json")
    (broken / "summary.csv").write_text((finished_run / "summary.csv").read_text())
    assert_one_line_error(corrbench(home, "report", broken), 1, str(broken))


def test_extract(home, synthetic_dataset):
    image = sorted((synthetic_dataset.layout_root / "JPEGImages" / "car").glob("*.jpg"))[0]
    out = home[0] / "features.safetensors"
    proc = corrbench(home, "extract", "--method", "dsift", "--images", image, "--out", out)
    assert proc.returncode == 0 and out.is_file(), proc.stderr
    assert_one_line_error(corrbench(home, "extract", "--method", "nope", "--images", image, "--out", out), 2, "nope")
    not_an_image = home[0] / "notes.jpg"
    not_an_image.write_text("not an image")
    assert_one_line_error(corrbench(home, "extract", "--method", "dsift", "--images", not_an_image, "--out", out),
                          1, str(not_an_image))


# ---------------------------------------------------------------------------------------------
# compare and regress: a failed check is status 1 (it once printed FAIL and exited 0)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("via", [SCRIPT, MODULE], ids=["script", "python-m"])
def test_compare(home, via):
    before = baseline_file(home[0] / f"before-{len(via)}.json", {"pck@0.10_img": 50.0, "pck@0.10_bbox": 40.0})
    same = corrbench(home, "compare", before, before, via=via)
    assert same.returncode == 0 and "PASS" in same.stdout, same.stdout + same.stderr
    after = baseline_file(home[0] / f"after-{len(via)}.json", {"pck@0.10_img": 45.0, "pck@0.10_bbox": 40.0})
    dropped = corrbench(home, "compare", before, after, via=via)
    assert dropped.returncode == 1, dropped.stdout + dropped.stderr
    assert any(line.startswith("FAIL") for line in dropped.stdout.splitlines()), dropped.stdout
    assert "Traceback" not in dropped.stderr
    assert_one_line_error(corrbench(home, "compare", home[0] / "nope.json", before, via=via), 2, "nope.json")


def test_regress_usage_and_missing_baseline(home):
    assert_fails(corrbench(home, "regress", "--no-such-option"), 2, "--no-such-option")
    missing = home[0] / "no-baseline.json"
    # checked before the lane runs: a missing baseline is a data problem, status 1
    assert_one_line_error(corrbench(home, "regress", "--baseline", missing), 1, str(missing))
    proc = corrbench(home, "--baseline", missing, via=[sys.executable, "-m", "corrbench.regress"])
    assert_one_line_error(proc, 1, str(missing))


@pytest.mark.slow
def test_regress_against_a_wrong_baseline_fails_with_status_1(home):
    """The whole lane (about a minute): a baseline cell of a method the lane does not run must fail it."""
    wrong = baseline_file(home[0] / "wrong.json", {"pck@0.10_img": 12.5}, method="no-such-method")
    proc = corrbench(home, "regress", "--baseline", wrong, "--out", home[0] / "lane")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert any(line.startswith("FAIL") for line in proc.stdout.splitlines()), proc.stdout
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# data, reproduce, top level
# ---------------------------------------------------------------------------------------------
def test_data_verify(home):
    missing = home[0] / "no-spair"
    proc = corrbench(home, "data", "verify", "spair", "--root", missing)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert str(missing) in proc.stdout + proc.stderr
    assert_fails(corrbench(home, "data", "verify"), 2, "NAME")


def test_reproduce_and_top_level(home):
    proc = corrbench(home, "reproduce", "--help")
    assert proc.returncode == 0 and "dhf-table" in proc.stdout
    assert_fails(corrbench(home, "reproduce", "dhf-table", "--no-such-option"), 2, "--no-such-option")
    assert corrbench(home, "--version").returncode == 0
    assert_fails(corrbench(home, "no-such-command"), 2, "no-such-command")
    assert_fails(corrbench(home, "list", "nope", via=MODULE), 2, "nope")


# ---------------------------------------------------------------------------------------------
# SIGINT: status 130, and nothing half-written
# ---------------------------------------------------------------------------------------------
def test_sigint_exits_130_and_leaves_no_partial_files(home):
    base, env = home
    cache, out = base / "sigint-cache", base / "sigint-out"
    # every test pair, one image per batch: extraction and readout last far longer than the poll below
    proc = subprocess.Popen([*SCRIPT, "run", "--methods", "dsift", "--batch-size", "1", "--cache-dir", str(cache),
                             "--out", str(out)], cwd=base / "cwd", env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a CI started in the background inherits SIGINT ignored, and Python then keeps
                            # ignoring it: give the child the default disposition a terminal user has
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        while proc.poll() is None and not any(cache.rglob("*.safetensors")):
            time.sleep(0.05)  # polls for the first cached feature map: the run is then part-way through
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (proc.returncode, stderr)
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "interrupted", stderr
    assert not (out / "results.json").exists()
    leftovers = [p for folder in (cache, out) if folder.exists() for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers


# ---------------------------------------------------------------------------------------------
# A write the machine refuses (a full disk, a file-size limit): status 1, one line, nothing half-written
# ---------------------------------------------------------------------------------------------
def _limit_file_size():
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_a_refused_write_is_one_line_status_1_and_leaves_no_partial_files(home):
    base, env = home
    cache, out = base / "fsize-cache", base / "fsize-out"
    proc = subprocess.run([*SCRIPT, "run", "--methods", "dsift", "--limit", "4", "--cache-dir", str(cache),
                           "--out", str(out)], cwd=base / "cwd", env=env, capture_output=True, text=True,
                          timeout=900, preexec_fn=_limit_file_size)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: File too large: ") and str(cache) in last and "ulimit -f" in last, last
    assert not (out / "results.json").exists()
    assert not [p for p in cache.rglob("*") if p.name.endswith((".tmp", ".safetensors"))]
