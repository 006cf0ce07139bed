"""Typed config keys (corrbench.options): coercion, declaration on classes, checks before any work, listing."""

import json
import os
import subprocess
import sys
import time

import pytest

import corrbench
from corrbench.config import parse_overrides, resolve_overrides
from corrbench.errors import UsageError
from corrbench.options import Option, options_of


# -- coercion ------------------------------------------------------------------------------------
def test_int_accepts_ints_and_integer_text_and_refuses_the_rest():
    opt = Option(2, int, "the sampling step in pixels", min=1)
    assert opt.coerce("k", 3) == 3 and opt.coerce("k", "3") == 3 and opt.coerce("k", 4.0) == 4
    for bad in (2.5, "abc", True, 0, -1, None, [1]):
        with pytest.raises(UsageError) as err:
            opt.coerce("--set dsift.stride", bad)
        assert str(err.value) == (f"--set dsift.stride={bad!r}: expected an integer ≥ 1 "
                                  "(the sampling step in pixels)")


def test_float_bool_str_and_ranges():
    f = Option(0.5, float, "a weight", min=0, max=1)
    assert f.coerce("k", 1) == 1.0 and isinstance(f.coerce("k", 1), float) and f.coerce("k", "0.25") == 0.25
    for bad in (1.5, "nan", "x", False):
        with pytest.raises(UsageError, match=r"expected a number in 0\.\.1 \(a weight\)"):
            f.coerce("k", bad)
    b = Option(False, bool, "flag")
    assert b.coerce("k", "true") is True and b.coerce("k", "False") is False and b.coerce("k", 1) is True
    with pytest.raises(UsageError, match="k='maybe': expected true or false"):
        b.coerce("k", "maybe")
    s = Option("a", str, "mode", choices=("a", "b"))
    assert s.coerce("k", "b") == "b"
    with pytest.raises(UsageError, match=r"k='c': expected one of 'a', 'b' \(mode\)"):
        s.coerce("k", "c")
    assert Option("x", str).coerce("k", 123) == "123"  # `--set m.name=123` arrives as a number
    with pytest.raises(UsageError, match="expected a string"):
        Option("x", str).coerce("k", None)


def test_multiple_of_list_json_nullable_and_check():
    assert Option(8, int, multiple_of=8).coerce("k", "16") == 16
    with pytest.raises(UsageError, match="expected an integer divisible by 8"):
        Option(8, int, multiple_of=8).coerce("k", 12)
    lst = Option([1], list, item=int)
    assert lst.coerce("k", "3,4") == [3, 4] and lst.coerce("k", (5,)) == [5] and lst.coerce("k", "[6]") == [6]
    with pytest.raises(UsageError, match="expected a list of integers"):
        lst.coerce("k", ["x"])
    nullable = Option(None, "path", "a file")
    assert nullable.nullable and nullable.coerce("k", None) is None and nullable.coerce("k", "/a") == "/a"
    anything = Option({"a": 1}, "json")
    assert anything.coerce("k", [1, {"b": None}]) == [1, {"b": None}]

    def odd(v):
        if v % 2 == 0:
            raise ValueError("an odd integer")
        return v

    with pytest.raises(UsageError, match="k=4: expected an odd integer"):
        Option(3, int, check=odd).coerce("k", 4)


def test_option_types_are_checked_when_declared():
    with pytest.raises(TypeError):
        Option(1, "integer")


def test_inferred_options_type_by_default():
    assert Option.infer(3).type == "int" and Option.infer(True).type == "bool" and Option.infer(0.1).type == "float"
    assert Option.infer("x").type == "str" and Option.infer([1]).type == "list"
    untyped = Option.infer(None)
    assert untyped.type == "json" and untyped.coerce("k", {"any": [1]}) == {"any": [1]}


# -- classes -------------------------------------------------------------------------------------
class _Plain(corrbench.Descriptor):
    """A third-party method with a plain default_config."""

    name = "plain-3p"
    default_config = {"k": 5, "scale": 0.5, "mode": "a", "extra": None}

    def extract(self, images):
        return images


