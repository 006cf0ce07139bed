"""``sd.compile``: the UNet traces as one graph, never recompiles across steps or batches, same features.

The graph counts come from dynamo itself (``torch._dynamo.utils.counters``) with the ``eager``
backend, which traces exactly like inductor but skips code generation, so this runs in seconds on a
CPU. Before the hooks only recorded their maps, the same 4-step inversion made 31 graphs and fell
back to eager at a graph break in the hook.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from torch._dynamo.utils import counters  # noqa: E402

from corrbench.errors import UsageError  # noqa: E402
from corrbench.runner import method_identity  # noqa: E402
from corrbench.testing.sd import make_tiny_sd  # noqa: E402
from corrbench_dhf.methods import DHF  # noqa: E402
from corrbench_sd import loading  # noqa: E402
from corrbench_sd.extractor import SDFeatureExtractor  # noqa: E402
from corrbench_sd.methods import SDLayer4  # noqa: E402
from corrbench_sd.speed import compile_mode, is_compiled  # noqa: E402

SAVE = (3, 1, 0)
KW = dict(device="cpu", num_steps=4, image_size=64, output_resolution=16, weights="random")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "sd")


@pytest.fixture
def fresh():
    """No compiled UNet leaks into other tests: the process-wide components and dynamo state are reset."""
    loading.clear_cache()
    torch._dynamo.reset()
    counters.clear()
    yield
    loading.clear_cache()
    torch._dynamo.reset()


def features(ex, images):
    got = {}

    def consume(slot, position, feat):
        assert (slot, position) not in got
        got[(slot, position)] = feat.clone()

    ex.invert(images, save_indices=SAVE, consume=consume)
    return got


def test_compiled_unet_is_one_graph_with_the_eager_features(tiny, fresh):
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reference = features(SDFeatureExtractor(str(tiny), **KW), images)
    assert not is_compiled(loading.get_components(str(tiny), weights="random").unet)
    loading.clear_cache()

    ex = SDFeatureExtractor(str(tiny), compile=True, compile_backend="eager", **KW)
    for batch in (images, images, images[:2]):  # the same shape again, then a ragged last batch
        got = features(ex, batch)
        assert set(got) == set(reference)
        for key, ref in reference.items():
            torch.testing.assert_close(got[key], ref[: len(batch)], rtol=1e-4, atol=1e-5)
    assert is_compiled(ex.unet)
    # 4 UNet calls × 3 inversions, 3 slots, a batch of 2 padded to 3: still one trace of the UNet
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"], dict(counters["graph_break"])
    # a second extractor on the same components reuses the compiled UNet instead of compiling again
    again = SDFeatureExtractor(str(tiny), compile="max-autotune", compile_backend="eager", **KW)
    features(again, images[:1])
    assert counters["stats"]["unique_graphs"] == 1


def test_eager_extraction_still_stops_the_last_forward_early(tiny, fresh):
    calls = []
    ex = SDFeatureExtractor(str(tiny), **KW)
    handle = ex.unet.conv_out.register_forward_hook(lambda *a: calls.append(1))
    try:
        features(ex, torch.rand(1, 3, 32, 32))
    finally:
        handle.remove()
    # four UNet calls, the last one stopped after the deepest hooked layer, before conv_out
    assert len(calls) == 3


@pytest.mark.parametrize("value,mode", [(False, None), ("false", None), (True, "max-autotune-no-cudagraphs"),
                                        ("true", "max-autotune-no-cudagraphs"), ("default", "default"),
                                        ("reduce-overhead", "reduce-overhead")])
def test_compile_values(value, mode):
    assert compile_mode(value) == mode


#: the architecture with random weights: nothing is looked up or downloaded
OFFLINE = {SDLayer4: {"weights": "random"}, DHF: {"weights": "random", "sd_weights": "random"}}


@pytest.mark.parametrize("cls", [SDLayer4, DHF])
def test_bad_runtime_values_fail_when_the_method_is_made(cls):
    with pytest.raises(UsageError, match="sd.compile='fastest'"):
        cls({**OFFLINE[cls], "compile": "fastest"})
    with pytest.raises(UsageError, match="sd.channels_last='sideways'"):
        cls({**OFFLINE[cls], "channels_last": "sideways"})


@pytest.mark.parametrize("cls", [SDLayer4, DHF])
def test_runtime_keys_leave_the_cache_key_alone(cls):
    # made for a CUDA device (channels_last is refused on a CPU); nothing is loaded, so no GPU is needed
    plain = method_identity(cls(OFFLINE[cls], device="cuda"))
    fast = method_identity(cls({**OFFLINE[cls], "compile": True, "channels_last": "true"}, device="cuda"))
    assert plain == fast
    assert method_identity(cls(OFFLINE[cls])) == plain  # the device is not part of the key either
    assert method_identity(cls({**OFFLINE[cls], "seed": 1})) != plain  # a key that changes features does


@pytest.mark.parametrize("cls", [SDLayer4, DHF])
@pytest.mark.parametrize("device", ["cpu", "cpu:0"])
def test_channels_last_is_refused_on_cpu_when_the_method_is_made(cls, device):
    with pytest.raises(UsageError, match=r"sd.channels_last=true is refused on CPU: torch's CPU GroupNorm") as info:
        cls({**OFFLINE[cls], "channels_last": "true"}, device=device)
    assert "\n" not in str(info.value)  # one clear line
    cls({**OFFLINE[cls], "channels_last": "false"}, device=device)  # off is fine


def test_the_extractor_refuses_channels_last_on_cpu_before_loading(monkeypatch):
    def no_load(*args, **kwargs):  # pragma: no cover - reached only if the refusal came too late
        raise AssertionError("components were loaded")

    monkeypatch.setattr(loading, "get_components", no_load)
    with pytest.raises(UsageError, match="refused on CPU"):
        SDFeatureExtractor("unused/model", device="cpu", channels_last=True)
    SDFeatureExtractor("unused/model", device="cuda", channels_last=True)  # made, not loaded: no GPU needed
