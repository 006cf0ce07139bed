"""The plugin host: discovers ``corrbench`` entry points and collects what each plugin registers.

Each entry point is loaded and each hook implementation is called on its own, inside its own
try/except: one broken plugin is a one-line warning naming it and the rest keep working
(``CORRBENCH_STRICT_PLUGINS=1`` makes it fatal, for plugin development). Environment switches:

- ``CORRBENCH_LOAD_PLUGINS``: comma list of entry-point or distribution names to load (empty: none);
- ``CORRBENCH_DISABLE_PLUGINS``: comma list of names never to load;
- ``CORRBENCH_STRICT_PLUGINS=1``: a plugin that fails to import or register is an error.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .errors import CorrbenchError
from .registry import (DatasetRegistry, MethodRegistry, PlotRegistry, ProtocolRegistry, ReadoutRegistry, TableRegistry,
                       make_register)

ENTRY_POINT_GROUP = "corrbench"


class PluginWarning(UserWarning):
    """A plugin failed to load or register; it is left out and the rest keep working."""


@dataclass
class PluginInfo:
    name: str
    distribution: str = ""
    version: str = ""
    module: str = ""
    methods: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    readouts: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v or k in ("name", "methods", "datasets")}


def _strict() -> bool:
    return os.environ.get("CORRBENCH_STRICT_PLUGINS", "").lower() not in ("", "0", "false", "no")


def _name_list(var: str) -> set[str] | None:
    if var not in os.environ:
        return None
    return {n.strip() for n in os.environ[var].split(",") if n.strip()}


class PluginHost:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.methods = MethodRegistry("method")
        self.datasets = DatasetRegistry("dataset")
        self.tables = TableRegistry("table")
        self.readouts = ReadoutRegistry("readout")
        self.plots = PlotRegistry("plot")
        self.protocols = ProtocolRegistry("protocol")
        self.plugins: dict[str, PluginInfo] = {}
        self.problems: list[str] = []
        self.register_core()

    # -- loading -----------------------------------------------------------------------------
    def _fail(self, info: PluginInfo, what: str, exc: BaseException) -> None:
        info.error = f"{what}: {type(exc).__name__}: {exc}"
        message = f"corrbench plugin {info.name!r} ({info.distribution or 'local'}) {info.error}"
        if _strict():
            raise CorrbenchError(message + " [CORRBENCH_STRICT_PLUGINS is set]") from exc
        self.problems.append(message)
        warnings.warn(message, PluginWarning, stacklevel=3)

    def register_core(self) -> None:
        """The core's own readouts and protocol presets, registered through the same hooks as a plugin's."""
        from . import builtin

        self.register_plugin(builtin, "corrbench", PluginInfo(name="corrbench", distribution="corrbench",
                                                               module=builtin.__name__))

    def load_entry_points(self) -> None:
        allow = _name_list("CORRBENCH_LOAD_PLUGINS")
        block = _name_list("CORRBENCH_DISABLE_PLUGINS") or set()
        seen: set[str] = set()
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add(ep.name)
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else ""
            if ep.name in block or dist_name in block:
                continue
            if allow is not None and ep.name not in allow and dist_name not in allow:
                continue
            info = PluginInfo(name=ep.name, distribution=dist_name,
                              version=dist.version if dist is not None else "", module=ep.value)
            self.plugins[ep.name] = info
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not take the CLI down
                self._fail(info, "failed to import", exc)
                continue
            self.register_plugin(module, ep.name, info)

    def register_plugin(self, module: ModuleType | object, name: str, info: PluginInfo | None = None) -> None:
        """Register a plugin object (a module or any object with hook implementations)."""
        info = info or PluginInfo(name=name, module=getattr(module, "__name__", repr(module)))
        self.plugins[name] = info
        try:
            self.pm.register(module, name=name)
        except Exception as exc:  # pluggy.PluginValidationError on bad signatures, or a duplicate
            self._fail(info, "has invalid hooks", exc)
            return
        for hook_name, registry, bucket in (("register_methods", self.methods, info.methods),
                                            ("register_datasets", self.datasets, info.datasets),
                                            ("register_tables", self.tables, info.tables),
                                            ("register_readouts", self.readouts, info.readouts),
                                            ("register_plots", self.plots, info.plots),
                                            ("register_protocols", self.protocols, info.protocols)):
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin_name != name:
                    continue
                try:
                    impl.function(*[{"register": make_register(registry, name, bucket)}[a]
                                    for a in impl.argnames])
                except Exception as exc:
                    registry.remove_plugin(name)
                    bucket.clear()
                    self._fail(info, f"failed in {hook_name}", exc)
        clashes = (self.methods.clashes + self.datasets.clashes + self.tables.clashes + self.readouts.clashes
                   + self.plots.clashes + self.protocols.clashes)
        self.problems.extend(clashes)
        for clash in clashes:
            warnings.warn(clash, PluginWarning, stacklevel=2)
        self.methods.clashes.clear()
        self.datasets.clashes.clear()
        self.tables.clashes.clear()
        self.readouts.clashes.clear()
        self.plots.clashes.clear()
        self.protocols.clashes.clear()

    def add_commands(self, cli) -> None:
        for impl in self.pm.hook.register_commands.get_hookimpls():
            info = self.plugins.get(impl.plugin_name)
            before = set(getattr(cli, "commands", {}))
            try:
                impl.function(*[{"cli": cli}[a] for a in impl.argnames])
            except Exception as exc:
                if info is not None:
                    self._fail(info, "failed in register_commands", exc)
                continue
            if info is not None:
                info.commands.extend(sorted(set(getattr(cli, "commands", {})) - before))


_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, loaded on first use (never at import time)."""
    global _host
    if _host is None:
        host = PluginHost()
        host.load_entry_points()
        _host = host
    return _host


def reset_host(host: PluginHost | None = None) -> None:
    """Replace the process-wide host (tests use this to install a host with chosen plugins)."""
    global _host
    _host = host
