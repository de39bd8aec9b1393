"""Registry settings from a TOML file or an already-parsed mapping.

The shape (API.md, "Configuration files")::

    [default]                       # BreakerConfig fields; omitted ones keep their defaults
    failure_rate = 0.5

    [rules."payments.example.com"]  # the patterns of ``rules=``
    failure_rate = 0.2              # every field not set here comes from [default]

    [keys]                          # optional
    routes = ["/users/{id}"]        # key=by_route(*routes)

TOML has no null, so a field that may be off (``None`` in Python) is switched
off with ``false``; a mapping may say ``None`` as well. Types are checked
strictly, before ``BreakerConfig`` sees a value: a bool is not a number, an
int is a number (stored as a float), a float is not an integer. Every error is
a ``ValueError`` that starts with the source (the path, or ``<mapping>``) and
the table, then the field, so a mistake in a file of fifty rules is found by
reading one line.

Which fields a file may set, and with which type, is read from
``BreakerConfig``'s own annotations, so a field added there is accepted here
without a second list to keep in step; a field of a type a file cannot spell
(``classify``, a callable) is refused by name.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import json
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, cast

from ._core import BreakerConfig
from ._keys import by_route
from ._registry import compile_rules

__all__ = ["MAPPING_SOURCE", "TOML_EXTRA", "arguments_from_file", "arguments_from_mapping"]

MAPPING_SOURCE = "<mapping>"
"""How errors name the source of ``from_mapping``."""
TOML_EXTRA = 'pip install "circuitbreaker-http[toml]"'
"""What to install for TOML files on Python 3.10, which has no ``tomllib``."""

_TABLES = ("default", "rules", "keys")
_KEYS_FIELDS = ("routes",)
# The registry arguments a file provides; passing them as well would leave one ignored.
_FROM_THE_FILE = ("default", "rules")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

# Field kinds a file can spell, by the (non-None) annotation of the field.
_INT, _NUMBER, _BOOL, _STATUSES = "int", "number", "bool", "statuses"
_KIND_OF_TYPE: dict[object, str] = {
    int: _INT,
    float: _NUMBER,
    bool: _BOOL,
    frozenset[int]: _STATUSES,
}


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    kind: str | None  # None: a file cannot set it
    optional: bool  # None (``false`` in a file) switches it off


@functools.cache
def _fields() -> dict[str, _Field]:
    """BreakerConfig's fields, in declaration order, with the kind a file gives each."""
    hints = typing.get_type_hints(BreakerConfig)
    fields: dict[str, _Field] = {}
    for field in dataclasses.fields(BreakerConfig):
        hint = hints[field.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        members = typing.get_args(hint) if union else (hint,)
        rest = [member for member in members if member is not type(None)]
        kind = _KIND_OF_TYPE.get(rest[0]) if len(rest) == 1 else None
        fields[field.name] = _Field(kind, len(rest) < len(members))
    return fields


def _table(name: str) -> str:
    """``name`` as TOML spells a table key: bare when it can be, else quoted."""
    return name if _BARE_KEY.fullmatch(name) else _quote(name)


def _quote(text: str) -> str:
    # A JSON string is a valid TOML basic string.
    return json.dumps(text, ensure_ascii=False)


def _rule_table(pattern: str) -> str:
    # Always quoted, as the docs write it: most patterns hold dots.
    return f"[rules.{_quote(pattern)}]"


def _suggest(name: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _fail(source: str, where: str, message: str) -> ValueError:
    return ValueError(f"{source}: {where} {message}")


def _value(source: str, where: str, name: str, spec: _Field, value: object) -> object:
    """``value`` checked against the field's kind and converted for ``BreakerConfig``."""
    if spec.optional and (value is None or value is False):
        return None
    if spec.kind == _INT:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        expected = "an integer"
    elif spec.kind == _NUMBER:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise _fail(source, where, f"{name}: {value!r} is out of range") from None
        expected = "a number"
    elif spec.kind == _BOOL:
        if isinstance(value, bool):
            return value
        expected = "true or false"
    else:  # _STATUSES: a TOML array; a mapping may hold any collection but a string
        if isinstance(value, (list, tuple, set, frozenset)) and all(
            isinstance(item, int) and not isinstance(item, bool) for item in value
        ):
            return frozenset(value)
        expected = "an array of integers"
    if spec.optional and value is True:
        # ``true`` for a field that ``false`` switches off: say how to switch it on.
        expected += " or false (off)"
    raise _fail(source, where, f"{name}: expected {expected}, got {value!r}")


def _config(source: str, where: str, table: object, base: BreakerConfig) -> BreakerConfig:
    """``base`` with the fields of ``table`` applied, every value checked."""
    if not isinstance(table, Mapping):
        raise _fail(source, where, f"must be a table of BreakerConfig fields, got {table!r}")
    fields = _fields()
    changes: dict[str, object] = {}
    for name, value in table.items():
        spec = fields.get(name) if isinstance(name, str) else None
        if spec is None:
            hint = _suggest(str(name), (n for n, f in fields.items() if f.kind is not None))
            if not hint and isinstance(value, Mapping) and where.startswith("[rules."):
                # ``[rules.api.example.com]`` nests tables at each dot.
                hint = ' (a pattern with dots must be quoted: [rules."api.example.com"])'
            raise _fail(source, where, f"{name}: unknown field{hint}")
        if spec.kind is None:
            raise _fail(
                source,
                where,
                f"{name}: cannot be set from a configuration file (it takes a Python object);"
                f" build that BreakerConfig in code, e.g. with BreakerConfig.replace({name}=...)",
            )
        changes[name] = _value(source, where, name, spec, value)
    try:
        return base.replace(**changes)
    except ValueError as exc:
        # BreakerConfig names the field; the file and the table say where it is.
        message = str(exc).removeprefix("BreakerConfig.")
        raise _fail(source, where, message) from None


def _routes(source: str, table: object) -> Callable[[str, str], str | None] | None:
    """The key function a ``[keys]`` table asks for, or ``None`` when it asks for none."""
    if not isinstance(table, Mapping):
        raise _fail(source, "[keys]", f"must be a table, got {table!r}")
    for name in table:
        if name not in _KEYS_FIELDS:
            raise _fail(
                source, "[keys]", f"{name}: unknown field{_suggest(str(name), _KEYS_FIELDS)}"
            )
    if "routes" not in table:
        return None
    routes = table["routes"]
    if not isinstance(routes, (list, tuple)) or not all(isinstance(r, str) for r in routes):
        raise _fail(source, "[keys]", f"routes: expected an array of strings, got {routes!r}")
    try:
        return by_route(*routes)
    except ValueError as exc:
        raise _fail(source, "[keys]", f"routes: {exc}") from None


def _check_kwargs(kwargs: Mapping[str, Any]) -> None:
    given = [f"{name}=" for name in _FROM_THE_FILE if name in kwargs]
    if given:
        raise TypeError(
            f"{' and '.join(given)}: the configuration gives these; pass only the registry's"
            " other arguments (key, max_breakers, clock, on_state_change, ...)"
        )


def arguments_from_mapping(
    data: object, kwargs: Mapping[str, Any], source: str = MAPPING_SOURCE
) -> dict[str, Any]:
    """The ``BreakerRegistry`` arguments that ``data`` and ``kwargs`` make together.

    Raises:
        TypeError: ``kwargs`` holds ``default`` or ``rules``, which come from ``data``.
        ValueError: anything wrong in ``data``, or ``[keys]`` and ``key=`` both given.
    """
    _check_kwargs(kwargs)
    if not isinstance(data, Mapping):
        raise ValueError(
            f'{source}: expected a mapping of tables ([default], [rules."pattern"], [keys]),'
            f" got {type(data).__name__}"
        )
    fields = _fields()
    for name, value in data.items():
        if name in _TABLES:
            continue
        if isinstance(name, str) and name in fields and not isinstance(value, Mapping):
            raise _fail(
                source, "top level", f"{name}: BreakerConfig fields go under [default] or a rule"
            )
        shown = _table(name) if isinstance(name, str) else repr(name)
        raise ValueError(
            f"{source}: unknown table [{shown}]{_suggest(str(name), _TABLES)};"
            ' expected [default], [rules."pattern"] or [keys]'
        )

    default = _config(source, "[default]", data.get("default", {}), BreakerConfig())
    raw_rules = data.get("rules", {})
    if not isinstance(raw_rules, Mapping):
        raise _fail(source, "[rules]", f'must hold [rules."pattern"] tables, got {raw_rules!r}')
    rules: dict[str, BreakerConfig] = {}
    for pattern, table in raw_rules.items():
        if not isinstance(pattern, str):
            raise _fail(source, "[rules]", f"{pattern!r}: a pattern must be a string")
        where = _rule_table(pattern)
        config = _config(source, where, table, default)
        try:
            compile_rules({pattern: config})
        except ValueError as exc:
            message = str(exc).removeprefix("rules: ")
            raise _fail(source, where, f"bad pattern: {message}") from None
        rules[pattern] = config

    arguments: dict[str, Any] = {"default": default, "rules": rules}
    key = _routes(source, data["keys"]) if "keys" in data else None
    if key is not None:
        if "key" in kwargs:
            raise ValueError(
                f"{source}: [keys] routes and the key= argument both choose the registry's"
                " key; keep one"
            )
        arguments["key"] = key
    arguments.update(kwargs)
    return arguments


def _toml_loads(source: str) -> Callable[[str], dict[str, Any]]:
    # Imported here, not at the top: ``import circuitbreaker_http`` stays light,
    # and on 3.10 only reading a file needs the extra.
    for name in ("tomllib", "tomli"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        return cast("Callable[[str], dict[str, Any]]", module.loads)
    raise ImportError(
        f"reading {source} needs a TOML parser: Python 3.10 has no tomllib, and tomli"
        f" is not installed; {TOML_EXTRA}"
    )


def arguments_from_file(path: str | os.PathLike[str], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``BreakerRegistry`` arguments that the TOML file at ``path`` and ``kwargs`` make.

    Raises:
        FileNotFoundError, PermissionError, IsADirectoryError: as ``open`` raises them.
        ImportError: Python 3.10 without tomli (the message names the extra).
        TypeError: ``kwargs`` holds ``default`` or ``rules``.
        ValueError: the file is not UTF-8, not TOML, or not a valid configuration.
    """
    _check_kwargs(kwargs)
    source = os.fspath(path)
    loads = _toml_loads(source)
    with open(path, "rb") as file:
        raw = file.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source}: not UTF-8 text, as TOML requires ({exc})") from None
    try:
        data = loads(text)
    except ValueError as exc:  # TOMLDecodeError; its message gives the line and column
        raise ValueError(f"{source}: invalid TOML: {exc}") from exc
    return arguments_from_mapping(data, kwargs, source)