class _Typed(corrbench.Descriptor):
    name = "typed-3p"
    default_config = {"k": Option(5, int, "kernel size", min=1), "mode": Option("a", str, "m", choices=("a", "b"))}

    def extract(self, images):
        return images


class _Child(_Typed):
    name = "typed-child"
    default_config = {**_Typed.default_config, "k": 7}


def test_a_plain_default_config_still_works_and_gets_type_checks():
    assert _Plain.default_config == {"k": 5, "scale": 0.5, "mode": "a", "extra": None}
    d = _Plain(config={"k": "3", "scale": 1, "extra": [1, 2]})
    assert d.config == {"k": 3, "scale": 1.0, "mode": "a", "extra": [1, 2]}
    with pytest.raises(UsageError, match=r"plain-3p.k=2.5: expected an integer"):
        _Plain(config={"k": 2.5})
    with pytest.raises(UsageError, match="has no config key"):
        _Plain(config={"nope": 1})
    cfg, _ = resolve_overrides(parse_overrides(["plain-3p.k=4"]), {"plain-3p": _Plain})
    assert cfg["plain-3p"] == {"k": 4}


def test_declared_options_become_plain_defaults_and_are_inherited():
    assert _Typed.default_config == {"k": 5, "mode": "a"} and set(_Typed.options) == {"k", "mode"}
    assert _Child.default_config == {"k": 7, "mode": "a"}
    assert _Child.options["k"].doc == "kernel size" and _Child.options["k"].default == 7  # the base's Option
    assert _Typed(config={"k": "9"}).config["k"] == 9
    with pytest.raises(UsageError, match=r"typed-child.mode='c': expected one of 'a', 'b' \(m\)"):
        _Child(config={"mode": "c"})


def test_resolve_overrides_coerces_for_methods_datasets_and_namespaces():
    class A(corrbench.Descriptor):
        name = "a"
        default_config = {"n": Option(1, int, "n", min=1), "f": Option(0.5, float, "f")}
        config_namespaces = {"fam": ("n",)}

    class B(corrbench.Descriptor):
        name = "b"
        default_config = {"n": Option(1.0, float, "n as a float")}
        config_namespaces = {"fam": ("n",)}

    class D(corrbench.Dataset):
        name = "d"
        default_config = {"seed": Option(0, int, "seed", min=0)}

    cfg, ds = resolve_overrides(parse_overrides(["fam.n=2", "a.f=1", "d.seed=3"]), {"a": A, "b": B}, ("d", D))
    assert cfg == {"a": {"n": 2, "f": 1.0}, "b": {"n": 2.0}} and isinstance(cfg["b"]["n"], float)
    assert ds == {"seed": 3}
    with pytest.raises(UsageError, match=r"^--set fam.n=2.5: expected an integer ≥ 1 \(n\)$"):
        resolve_overrides(parse_overrides(["fam.n=2.5"]), {"a": A, "b": B})
    with pytest.raises(UsageError, match=r"^--set d.seed=-1: expected an integer ≥ 0 \(seed\)$"):
        resolve_overrides(parse_overrides(["d.seed=-1"]), {"a": A}, ("d", D))
    assert D(root="/nonexistent", config={"seed": "4"}).config == {"seed": 4}


BUILTIN_PLUGINS = ("classic", "synthetic", "datasets", "sd", "dhf", "dino", "dhpf")


def _builtin_classes():
    from corrbench.plugins import get_host

    host = get_host()
    for kind, registry in (("method", host.methods), ("dataset", host.datasets)):
        for entry in registry.entries():
            if entry.plugin in BUILTIN_PLUGINS:
                yield kind, entry.name, entry.load()


def test_every_builtin_option_is_typed_and_documented():
    seen = 0
    for kind, name, cls in _builtin_classes():
        options = options_of(cls)
        assert set(options) == set(cls.default_config), name
        for key, opt in options.items():
            seen += 1
            assert opt.doc.strip(), f"{kind} {name}: key {key!r} has no doc"
            assert "\n" not in opt.doc, f"{kind} {name}: the doc of {key!r} is not one line"
            # every default passes its own option
            assert opt.coerce(f"{name}.{key}", opt.default) == opt.default or opt.check is not None, (name, key)
    assert seen > 50


