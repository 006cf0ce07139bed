import pytest

from corrbench.api import Preprocess
from corrbench.config import parse_overrides, resolve_overrides
from corrbench.errors import UsageError


class _M:
    def __init__(self, keys, namespaces=None):
        self.default_config = {k: None for k in keys}
        self.config_namespaces = namespaces or {}


def test_method_setting_beats_namespace_in_either_order():
    methods = {"a": _M(["model", "x"], {"sd": ("model",)}), "b": _M(["model"], {"sd": ("model",)})}
    for order in (["sd.model=ns", "a.model=own"], ["a.model=own", "sd.model=ns"]):
        cfg, _ = resolve_overrides(parse_overrides(order), methods)
        assert cfg["a"]["model"] == "own" and cfg["b"]["model"] == "ns"


def test_a_method_named_like_its_namespace_reaches_the_family():
    methods = {"dinov2": _M(["weights", "model"], {"dinov2": ("weights",)}),
               "dinov2-b": _M(["weights", "model"], {"dinov2": ("weights",)})}
    cfg, _ = resolve_overrides(parse_overrides(["dinov2.weights=random", "dinov2.model=x"]), methods)
    assert cfg["dinov2-b"]["weights"] == "random" and cfg["dinov2"]["weights"] == "random"
    assert "model" not in cfg["dinov2-b"]  # not a namespace key: only the named method
    cfg, _ = resolve_overrides(parse_overrides(["dinov2-b.weights=own", "dinov2.weights=random"]), methods)
    assert cfg["dinov2-b"]["weights"] == "own"


def test_values_are_json_when_they_parse():
    assert parse_overrides(["m.block=[1, 0]", "m.flag=true", "m.n=3", "m.s=cat,dog", "m.f=0.5"]) == {
        "m.block": [1, 0], "m.flag": True, "m.n": 3, "m.s": "cat,dog", "m.f": 0.5}


def test_unknown_namespace_key_lists_valid_ones():
    methods = {"a": _M(["model"], {"sd": ("model",)})}
    with pytest.raises(UsageError, match="valid keys: model"):
        resolve_overrides(parse_overrides(["sd.nope=1"]), methods)


@pytest.mark.parametrize("size,expected", [((500, 375), (224, 298)), ((375, 500), (298, 224)), ((224, 224), (224, 224))])
def test_short_side_truncates_like_torchvision(size, expected):
    assert Preprocess(load_size=224, resize="short_side").load_hw(size) == expected


def test_square_and_long_side():
    assert Preprocess(load_size=224).load_hw((500, 375)) == (224, 224)
    assert Preprocess(load_size=100, resize="long_side").load_hw((500, 375)) == (75, 100)
