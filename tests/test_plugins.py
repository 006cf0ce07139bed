"""Plugin host: entry-point loading, isolation of broken plugins, strict mode, clashes, listing."""

import types
from importlib import metadata

import pytest

import corrbench
from corrbench import hookspecs
from corrbench.errors import CorrbenchError, UnknownMethodError
from corrbench.plugins import PluginHost, PluginWarning
from corrbench.registry import Entry, MethodRegistry


class _FakeEP:
    def __init__(self, name, loader, dist_name="fake-dist"):
        self.name, self.value, self._loader = name, f"{name}_module", loader
        self.dist = types.SimpleNamespace(metadata={"Name": dist_name}, version="9.9")

    def load(self):
        return self._loader()


def _module(name, **hooks):
    mod = types.ModuleType(name)
    for k, v in hooks.items():
        setattr(mod, k, corrbench.hookimpl(v))
    return mod


class Grey(corrbench.Descriptor):
    name = "grey"

    def extract(self, images):
        return images.mean(dim=1, keepdim=True)


def _host_with(monkeypatch, eps):
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: eps if group == "corrbench" else [])
    host = PluginHost()
    host.load_entry_points()
    return host


def test_hook_specs_are_documented():
    for name in ("register_methods", "register_datasets", "register_tables", "register_commands"):
        assert getattr(hookspecs, name).__doc__.strip()


def test_entry_point_registers_lazily_and_eagerly(monkeypatch):
    def register_methods(register):
        register(Grey)
        register("lazy-one", "corrbench_does_not_exist.mod:Thing", description="lazy", aliases=("l1",))

    host = _host_with(monkeypatch, [_FakeEP("good", lambda: _module("good", register_methods=register_methods))])
    assert host.methods.names() == ["grey", "lazy-one"]
    assert host.methods.entry("l1").name == "lazy-one"
    assert host.methods.get("grey") is Grey
    assert host.plugins["good"].methods == ["grey", "lazy-one"]
    assert host.plugins["good"].version == "9.9"
    with pytest.raises(CorrbenchError, match="could not be imported"):
        host.methods.get("lazy-one")  # the lazy target is imported only now


def test_broken_plugin_is_a_warning_and_others_still_load(monkeypatch):
    def boom():
        raise ImportError("no module named torchish")

    def register_methods(register):
        register(Grey)

    eps = [_FakeEP("broken", boom), _FakeEP("good", lambda: _module("good", register_methods=register_methods))]
    with pytest.warns(PluginWarning, match="broken.*failed to import.*torchish"):
        host = _host_with(monkeypatch, eps)
    assert "grey" in host.methods
    assert "torchish" in host.plugins["broken"].error


def test_strict_mode_makes_a_broken_plugin_fatal(monkeypatch):
    monkeypatch.setenv("CORRBENCH_STRICT_PLUGINS", "1")

    def boom():
        raise RuntimeError("bad plugin")

    with pytest.raises(CorrbenchError, match="bad plugin"):
        _host_with(monkeypatch, [_FakeEP("broken", boom)])


def test_a_hook_that_raises_half_way_is_rolled_back(monkeypatch):
    def register_methods(register):
        register(Grey)
        raise ValueError("oops")

    with pytest.warns(PluginWarning, match="register_methods"):
        host = _host_with(monkeypatch, [_FakeEP("half", lambda: _module("half", register_methods=register_methods))])
    assert "grey" not in host.methods


def test_name_clash_is_reported_and_first_kept(monkeypatch):
    class Other(Grey):
        pass

    a = _module("a", register_methods=lambda register: register(Grey))
    b = _module("b", register_methods=lambda register: register(Other))
    with pytest.warns(PluginWarning, match="clashes"):
        host = _host_with(monkeypatch, [_FakeEP("a", lambda: a), _FakeEP("b", lambda: b)])
    assert host.methods.get("grey") is Grey
    assert any("clashes" in p for p in host.problems)


