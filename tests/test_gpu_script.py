"""benchmarks/gpu_throughput.py on the CPU: the tiny random SD folder as a smoke test, the official
structure against the DHF plugin's materialised input, FLOP counting against closed forms, and the
published architectures on the meta device (no memory, no download)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_throughput.py"


def _load():
    spec = importlib.util.spec_from_file_location("corrbench_gpu_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gt = _load()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny models are far too small for intra-op threads; on a busy 2-core machine two threads
    spin against each other and made this module 10x slower (188 s against 12 s, measured)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
SMOKE = ["--tiny", "--device", "cpu", "--dtypes", "fp32", "--batch-sizes", "1,2", "--iters", "1", "--unet-iters", "1",
         "--num-steps", "4", "--save-indices", "3,0"]


def test_tiny_smoke_run_writes_rows_ratios_and_parity(tmp_path):
    out = tmp_path / "gpu.json"
    report = gt.main(SMOKE + ["--official", "--check", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"], default=str))
    rows = {(r["mode"], r["batch"]): r for r in saved["rows"]}
    assert set(rows) == {("official", 2), ("corrbench", 1), ("corrbench", 2)}
    for r in rows.values():
        assert r["error"] is None
        assert r["images_per_s"] > 0 and r["seconds"] > 0
        assert r["spair_test_minutes"] == pytest.approx(1800 / r["images_per_s"] / 60)
        assert r["unet_gflops_per_image_call"] > 0 and r["vae_gflops_per_image"] > 0
        assert r["peak_gpu_mb"] is None  # no GPU: nothing is made up
    # 4 DDIM steps: the official structure runs all 4 UNet calls; corrbench's last one stops early but starts
    assert rows[("official", 2)]["unet_calls_per_batch"] == 4
    assert rows[("corrbench", 1)]["unet_calls_per_batch"] == 4
    (ratio,) = saved["ratios"]
    best = max(rows[("corrbench", 1)]["images_per_s"], rows[("corrbench", 2)]["images_per_s"])
    assert ratio["speedup"] == pytest.approx(best / rows[("official", 2)]["images_per_s"])
    # the streaming path and the official stack-then-aggregate structure compute the same features
    assert saved["parity_max_rel_diff"]["tiny/float32"] < 1e-5


def test_compiled_rows_trace_the_unet_once_per_batch_size(tmp_path):
    """--compile through sd.compile's path: one dynamo graph per batch size, timing and FLOP counting included."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    try:
        report = gt.main(SMOKE + ["--compile", "--compile-backend", "eager", "--unet-iters", "2"])
    finally:
        torch._dynamo.reset()
    compiled = [r for r in report["rows"] if r["compile"]]
    assert [r["batch"] for r in compiled] == [1, 2]
    assert all(r["error"] is None and r["images_per_s"] > 0 and r["unet_tflops"] > 0 for r in compiled)
    # batch 1 traced once, batch 2 once more: the call counter, the UNet-only loop and the FLOP count
    # (which runs ``forward`` directly) add no traces, and no step's slot does
    assert [r["dynamo_graphs"] for r in compiled] == [1, 2]
    assert not counters["graph_break"]


def test_prepared_session_script_runs_both_stages(tmp_path):
    """benchmarks/gpu_session.sh (the one prepared device run) with the tiny CPU model instead of the GPU."""
    import os
    import subprocess

    root = SCRIPT.parents[1]
    env = {**os.environ, "GPU_SESSION_SMOKE": "1", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(root / "benchmarks" / "gpu_session.sh"), str(tmp_path)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    eager = json.loads((tmp_path / "eager.json").read_text())
    compiled = json.loads((tmp_path / "compile.json").read_text())
    assert {r["mode"] for r in eager["rows"]} == {"official", "corrbench"} and eager["ratios"]
    assert eager["parity_max_rel_diff"] == {"tiny/float32": 0.0}
    assert [r["compile"] for r in compiled["rows"]] == [False, False, True]
    assert all(r["error"] is None for r in eager["rows"] + compiled["rows"])


def test_cuda_request_without_cuda_is_a_clear_exit(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="CUDA is not available"):
        gt.main(["--device", "cuda", "--models", "sd15"])


def test_official_structure_equals_the_plugins_materialised_input(tmp_path):
    """run_official builds the stack itself; DHF.extract_raw is the plugin's own materialisation."""
    folder = gt.tiny_folder(tmp_path)
    desc = gt.make_descriptor(str(folder), "float32", "cpu", num_steps=4, image_size=64, output_resolution=8,
                              load_size=32, save_indices=[3, 1, 0])
    images = gt._images(2, 32, "cpu", seed=3)
    official = gt.run_official(desc, images, host_copy=True)
    with torch.inference_mode():
        reference = desc.network(desc.extract_raw(images))
    torch.testing.assert_close(official, reference, rtol=1e-5, atol=1e-6)
    assert official.shape == (2, desc.network.projection_dim, 8, 8)


def test_count_flops_matches_closed_forms():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 10, 12)
    assert gt.count_flops(lambda: conv(x)) == 2 * 2 * 8 * 10 * 12 * 3 * 3 * 3
    a, b = torch.randn(5, 7), torch.randn(7, 11)
    assert gt.count_flops(lambda: a @ b) == 2 * 5 * 7 * 11