# -- through the command line --------------------------------------------------------------------
def _cli(tmp_path, *args, timeout=300):
    env = {**os.environ, "CORRBENCH_CACHE": str(tmp_path / "cache"), "CORRBENCH_DATA": str(tmp_path / "data")}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "corrbench", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.perf_counter() - started


@pytest.mark.parametrize("setting,expected", [
    ("dsift.stride=abc", "--set dsift.stride='abc': expected an integer ≥ 1"),
    ("dsift.stride=0", "--set dsift.stride=0: expected an integer ≥ 1"),
    ("dsift.bin_size=2.5", "--set dsift.bin_size=2.5: expected an integer ≥ 1"),
])
def test_a_bad_value_is_one_line_before_any_work(tmp_path, setting, expected):
    proc, seconds = _cli(tmp_path, "run", "-m", "dsift", "--set", setting, "--out", "out")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: " + expected), lines[0]
    # nothing was generated, hashed or extracted: no results, no dataset, no cache
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists() and not (tmp_path / "cache").exists()
    assert seconds < 60


def test_a_valid_value_runs_and_is_recorded_with_its_type(tmp_path):
    proc, _ = _cli(tmp_path, "run", "-m", "dsift", "--set", "dsift.bin_size=2", "--set", "dsift.stride=4",
                   "--limit", "2", "--out", "out")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "out" / "results.json").read_text())["methods"]["dsift"]["config"]
    assert config["bin_size"] == 2 and type(config["bin_size"]) is int and config["stride"] == 4


def test_list_methods_options_shows_every_builtin_key_with_its_doc(tmp_path):
    proc, _ = _cli(tmp_path, "list", "methods", "--options")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for kind, name, cls in _builtin_classes():
        if kind != "method":
            continue
        assert f"  {name} " in out, name
        for key, opt in options_of(cls).items():
            assert any(line.strip().startswith(key) and opt.doc in line for line in out.splitlines()), (name, key)
    assert "[≥ 1]" in out and "namespace sd: --set sd.KEY reaches model" in out


def test_info_describes_a_method_and_a_dataset_and_refuses_unknown_names(tmp_path):
    proc, _ = _cli(tmp_path, "info", "dsift")
    assert proc.returncode == 0, proc.stderr
    assert "dsift: method from plugin" in proc.stdout and "Dense SIFT" in proc.stdout
    assert any(line.split()[:3] == ["stride", "int", "2"] for line in proc.stdout.splitlines())
    proc, _ = _cli(tmp_path, "info", "colour-patch")  # aliases are shown
    assert "aliases: color-patch" in proc.stdout
    proc, _ = _cli(tmp_path, "info", "synthetic")
    assert proc.returncode == 0 and "splits: trn, val, test" in proc.stdout and "seed" in proc.stdout
    proc, _ = _cli(tmp_path, "info", "nope")
    assert proc.returncode == 2 and "unknown method, dataset, readout or protocol 'nope'; known: " in proc.stderr
    assert "dsift" in proc.stderr and "Traceback" not in proc.stderr


def test_data_commands_use_the_same_set_parser(tmp_path):
    proc, _ = _cli(tmp_path, "data", "info", "synthetic", "--set", "seed=abc")
    assert proc.returncode == 2 and "--set synthetic.seed='abc': expected an integer ≥ 0" in proc.stderr
    proc, _ = _cli(tmp_path, "data", "info", "synthetic", "--set", "synthetic.seed=3", "--set", "nope=1")
    assert proc.returncode == 2 and "dataset 'synthetic' has no key 'nope'" in proc.stderr
    proc, _ = _cli(tmp_path, "data", "info", "synthetic", "--set", "seed=3", "--json")
    assert proc.returncode == 0, proc.stderr