def test_allow_and_block_lists(monkeypatch):
    a = _module("a", register_methods=lambda register: register(Grey))
    monkeypatch.setenv("CORRBENCH_LOAD_PLUGINS", "")
    assert _host_with(monkeypatch, [_FakeEP("a", lambda: a)]).methods.names() == []
    monkeypatch.delenv("CORRBENCH_LOAD_PLUGINS")
    monkeypatch.setenv("CORRBENCH_DISABLE_PLUGINS", "fake-dist")
    assert _host_with(monkeypatch, [_FakeEP("a", lambda: a)]).methods.names() == []


def test_register_commands(monkeypatch):
    import click

    @click.command("hello")
    def hello():
        click.echo("hi")

    mod = _module("cmds", register_commands=lambda cli: cli.add_command(hello))
    host = _host_with(monkeypatch, [_FakeEP("cmds", lambda: mod)])
    group = click.Group("g")
    host.add_commands(group)
    assert "hello" in group.commands
    assert host.plugins["cmds"].commands == ["hello"]


def test_registry_wildcards_and_unknown_names():
    reg = MethodRegistry("method")
    for n in ("sd-layer-4", "sd-concat-all", "dino"):
        reg.add(Entry(n, f"x:{n}"))
    assert reg.names("sd-*") == ["sd-concat-all", "sd-layer-4"]
    with pytest.raises(UnknownMethodError) as err:
        reg.entry("dhf")
    assert "dino" in str(err.value) and "sd-layer-4" in str(err.value)


def test_builtin_plugins_are_entry_points_and_core_imports_none():
    import subprocess
    import sys

    names = {ep.name for ep in metadata.entry_points(group="corrbench")}
    assert {"synthetic", "classic", "datasets", "sd", "dhf", "dino", "dhpf"} <= names
    code = ("import sys, corrbench, corrbench.runner, corrbench.cli, corrbench.extract; "
            "print(sorted(m for m in sys.modules if m.startswith('corrbench_')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_listing_does_not_import_heavy_backends():
    import subprocess
    import sys

    code = ("import sys; from corrbench.cli import main\n"
            "try:\n    main(['list'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('diffusers', 'timm', 'transformers', 'torchvision', 'kornia') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    assert "dsift" in out.stdout and "synthetic" in out.stdout


def test_register_tables_eagerly_lazily_and_clashes(monkeypatch):
    from corrbench.errors import UnknownTableError
    from corrbench.reproduce import DatasetSpec, Row, TableSpec

    table = TableSpec("t1", "Table one", "a test", {"synthetic": DatasetSpec("synthetic", "S", "test", "all", 1, 2)},
                      (Row("Grey", "grey", "1", "no", {"synthetic": {"img": 1.0, "bbox": 2.0}}),), {"alpha": 0.1})

    def register_tables(register):
        register(table)
        register("t2", "corrbench_does_not_exist.mod:TABLE", description="lazy")

    a = _module("a", register_tables=register_tables)
    b = _module("b", register_tables=lambda register: register(table))
    with pytest.warns(PluginWarning, match="table 't1' from plugin b clashes"):
        host = _host_with(monkeypatch, [_FakeEP("a", lambda: a), _FakeEP("b", lambda: b)])
    assert host.tables.names() == ["t1", "t2"] and host.tables.get("t1") is table
    assert host.tables.entry("t1").description == "Table one" and host.plugins["a"].tables == ["t1", "t2"]
    assert host.plugins["a"].as_dict()["tables"] == ["t1", "t2"]
    with pytest.raises(UnknownTableError, match="known tables: t1, t2"):
        host.tables.entry("t3")


def test_builtin_table_is_registered_by_its_plugin():
    host = PluginHost()
    host.load_entry_points()
    entry = host.tables.entry("dhf-table")
    assert entry.plugin == "dhf" and entry.lazy
    assert [r.method for r in entry.load().rows][:2] == ["dino", "dhpf"]
