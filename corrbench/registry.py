"""Name → target registries for methods and datasets.

An entry's target is either the object itself or a lazy ``"module:Object"`` string imported on first
use (lm-eval's and timm's registries work the same way), so listing never imports heavy backends.
"""

from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass, field
from typing import Any

from .errors import (CorrbenchError, UnknownDatasetError, UnknownMethodError, UnknownNameError, UnknownReadoutError,
                     UnknownTableError)


def describe(obj: Any) -> str:
    """One-line description of a registered class: its ``description`` or its docstring's first line."""
    text = getattr(obj, "description", "") or (obj.__doc__ or "")
    return text.strip().splitlines()[0] if text.strip() else ""


def import_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not attr:
        raise CorrbenchError(f"lazy target {target!r} must look like 'package.module:Object'")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class Entry:
    name: str
    target: Any  # the object or a "module:Object" string
    description: str = ""
    aliases: tuple[str, ...] = ()
    plugin: str = "?"
    extras: tuple[str, ...] = ()  # pip extras the target needs, shown when its import fails
    _loaded: Any = field(default=None, repr=False)

    @property
    def lazy(self) -> bool:
        return isinstance(self.target, str)

    def load(self) -> Any:
        if self._loaded is None:
            if not self.lazy:
                self._loaded = self.target
            else:
                try:
                    self._loaded = import_target(self.target)
                except ImportError as exc:
                    hint = f" (install corrbench[{','.join(self.extras)}])" if self.extras else ""
                    raise CorrbenchError(
                        f"{self.name!r} (from plugin {self.plugin}) could not be imported: {exc}{hint}"
                    ) from exc
        return self._loaded


class Registry:
    """Registered names of one kind. Clashes are recorded, never silently overwritten."""

    error_cls: type[UnknownNameError] = UnknownNameError

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        self.clashes: list[str] = []

    def add(self, entry: Entry) -> bool:
        """Add ``entry``; returns False (and records why) when its name or an alias is taken."""
        for taken in (entry.name, *entry.aliases):
            owner = self._owner(taken)
            if owner is not None:
                self.clashes.append(
                    f"{self.kind} {taken!r} from plugin {entry.plugin} clashes with "
                    f"{owner.name!r} from plugin {owner.plugin}; keeping the first"
                )
                return False
        self._entries[entry.name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = entry.name
        return True

    def _owner(self, name: str) -> Entry | None:
        if name in self._entries:
            return self._entries[name]
        if name in self._aliases:
            return self._entries[self._aliases[name]]
        return None

    def entry(self, name: str) -> Entry:
        found = self._owner(name)
        if found is None:
            raise self.error_cls(name, list(self._entries))
        return found

    def get(self, name: str) -> Any:
        return self.entry(name).load()

    def names(self, pattern: str | None = None) -> list[str]:
        names = sorted(self._entries)
        if pattern:
            names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        return names

    def entries(self, pattern: str | None = None) -> list[Entry]:
        return [self._entries[n] for n in self.names(pattern)]

    def __contains__(self, name: str) -> bool:
        return self._owner(name) is not None

    def remove_plugin(self, plugin: str) -> None:
        """Roll back everything one plugin registered (used when its hook fails half-way)."""
        for name in [n for n, e in self._entries.items() if e.plugin == plugin]:
            entry = self._entries.pop(name)
            for alias in entry.aliases:
                self._aliases.pop(alias, None)


class MethodRegistry(Registry):
    error_cls = UnknownMethodError

    def aliases(self) -> dict[str, str]:
        """alias → method name, for resolving ``--set ALIAS.key=value``."""
        return dict(self._aliases)


class DatasetRegistry(Registry):
    error_cls = UnknownDatasetError


class ReadoutRegistry(Registry):
    """Readouts (``register_readouts``): ``--readout NAME``."""

    error_cls = UnknownReadoutError


class TableRegistry(Registry):
    """Published comparison tables (``register_tables``): ``corrbench reproduce <name>``."""

    error_cls = UnknownTableError


def make_register(registry: Registry, plugin: str, added: list[str]):
    """The ``register`` callback handed to a plugin's ``register_*`` hook."""

    def register(target, lazy_target=None, *, description: str = "", aliases=(), extras=()):
        if lazy_target is not None:  # register("name", "module:Object", ...)
            name, obj = str(target), lazy_target
        elif isinstance(target, str):
            raise CorrbenchError(
                f"plugin {plugin}: register({target!r}) needs a target: register(name, 'module:Object')"
            )
        else:
            obj = target
            name = getattr(obj, "name", "") or ""
            if not name:
                raise CorrbenchError(f"plugin {plugin}: {obj!r} has no 'name' attribute to register under")
        if not description and not isinstance(obj, str):
            description = describe(obj)
        entry = Entry(name=name, target=obj, description=description, aliases=tuple(aliases),
                      plugin=plugin, extras=tuple(extras))
        if registry.add(entry):
            added.append(name)

    return register
