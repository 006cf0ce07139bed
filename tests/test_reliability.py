"""Reliability: distributed runs equal single-process ones, a SIGKILLed run resumes to identical
results, malicious checkpoints cannot run code, hostile images and inputs give clear errors."""

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from corrbench.config import parse_overrides, parse_value
from corrbench.errors import DataError, UsageError, WeightsError
from corrbench.images import MAX_PIXELS, inspect_image, load_rgb
from corrbench.testing import invoke_cli

RESULT_FILES = ("summary.csv", "breakdown.csv", "predictions.jsonl")


def _run(args, env_extra=None, **kw):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "corrbench", *args], capture_output=True, text=True, env=env, **kw)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_equal_one(tmp_path, synthetic_dataset):
    common = ["run", "--methods", "dsift,colour-patch", "--limit", "12"]
    one = _run([*common, "--cache-dir", str(tmp_path / "c1"), "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                          "-m", "corrbench", *common, "--cache-dir", str(tmp_path / "c2"), "--out", str(tmp_path / "two")],
                         capture_output=True, text=True)
    assert two.returncode == 0, two.stderr
    for name in RESULT_FILES:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results["env"]["processes"] == 2
    assert results["methods"]["dsift"]["cost"]["images_extracted"] == results["methods"]["dsift"]["cost"]["images"]
    assert two.stdout.count("results:") == 1  # only rank 0 reports


@pytest.mark.slow
def test_sigkill_then_rerun_gives_identical_results(tmp_path, synthetic_dataset):
    # 40 pairs span ~30 images: extraction lasts seconds, so the kill lands part-way through it
    args = ["run", "--methods", "dsift", "--batch-size", "1", "--limit", "40"]
    reference = _run([*args, "--cache-dir", str(tmp_path / "ref-cache"), "--out", str(tmp_path / "ref")])
    assert reference.returncode == 0, reference.stderr

    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "corrbench", *args, "--cache-dir", str(cache),
                             "--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cache.rglob("*.safetensors"))) < 3:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_cached = len(list(cache.rglob("*.safetensors")))
    assert n_cached >= 3, "the run was not killed part-way through extraction"
    assert not (tmp_path / "killed" / "results.json").exists()

    resumed = _run([*args, "--cache-dir", str(cache), "--out", str(tmp_path / "resumed")])
    assert resumed.returncode == 0, resumed.stderr
    assert "from cache" in resumed.stderr
    for name in RESULT_FILES:
        assert (tmp_path / "ref" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name
    ref = json.loads((tmp_path / "ref" / "results.json").read_text())
    res = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert {m: r["metrics"] for m, r in ref["methods"].items()} == {m: r["metrics"] for m, r in res["methods"].items()}


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _loaders():
    from corrbench_dhf.checkpoint import load_checkpoint as dhf_load
    from corrbench_dino.weights import _read as dino_read

    yield "dhf", dhf_load
    yield "dino", dino_read


@pytest.mark.parametrize("name,loader", list(_loaders()))
def test_a_malicious_pickle_cannot_run_code(tmp_path, name, loader):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"aggregation_network": _Evil(marker), "state_dict": _Evil(marker)}, fh)
    # the same file under plain pickle would run the command: prove the payload is live
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Evil(probe)))
    assert probe.exists()
    with pytest.raises(WeightsError):
        loader(evil)
    assert not marker.exists()


def test_dhpf_checkpoint_loader_refuses_pickled_code(tmp_path):
    from corrbench_dhpf.learner import load_checkpoint

    marker = tmp_path / "pwned"
    evil = tmp_path / "best_model.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"state_dict": _Evil(marker)}, fh)
    with pytest.raises(WeightsError):
        load_checkpoint(None, evil)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Hostile images
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK", "RGBA", "I;16", "1", "F"])
def test_odd_image_modes_become_rgb(tmp_path, mode):
    img = Image.new(mode, (13, 7))
    path = tmp_path / ("x.tiff" if mode in ("I;16", "F", "CMYK") else "x.png")
    img.save(path)
    assert load_rgb(path).mode == "RGB"
    assert inspect_image(path).size == (13, 7)


