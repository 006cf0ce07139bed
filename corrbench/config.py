"""``--set NAME.key=value`` overrides: parsing and resolution against the methods and dataset of a run.

NAME is a method (or alias), the dataset, or a shared namespace that a family of methods declares in
``Descriptor.config_namespaces`` (``sd.model`` reaches every SD-based method). A method's own setting
wins over a namespace setting whatever their order. Unknown names and keys are errors that list the
valid ones, so a typo can never silently run the default. Each value is converted and checked by
the target's :class:`~corrbench.options.Option` here, before any work, so ``--set dsift.stride=abc``
fails at once with one line saying what is expected.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from .errors import UsageError
from .options import options_of


def parse_value(text: str) -> Any:
    """JSON when it parses (numbers, booleans, lists, null), else the plain string."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        low = text.strip().lower()
        if low in ("true", "false"):
            return low == "true"
        return text


def parse_overrides(items: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    if items is None:
        return {}
    if isinstance(items, Mapping):
        out = {}
        for k, v in items.items():
            _split_key(k)
            out[k] = v
        return out
    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set {item!r}: expected NAME.key=value")
        key, _, value = item.partition("=")
        key = key.strip()
        _split_key(key)
        out[key] = parse_value(value)
    return out


def _split_key(key: str) -> tuple[str, str]:
    name, dot, sub = key.rpartition(".")
    if not dot or not name or not sub:
        raise UsageError(f"--set {key!r}: expected NAME.key=value, e.g. dhf.weights=random")
    return name, sub


def resolve_overrides(
    overrides: Mapping[str, Any],
    methods: Mapping[str, type],
    dataset: tuple[str, type] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Split overrides into per-method configs and the dataset config.

    ``methods`` maps each method name of the run to its class; ``aliases`` maps alias → method name.
    """
    aliases = dict(aliases or {})
    method_cfg: dict[str, dict[str, Any]] = {m: {} for m in methods}
    specific: dict[str, set[str]] = {m: set() for m in methods}
    dataset_cfg: dict[str, Any] = {}
    namespaces: dict[str, list[str]] = {}
    for m, cls in methods.items():
        for ns in getattr(cls, "config_namespaces", {}) or {}:
            namespaces.setdefault(ns, []).append(m)

    for full_key, value in overrides.items():
        name, key = _split_key(full_key)
        target = aliases.get(name, name)
        if target in methods:
            valid = methods[target].default_config
            if key not in valid:
                raise UsageError(f"--set {full_key}: method {target!r} has no key {key!r}; "
                                 f"valid keys: {', '.join(sorted(valid)) or '(none)'}")
            method_cfg[target][key] = _coerce(methods[target], full_key, key, value)
            specific[target].add(key)
            # a method named like its family's namespace (dinov2 / dinov2-b) also sets the family's key
            for m in namespaces.get(name, []):
                if m != target and key in methods[m].config_namespaces[name] and key not in specific[m]:
                    method_cfg[m][key] = _coerce(methods[m], full_key, key, value)
        elif dataset is not None and name == dataset[0]:
            valid = dataset[1].default_config
            if key not in valid:
                raise UsageError(f"--set {full_key}: dataset {name!r} has no key {key!r}; "
                                 f"valid keys: {', '.join(sorted(valid)) or '(none)'}")
            dataset_cfg[key] = _coerce(dataset[1], full_key, key, value)
        elif name in namespaces:
            members = namespaces[name]
            valid_keys = sorted({k for m in members for k in methods[m].config_namespaces[name]})
            if key not in valid_keys:
                raise UsageError(f"--set {full_key}: namespace {name!r} has no key {key!r}; "
                                 f"valid keys: {', '.join(valid_keys)}")
            for m in members:
                if key in methods[m].config_namespaces[name] and key not in specific[m]:
                    method_cfg[m][key] = _coerce(methods[m], full_key, key, value)
        else:
            known = sorted(set(methods) | set(namespaces) | ({dataset[0]} if dataset else set()))
            raise UsageError(f"--set {full_key}: {name!r} is not a method, dataset or shared namespace of this run; "
                             f"names you can set: {', '.join(known)}")
    return method_cfg, dataset_cfg


def _coerce(cls: Any, full_key: str, key: str, value: Any) -> Any:
    """``value`` converted by ``cls``'s option for ``key`` (a UsageError naming ``--set full_key`` if it does not fit)."""
    option = options_of(cls).get(key)
    return value if option is None else option.coerce(f"--set {full_key}", value)
