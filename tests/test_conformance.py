"""Weightless conformance: every registered method that offers a tiny configuration obeys the contracts.

In the spirit of timm's weightless model tests: each method is built from ``tiny_config`` (random
weights, small inputs) and checked for what the core relies on — the output contract, a stable weights
identity, and, the reason this file exists, that the memory layout of the batch a caller hands to
``describe`` cannot change the features. A channels-last-strided batch once reached torch's CPU
GroupNorm in the SD VAE and moved the features by 40 % (relative); the core now hands every
descriptor a contiguous NCHW batch, and this test holds every method to it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from corrbench.api import describe_together
from corrbench.images import to_batch
from corrbench.plugins import get_host


def _tiny_methods() -> list[str]:
    return [e.name for e in get_host().methods.entries()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-models")


def _images(seed: int, size=(48, 40)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    # smooth random images (a few blobs), not white noise: the features then have structure to keep
    ys, xs = np.mgrid[0:size[1], 0:size[0]]
    out = []
    for _ in range(2):
        img = np.zeros((size[1], size[0], 3))
        for _ in range(6):
            cx, cy, r = rng.uniform(0, size[0]), rng.uniform(0, size[1]), rng.uniform(4, 14)
            img += rng.uniform(0, 1, 3) * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * r * r))[..., None]
        out.append(Image.fromarray(np.clip(img / img.max() * 255, 0, 255).astype(np.uint8)))
    return out


def _build(name: str, workdir):
    cls = get_host().methods.entry(name).load()
    tiny = cls.tiny_config(workdir)
    if tiny is None:
        pytest.skip(f"{name} offers no tiny configuration")
    return cls, tiny


def test_every_builtin_method_offers_a_tiny_configuration(workdir):
    builtin_plugins = {"classic", "sd", "dhf", "dino", "dhpf"}
    lacking = [e.name for e in get_host().methods.entries()
               if e.plugin in builtin_plugins and "tiny_config" not in _defining_attrs(e.load())]
    assert not lacking, f"built-in methods without tiny_config: {lacking}"


def _defining_attrs(cls) -> set[str]:
    from corrbench.api import Descriptor

    return {k for klass in cls.__mro__ if klass is not Descriptor for k in vars(klass)}


@pytest.mark.parametrize("name", _tiny_methods())
def test_tiny_method_conformance(name, workdir):
    """Output contract, layout independence, batch independence and a stable weights identity."""
    cls, tiny = _build(name, workdir)
    descriptor = cls(config=tiny, device="cpu")
    prep = descriptor.preprocessing()
    images = _images(0)
    batch = to_batch(images, prep)
    assert batch.is_contiguous()
    a = descriptor.describe(batch)
    assert a.ndim == 4 and a.shape[0] == 2 and a.is_floating_point() and torch.isfinite(a).all()
    grid = descriptor.feature_grid(prep.load_hw(images[0].size), tuple(a.shape[-2:]))
    assert grid.stride_x > 0 and grid.stride_y > 0

    # the memory layout of the batch a caller hands over cannot change the features: the same values
    # in the same layout reach the same kernels, so anything beyond round-off is a layout bug (a
    # channels-last batch once moved SD features by 40 %)
    channels_last = batch.contiguous(memory_format=torch.channels_last)
    assert not channels_last.is_contiguous()  # the strides really differ
    torch.testing.assert_close(descriptor.describe(channels_last), a, rtol=1e-5, atol=1e-6)
    # a permuted view (what stacking HWC arrays transposed to CHW gives) is just as safe
    permuted = batch.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    torch.testing.assert_close(descriptor.describe(permuted), a, rtol=1e-5, atol=1e-6)

    # one image alone gives its features in a batch of two (the cache stores images one by one)
    twin = cls(config=tiny, device="cpu")
    alone = twin.describe(to_batch(images[1:], prep))
    # convolution kernels may sum in another order for another batch size: compare as a whole map
    # (a few elements near zero may differ relatively more), at a bound far below any real coupling
    assert alone.shape[1:] == a.shape[1:]
    relative = float((alone[0].double() - a[1].double()).norm() / a[1].double().norm())
    assert relative <= 1e-4, f"{name}: features of an image alone differ from in a batch by {relative:.2e}"

    ident = descriptor.weights_identity()
    assert ident, f"{name}: a built-in method must know its weights identity"
    assert ident == twin.weights_identity()


def test_shared_pass_outputs_equal_each_methods_own_extract(workdir):
    """Methods that share one computation get what their own extract would give (SD's one inversion)."""
    host = get_host()
    groups: dict[object, list] = {}
    for name in _tiny_methods():
        cls = host.methods.entry(name).load()
        tiny = cls.tiny_config(workdir)
        if tiny is None:
            continue
        d = cls(config=tiny, device="cpu")
        shared = d.shared_pass()
        if shared is not None:
            groups.setdefault((shared, repr(d.preprocessing())), []).append(d)
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    if not groups:
        pytest.skip("no two tiny methods share a pass")
    for members in groups.values():
        prep = members[0].preprocessing()
        batch = to_batch(_images(2), prep).contiguous(memory_format=torch.channels_last)
        together = describe_together(members, batch)
        for d, out in zip(members, together):
            torch.testing.assert_close(out, d.describe(batch), rtol=1e-4, atol=1e-5)
