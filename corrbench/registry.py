"""Name → target registries for methods and datasets.

An entry's target is either the object itself or a lazy ``"module:Object"`` string imported on first
use (lm-eval's and timm's registries work the same way), so listing never imports heavy backends.

A *family* is registered under a wildcard name (``"timm:*"``): every name that starts with its prefix
(``timm:vit_small_patch14_dinov2``) is built on demand by the family's ``build(suffix)``, which returns a
Descriptor class named exactly like the full name. See :class:`Family` and docs/plugins.md.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

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


#: a family's registered name ends with this wildcard; the rest is its prefix (``"timm:*"`` → ``"timm:"``)
FAMILY_WILDCARD = "*"
#: how many members of a family ``corrbench list`` shows for one pattern
LIST_LIMIT = 40


@runtime_checkable
class Family(Protocol):
    """What a family target (``register("timm:*", "pkg.module:FAMILY")``) provides.

    ``build(suffix)`` returns the Descriptor class of ``prefix + suffix`` (its ``name`` is exactly that
    full name), or raises :class:`~corrbench.errors.UsageError` with close matches for an unknown one.
    Optional: ``members(pattern, limit)`` → ``(rows, total)`` where rows are ``(full name, description)``
    of at most ``limit`` members matching the shell pattern (for ``corrbench list methods 'timm:*'``).
    """

    def build(self, suffix: str) -> Any: ...


@dataclass
class MemberEntry(Entry):
    """One name of a family (``timm:resnet50``), built by the family's ``build`` on first use."""

    family: Entry | None = None

    @property
    def lazy(self) -> bool:
        return True

    def load(self) -> Any:
        if self._loaded is None:
            family = self.family.load()
            cls = family.build(self.name[len(family_prefix(self.family.name)):])
            built = getattr(cls, "name", None)
            if built != self.name:
                raise CorrbenchError(f"plugin {self.plugin}: family {self.family.name!r} built {cls!r} named "
                                     f"{built!r} for {self.name!r}; a family must name the class exactly as asked")
            self._loaded = cls
        return self._loaded


def family_prefix(name: str) -> str:
    return name[:-len(FAMILY_WILDCARD)]


def is_family_name(name: str) -> bool:
    return name.endswith(FAMILY_WILDCARD) and len(name) > len(FAMILY_WILDCARD)


