"""Methods that share one SD inversion (``Descriptor.shared_pass``) are extracted together in a run.

The reference is each method run alone, in its own process state and cache: the shared run must give
the same predictions and numbers for every method while inverting each batch once instead of once
per method.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from corrbench.api import describe_together  # noqa: E402
from corrbench.errors import UsageError  # noqa: E402
from corrbench.runner import run_benchmark, shared_groups  # noqa: E402
from corrbench.testing.sd import make_tiny_sd  # noqa: E402
from corrbench_classic.descriptors import DenseSIFT  # noqa: E402
from corrbench_dhf.methods import DHF  # noqa: E402
from corrbench_sd.extractor import LAYERS, SDFeatureExtractor  # noqa: E402
from corrbench_sd.methods import SDConcatAll, SDLayer4  # noqa: E402

from test_dhf_methods import FAST, make_checkpoint  # noqa: E402

METHODS = ["sd-layer-4", "sd-concat-all", "sd-layer", "dhf", "dhf-one-step", "sd-layer-pruned", "dhf-pruned"]


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return make_tiny_sd(tmp_path_factory.mktemp("shared-sd") / "sd")


@pytest.fixture(scope="module")
def overrides(tmp_path_factory, tiny_sd):
    channels = SDFeatureExtractor(str(tiny_sd)).layer_channels(LAYERS)
    ckpt = make_checkpoint(tmp_path_factory.mktemp("shared-ckpt") / "checkpoint_step_123.pt", channels)
    return [f"sd.model={tiny_sd}", *(f"{k}={v}" for k, v in FAST.items()), f"dhf.weights={ckpt}",
            "dhf-one-step.weights=random", f"sd-layer-pruned.weights={ckpt}", f"dhf-pruned.weights={ckpt}",
            "sd-layer.timestep=500", "sd-layer.block=[2,1]", "sd.raw_indices=[9,5,0]"]


class InversionCounter:
    def __init__(self, monkeypatch):
        self.calls = 0
        inner = SDFeatureExtractor.invert

        def counted(extractor, *args, **kwargs):
            self.calls += 1
            return inner(extractor, *args, **kwargs)

        monkeypatch.setattr(SDFeatureExtractor, "invert", counted)


DHF_FAMILY = {"dhf", "dhf-one-step", "sd-layer-pruned", "dhf-pruned"}


def only_for(names: list[str], overrides: list[str]) -> list[str]:
    """The settings that apply to a run of ``names`` (a run refuses keys of methods it does not run)."""
    prefixes = {"sd", *names} | ({"dhf"} if DHF_FAMILY & set(names) else set())
    kept = [o for o in overrides if o.split(".", 1)[0] in prefixes]
    # the raw export's steps are the SD rows' own key (a DHF row's raw export is its network's input)
    sd_rows = set(names) - DHF_FAMILY
    return [o for o in kept if sd_rows or not o.startswith("sd.raw_indices=")]


def _run(methods, overrides, out: Path):
    run_benchmark(",".join(methods), "synthetic", limit=4, overrides=overrides, out_dir=out, cache_dir=out / "cache",
                  progress=False, batch_size=16)
    results = json.loads((out / "results.json").read_text())
    predictions: dict[str, list] = {}
    for line in (out / "predictions.jsonl").read_text().splitlines():
        row = json.loads(line)
        predictions.setdefault(row["method"], []).append(row)
    return results, predictions


def test_shared_run_inverts_once_and_equals_each_method_alone(tmp_path, overrides, monkeypatch):
    counter = InversionCounter(monkeypatch)
    shared, shared_preds = _run(METHODS, overrides, tmp_path / "shared")
    # every image fits one batch: one inversion for the seven methods
    assert counter.calls == 1
    for name in METHODS:
        cost = shared["methods"][name]["cost"]
        assert sorted(cost["extract_shared_with"]) == sorted(set(METHODS) - {name})
        assert cost["images_extracted"] == cost["images"] > 0

    counter.calls = 0
    for name in METHODS:
        alone, alone_preds = _run([name], only_for([name], overrides), tmp_path / name)
        assert "extract_shared_with" not in alone["methods"][name]["cost"]
        assert alone_preds[name] == shared_preds[name], name
        assert alone["methods"][name]["metrics"] == shared["methods"][name]["metrics"], name
        assert alone["methods"][name]["config_hash"] == shared["methods"][name]["config_hash"]
    assert counter.calls == len(METHODS)


def test_a_warm_shared_run_extracts_nothing(tmp_path, overrides, monkeypatch):
    sets = only_for(METHODS[:3], overrides)
    _run(METHODS[:3], sets, tmp_path / "run")
    counter = InversionCounter(monkeypatch)
    again, _ = _run(METHODS[:3], sets, tmp_path / "run")
    assert counter.calls == 0
    assert all(m["cost"]["images_extracted"] == 0 for m in again["methods"].values())


def test_groups_follow_the_extractor_settings():
    random = {"weights": "random"}
    descriptors = {"sd-layer-4": SDLayer4(random), "sd-concat-all": SDConcatAll(random),
                   "dhf": DHF({"weights": "random", "sd_weights": "random"}),
                   "other-seed": SDConcatAll({**random, "seed": 1}), "dsift": DenseSIFT()}
    assert shared_groups(descriptors) == [["sd-layer-4", "sd-concat-all", "dhf"]]
    # a runtime key is part of the pass: one compiled and one eager UNet call are not one pass
    assert shared_groups({"a": SDLayer4(random), "b": SDLayer4({**random, "compile": True})}) == []


def test_describe_together_refuses_methods_without_one_pass():
    with pytest.raises(UsageError, match="do not share one pass"):
        describe_together([SDLayer4({"weights": "random"}), SDLayer4({"weights": "random", "seed": 3})],
                          torch.rand(1, 3, 8, 8))
