"""Typed, documented config keys of methods and datasets (``--set NAME.key=value``).

A plugin declares a key by giving an :class:`Option` as its value in ``default_config``::

    class MySIFT(corrbench.Descriptor):
        name = "my-sift"
        default_config = {
            "stride": Option(2, int, "sampling step in pixels", min=1),
            "mode": Option("fast", str, "which kernel to run", choices=("fast", "exact")),
        }

The class then has ``options`` (key → Option) and a plain ``default_config`` (key → default), so
code reading ``self.config`` / ``default_config`` sees plain values. A plain value instead of an
Option still works: its type is inferred from the default (``None`` accepts any value). Values are
converted and checked by :meth:`Option.coerce` when ``--set`` is resolved, before any image is read,
and again when a method or dataset is constructed; a bad value is a one-line
:class:`~corrbench.errors.UsageError` naming the key, the value and what is expected.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from .errors import UsageError

#: the names ``Option.type`` accepts (Python types map to these)
TYPES = ("int", "float", "bool", "str", "path", "list", "json")
_PY_TYPES = {int: "int", float: "float", bool: "bool", str: "str", list: "list", tuple: "list", dict: "json",
             object: "json", None: "json"}
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class _Refused(ValueError):
    """A value that does not fit (the message says what is expected, when it is more than the type)."""


def _type_name(type_: Any) -> str:
    if isinstance(type_, str):
        name = type_.lower()
        if name == "any":
            name = "json"
        if name not in TYPES:
            raise TypeError(f"Option type {type_!r} is not one of {', '.join(TYPES)} (or int, float, bool, str, list)")
        return name
    if type_ in _PY_TYPES:
        return _PY_TYPES[type_]
    raise TypeError(f"Option type {type_!r} is not one of {', '.join(TYPES)} (or int, float, bool, str, list)")


def _infer_type(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if isinstance(default, str):
        return "str"
    if isinstance(default, (list, tuple)):
        return "list"
    return "json"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True)
class Option:
    """One config key: its default, type, one-line doc and constraints.

    ``type``: ``int``, ``float``, ``bool``, ``str``, ``list``, ``"path"`` (a file or folder, kept as a
    string) or ``"json"`` (any value); default: inferred from ``default``. ``choices``: the allowed
    values. ``min``/``max``: an inclusive range for numbers. ``multiple_of``: an integer must be a
    multiple of it. ``item``: the type of a list's items. ``nullable``: ``null`` is allowed (always
    when the default is None). ``check``: a callable run on the converted value that returns the value
    to use (possibly normalised) or raises ``ValueError`` (its message says what is expected) or
    :class:`UsageError` (shown as is).
    """

    default: Any = None
    type: Any = None
    doc: str = ""
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    multiple_of: int | None = None
    item: Any = None
    nullable: bool = False
    check: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", _infer_type(self.default) if self.type is None else _type_name(self.type))
        if self.item is not None:
            object.__setattr__(self, "item", _type_name(self.item))
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.default is None:
            object.__setattr__(self, "nullable", True)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def infer(cls, default: Any, doc: str = "") -> "Option":
        """The Option of a plain ``default_config`` value: typed by the default (None: any value)."""
        if isinstance(default, Option):
            return default
        return cls(default, doc=doc)

    # -- checking -------------------------------------------------------------------------------
    def coerce(self, key: str, value: Any) -> Any:
        """``value`` (a CLI string, a JSON-parsed value or a Python value) converted to this option's type.

        ``key`` names the setting in the error message (``--set dsift.stride``, ``dsift.stride``).
        """
        try:
            return self._coerce(value)
        except UsageError:
            raise
        except (ValueError, TypeError) as exc:
            expected = (str(exc) if isinstance(exc, _Refused) else "") or self.expectation()
            doc = f" ({self.doc})" if self.doc else ""
            raise UsageError(f"{key}={value!r}: expected {expected}{doc}") from None

    def _coerce(self, value: Any) -> Any:
        if value is None:
            if self.nullable or self.type == "json":
                return self._checked(None)
            raise _Refused("")
        if self.type == "json":
            out = value
        elif self.type == "list":
            out = self._as_list(value)
        else:
            out = _scalar(self.type, value)
        if self.choices is not None and out not in self.choices:
            raise _Refused("")
        if self.type in ("int", "float"):
            if self.min is not None and out < self.min or self.max is not None and out > self.max:
                raise _Refused("")
            if self.multiple_of and out % self.multiple_of:
                raise _Refused("")
        return self._checked(out)

    def _checked(self, value: Any) -> Any:
        if self.check is None:
            return value
        try:
            return self.check(value)
        except _Refused:
            raise
        except (ValueError, TypeError) as exc:  # the check's message says what is expected
            raise _Refused(str(exc)) from None

    def _as_list(self, value: Any) -> list:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = json.loads(text)
            else:
                value = [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise _Refused("")
        return [_scalar(self.item, v) for v in value] if self.item and self.item != "json" else list(value)

    # -- describing -----------------------------------------------------------------------------
    def expectation(self) -> str:
        """What a valid value is, in words (``an integer ≥ 1``, ``one of 'none', 'bbox'``)."""
        if self.choices is not None:
            text = "one of " + ", ".join(_show(c) for c in self.choices)
        else:
            text = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                    "path": "a path", "list": "a list", "json": "any JSON value"}[self.type]
            if self.type == "list" and self.item and self.item != "json":
                text += f" of {_PLURAL[self.item]}"
            if self.type in ("int", "float"):
                text += self.range_text(prefix=" ")
                if self.multiple_of:
                    text += f" divisible by {self.multiple_of}"
        if self.nullable and self.type != "json":
            text += " or null"
        return text

    def range_text(self, prefix: str = "") -> str:
        lo, hi = self.min, self.max
        if lo is not None and hi is not None:
            return f"{prefix}in {_number(lo)}..{_number(hi)}"
        if lo is not None:
            return f"{prefix}≥ {_number(lo)}"
        if hi is not None:
            return f"{prefix}≤ {_number(hi)}"
        return ""

    def constraint(self) -> str:
        """Choices, range and divisibility, for listings ('' when none)."""
        parts = []
        if self.choices is not None:
            parts.append("|".join(_show(c, quote=False) for c in self.choices))
        if self.range_text():
            parts.append(self.range_text())
        if self.multiple_of:
            parts.append(f"multiple of {self.multiple_of}")
        if self.type == "list" and self.item and self.item != "json":
            parts.append(f"items: {self.item}")
        return ", ".join(parts)

    def default_text(self) -> str:
        return json.dumps(self.default) if not isinstance(self.default, str) else self.default or '""'


_PLURAL = {"int": "integers", "float": "numbers", "bool": "booleans", "str": "strings", "path": "paths"}


def _show(value: Any, quote: bool = True) -> str:
    if isinstance(value, str):
        return repr(value) if quote else value
    return json.dumps(value)


def _scalar(type_: str, value: Any) -> Any:
    """One value converted to ``int``/``float``/``bool``/``str``/``path`` (ValueError when it does not fit)."""
    if type_ == "int":
        if isinstance(value, bool):
            raise _Refused("")
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            if value.is_integer():
                return int(value)
            raise _Refused("")
        if isinstance(value, str):
            return int(value.strip())
        raise _Refused("")
    if type_ == "float":
        if isinstance(value, bool):
            raise _Refused("")
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            out = float(value.strip())
        else:
            raise _Refused("")
        if not math.isfinite(out):
            raise _Refused("")
        return out
    if type_ == "bool":
        if isinstance(value, bool):
            return value
        key = str(value).strip().lower() if isinstance(value, (str, int)) else None
        if key in _TRUE:
            return True
        if key in _FALSE:
            return False
        raise _Refused("")
    if type_ in ("str", "path"):
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return json.dumps(value)  # `--set x.name=123` arrives as a number; the string was meant
        raise _Refused("")
    return value


# ------------------------------------------------------------------------------------------------
# Classes with options
# ------------------------------------------------------------------------------------------------
def declare(cls: type) -> None:
    """Normalise a class's ``default_config`` (called from ``__init_subclass__``).

    Sets ``cls.options`` (key → Option) and ``cls.default_config`` (key → default). A plain value for
    a key that a base class declares keeps the base's Option with the new default.
    """
    own = cls.__dict__.get("default_config")
    if own is None:
        return
    inherited: dict[str, Option] = {}
    for base in reversed(cls.__mro__[1:]):
        if "default_config" in base.__dict__ or "options" in base.__dict__:
            inherited.update(options_of(base))
    options: dict[str, Option] = {}
    for key, value in dict(own).items():
        if isinstance(value, Option):
            options[key] = value
        elif key in inherited:
            options[key] = inherited[key] if _same(inherited[key].default, value) else \
                replace(inherited[key], default=value, nullable=inherited[key].nullable or value is None)
        else:
            options[key] = Option.infer(value)
    cls.options = options
    cls.default_config = {k: o.default for k, o in options.items()}


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # an object whose == is not a bool (an array)
        return a is b


def options_of(cls: Any) -> dict[str, Option]:
    """Every config key of a method or dataset class (or instance) with its Option.

    Works for classes that declare nothing (each plain default gives an inferred Option) and for a
    ``default_config`` replaced after the class was made.
    """
    declared: Mapping[str, Option] = getattr(cls, "options", None) or {}
    defaults: Mapping[str, Any] = getattr(cls, "default_config", None) or {}
    out: dict[str, Option] = {}
    for key, value in defaults.items():
        if isinstance(value, Option):
            out[key] = value
        elif key in declared:
            opt = declared[key]
            out[key] = opt if _same(opt.default, value) else replace(opt, default=value)
        else:
            out[key] = Option.infer(value)
    return out


def coerce_config(cls: Any, config: Mapping[str, Any] | None, label: str) -> dict[str, Any]:
    """``config`` with each value converted by the class's option (``label``: ``dsift`` → ``dsift.stride``;
    a key of a shared namespace is named by the namespace, ``sd.model``).

    Keys the class does not have are left for the caller to report.
    """
    options = options_of(cls)
    namespaces: Mapping[str, tuple[str, ...]] = getattr(cls, "config_namespaces", None) or {}
    out = {}
    for key, value in (config or {}).items():
        opt = options.get(key)
        if opt is None:
            out[key] = value
            continue
        # a family key is named as the user sets it: sd.model, not sd-layer-4.model
        name = next((ns for ns, keys in namespaces.items() if key in keys), label)
        out[key] = opt.coerce(f"{name}.{key}", value)
    return out