class Registry:
    """Registered names of one kind. Clashes are recorded, never silently overwritten."""

    error_cls: type[UnknownNameError] = UnknownNameError

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        self._families: dict[str, Entry] = {}  # prefix → family entry
        self._members: dict[str, MemberEntry] = {}  # family names asked for so far (one class per name)
        self.clashes: list[str] = []

    def add(self, entry: Entry) -> bool:
        """Add ``entry``; returns False (and records why) when its name or an alias is taken."""
        if is_family_name(entry.name):
            return self._add_family(entry)
        for taken in (entry.name, *entry.aliases):
            owner = self._owner(taken, members=False)  # a family's featured names are ordinary entries
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

    def _add_family(self, entry: Entry) -> bool:
        prefix = family_prefix(entry.name)
        for other_prefix, other in self._families.items():
            if prefix.startswith(other_prefix) or other_prefix.startswith(prefix):
                self.clashes.append(f"{self.kind} family {entry.name!r} from plugin {entry.plugin} overlaps "
                                    f"{other.name!r} from plugin {other.plugin}; keeping the first")
                return False
        if entry.aliases:
            raise CorrbenchError(f"plugin {entry.plugin}: family {entry.name!r} cannot have aliases")
        self._families[prefix] = entry
        return True

    def _owner(self, name: str, members: bool = True) -> Entry | None:
        if name in self._entries:
            return self._entries[name]
        if name in self._aliases:
            return self._entries[self._aliases[name]]
        return self._member(name) if members else None

    def _member(self, name: str) -> Entry | None:
        """The entry of a family member (built lazily: the family's ``build`` runs on ``load``)."""
        if name in self._members:
            return self._members[name]
        for prefix, family in sorted(self._families.items(), key=lambda kv: -len(kv[0])):
            if name.startswith(prefix) and len(name) > len(prefix):
                member = MemberEntry(name=name, target=family.target, description=family.description,
                                     plugin=family.plugin, extras=family.extras, family=family)
                self._members[name] = member
                return member
        return None

    def entry(self, name: str) -> Entry:
        found = self._owner(name)
        if found is None:
            known = list(self._entries) + [f.name for f in self._families.values()]
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            error = self.error_cls(name, known)
            if close:
                error.known = close  # the closest names, not the whole list
            raise error
        if isinstance(found, MemberEntry) and found.name not in self._entries:
            # a family checks the name when it builds the class: an unknown model fails here, in one line
            found.description = describe(found.load()) or found.description
        return found

    def families(self, pattern: str | None = None) -> list[Entry]:
        """Family entries whose wildcard name (or any member) the pattern can match."""
        out = []
        for prefix, family in sorted(self._families.items()):
            if (not pattern or fnmatch.fnmatchcase(family.name, pattern) or pattern.startswith(prefix)
                    or fnmatch.fnmatchcase(prefix + "x", pattern)):
                out.append(family)
        return out

    def listing(self, pattern: str | None = None, limit: int = LIST_LIMIT) -> tuple[list[Entry], list[str]]:
        """What ``corrbench list`` shows: entries matching ``pattern``, plus families and notes.

        A family appears as one row (``timm:*``) unless the pattern names its prefix (``'timm:vit_*'``):
        then up to ``limit`` matching members are listed (the family's ``members``), with a note when
        more match.
        """
        entries = self.entries(pattern)
        seen = {e.name for e in entries}
        notes: list[str] = []
        for family in self.families(pattern):
            prefix = family_prefix(family.name)
            if not (pattern and pattern.startswith(prefix)):
                entries.append(family)
                continue
            members, total = self.family_members(family, pattern, limit)
            for member in members:
                if member.name in seen:  # a featured name: its own description plus the family's facts
                    index = next(i for i, e in enumerate(entries) if e.name == member.name)
                    if member.description != entries[index].description:
                        member.description = f"{entries[index].description}; {member.description}"
                    entries[index] = member
                else:
                    entries.append(member)
                    seen.add(member.name)
            if total > len(members):
                notes.append(f"... {total - len(members)} more {family.name} names match {pattern!r}; "
                             "narrow the pattern")
        return sorted(entries, key=lambda e: e.name), notes

    def family_members(self, family: Entry, pattern: str, limit: int = LIST_LIMIT) -> tuple[list[Entry], int]:
        """Up to ``limit`` members of ``family`` matching ``pattern`` (entries, total count)."""
        target = family.load()
        lister = getattr(target, "members", None)
        if lister is None:
            return [], 0
        rows, total = lister(pattern, limit)
        entries = []
        for name, description in rows:
            member = self._member(name)
            if member is not None:
                entries.append(MemberEntry(name=name, target=family.target, description=description,
                                           plugin=family.plugin, extras=family.extras, family=family))
        return entries, total

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
        for prefix in [p for p, e in self._families.items() if e.plugin == plugin]:
            del self._families[prefix]
        for name in [n for n, e in self._members.items() if e.plugin == plugin]:
            del self._members[name]
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


class UnknownPlotError(UnknownNameError):
    kind = "plot"


class PlotRegistry(Registry):
    """Report figures (``register_plots``): functions drawing one method of a run, see corrbench.plots."""

    error_cls = UnknownPlotError


class UnknownProtocolError(UnknownNameError):
    kind = "protocol"


class ProtocolRegistry(Registry):
    """Protocol presets (``register_protocols``): ``--protocol NAME``, see corrbench.protocols."""

    error_cls = UnknownProtocolError


def make_register(registry: Registry, plugin: str, added: list[str]):
    """The ``register`` callback handed to a plugin's ``register_*`` hook."""

    def register(target, lazy_target=None, *, description: str = "", aliases=(), extras=(), featured=()):
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
        if featured and not is_family_name(name):
            raise CorrbenchError(f"plugin {plugin}: featured= is only for a family (a name ending in "
                                 f"{FAMILY_WILDCARD!r}), not {name!r}")
        if registry.add(entry):
            added.append(name)
            # featured members are listed and tested like ordinary names (the conformance suite runs them)
            rows = featured.items() if isinstance(featured, dict) else ((n, "") for n in featured)
            for member_name, member_description in rows:
                if not member_name.startswith(family_prefix(name)):
                    raise CorrbenchError(f"plugin {plugin}: featured {member_name!r} does not start with "
                                         f"{family_prefix(name)!r}")
                member = MemberEntry(name=member_name, target=obj, description=member_description or description,
                                     plugin=plugin, extras=tuple(extras), family=entry)
                if registry.add(member):
                    added.append(member_name)

    return register