def test_unet_flops_are_linear_in_batch(tmp_path):
    """The script scales one batch-1 count by the batch size: check that is exact."""
    desc = gt.make_descriptor(str(gt.tiny_folder(tmp_path)), "float32", "cpu", num_steps=4, image_size=64,
                              output_resolution=8, load_size=32, save_indices=[3, 0])
    ex = desc.extractor
    context = ex.components.text_embeddings([""])
    one = gt.unet_forward_flops(ex.unet, 1, 8, context, "cpu")
    assert one > 0
    assert gt.unet_forward_flops(ex.unet, 3, 8, context, "cpu") == 3 * one


def test_published_architectures_on_the_meta_device():
    """SD-1.5 / SD-2.1-base built from their configs: the published parameter counts, no memory used."""
    sd15 = gt.architecture_facts(gt.MODELS["sd15"])
    assert sd15["unet_params"] == 859_520_964
    assert sd15["vae_params"] == 83_653_863
    assert sd15["text_encoder_params"] == 123_060_480  # CLIP ViT-L/14 text tower
    sd21 = gt.architecture_facts(gt.MODELS["sd21"])
    assert sd21["unet_params"] == 865_910_724
    # one 512 px UNet forward is ~0.8 TFLOPs; 50 of them dominate a dhf image
    assert 700 < sd15["unet_gflops_per_forward"] < 900
    assert sd15["dhf_tflops_per_image_50_steps"] == pytest.approx(
        (sd15["vae_encode_gflops"] + 50 * sd15["unet_gflops_per_forward"]) / 1e3)


@pytest.mark.parametrize(("name", "dtype", "expected"), [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4),
    ("NVIDIA H100 PCIe", "float16", 756.0),
    ("NVIDIA H200", "bfloat16", 989.4),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312.0),
    ("Some Future GPU", "bfloat16", None),
])
def test_peak_table(name, dtype, expected):
    assert gt.peak_tflops(name, dtype) == expected
    assert gt.peak_tflops(name, dtype, override=123.0) == 123.0


def _load_memory_probe():
    spec = importlib.util.spec_from_file_location("corrbench_memory_probe", SCRIPT.parent / "memory_probe.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_cpu_peak_reader_against_known_allocations():
    """The allocator-event peak equals the bytes a hand-written sequence of allocations holds at most."""
    mp = _load_memory_probe()

    def allocations():
        a = torch.empty(1000, 1000)  # 4 MB
        b = torch.empty(500, 1000)  # 2 MB: 6 MB live
        del a  # 2 MB live
        c = torch.empty(2000, 1000)  # 8 MB: 10 MB live, the peak
        del b, c

    assert mp.peak_bytes(allocations, "cpu") == 10_000_000


def test_memory_probe_on_the_tiny_model_grows_with_the_batch(tmp_path):
    mp = _load_memory_probe()
    out = mp.main(["--tiny", "--batch-sizes", "1,3", "--json", str(tmp_path / "mem.json")])
    rows = out["rows"]
    assert [r["batch"] for r in rows] == [1, 3] and 0 < rows[0]["peak_mb"] < rows[1]["peak_mb"]
    assert out["marginal_mb_per_image"] == pytest.approx((rows[1]["peak_mb"] - rows[0]["peak_mb"]) / 2)
    assert json.loads((tmp_path / "mem.json").read_text())["official_stack_mb_per_image_fp16"] == pytest.approx(
        11 * 10560 * 64 * 64 * 2 / 2**20)