def test_truncated_missing_and_non_image_files_are_named(tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(good)
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for path in (truncated, text, tmp_path / "missing.jpg"):
        with pytest.raises(DataError, match=path.name):
            inspect_image(path)


def test_decompression_bomb_is_refused_without_decoding(tmp_path):
    side = int(MAX_PIXELS ** 0.5) + 64
    path = tmp_path / "bomb.png"
    # a tiny file that claims a huge size: write a 1-bit PNG of that size (compresses to a few KB)
    Image.new("1", (side, side)).save(path, optimize=True)
    assert path.stat().st_size < 5_000_000
    with pytest.raises(DataError, match="pixel limit|bomb|unreadable"):
        inspect_image(path)


# ---------------------------------------------------------------------------------------------
# Hostile CLI inputs: --set parsing never crashes with anything but a UsageError
# ---------------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=30), max_size=4))
def test_set_parsing_accepts_or_names_the_problem(items):
    try:
        parsed = parse_overrides(items)
    except UsageError as exc:
        assert "--set" in str(exc)
    else:
        for key in parsed:
            assert "." in key


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_values_parse_to_json_or_string(text):
    value = parse_value(text)
    assert isinstance(value, (str, int, float, bool, list, dict, type(None)))


def test_hostile_cli_values_are_usage_errors(synthetic_dataset):
    for args in (["run", "--limit", "0"], ["run", "--batch-size", "0"], ["run", "--methods", ","],
                 ["run", "--methods", "dsift,dsift"], ["run", "--set", "colour-patch.patch=4", "--limit", "2"],
                 ["run", "--device", "cuda:7"] if not __import__("torch").cuda.is_available() else ["run", "--limit", "-1"]):
        code, _, err = invoke_cli(args)
        assert code == 2, (args, err)
        assert err.strip().splitlines()[-1].startswith("error:") and "Traceback" not in err, (args, err)


def test_concurrent_writers_of_one_cache_never_corrupt_it(tmp_path):
    """Two runs sharing a cache may write the same entry at once: atomic renames keep every read whole."""
    import threading
    import warnings

    from corrbench.cache import FeatureCache

    ident = {"method": "m", "config": {}}
    writers = [FeatureCache(tmp_path, "m", ident) for _ in range(2)]
    reader = FeatureCache(tmp_path, "m", ident)
    tensor = torch.arange(64 * 64, dtype=torch.float32).reshape(1, 64, 64)
    stop = threading.Event()
    bad = []

    def write(cache):
        while not stop.is_set():
            cache.put("ee" * 32, tensor, {"k": "v"})

    threads = [threading.Thread(target=write, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    try:
        deadline = time.time() + 2
        while time.time() < deadline:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                got = reader.get("ee" * 32)
            if w or (got is not None and not torch.equal(got[0], tensor)):
                bad.append(w)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not bad


@pytest.mark.slow
def test_extract_under_two_processes_equals_one(tmp_path, synthetic_dataset):
    from safetensors.torch import load_file

    images = sorted((synthetic_dataset.layout_root / "JPEGImages" / "fish").glob("*.jpg"))[:5]
    one = _run(["extract", "--method", "dsift", "--images", *map(str, images), "--out", str(tmp_path / "one.safetensors")])
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "corrbench",
                          "extract", "--method", "dsift", "--images", *map(str, images),
                          "--out", str(tmp_path / "two.safetensors")], capture_output=True, text=True)
    assert two.returncode == 0, two.stderr
    a, b = load_file(str(tmp_path / "one.safetensors")), load_file(str(tmp_path / "two.safetensors"))
    assert sorted(a) == sorted(b) == sorted(p.stem for p in images)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_explicit_gpu_under_a_launcher_is_refused(monkeypatch):
    from corrbench.distributed import init_from_env

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(UsageError, match="cuda:LOCAL_RANK"):
        init_from_env("cuda:1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    ctx, device = init_from_env("cpu")
    assert not ctx.active and device == "cpu" and ctx.shard([1, 2, 3]) == [1, 2, 3]
